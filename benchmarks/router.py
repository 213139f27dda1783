"""Prefix-aware routing against round robin (and least load): `ovllm bench serve` through
`ovllm router` in front of three `ovllm serve` replicas, on a shared-prefix workload.

Every strategy gets the same requests (same seed) against freshly started replicas, so each starts
with cold prefix caches. Round robin sends each prefix to every replica, which computes it once per
replica; prefix-hash sends a prefix to one replica (while that one is under its load bound), which
computes it once and serves the rest from its prefix cache. Run on an idle machine:

    python benchmarks/router.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from compare import stop, wait_ready  # this folder's helpers (the script's directory is on sys.path)
from prometheus_client.parser import text_string_to_metric_families

RESULTS = Path(__file__).resolve().parent / "results"


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def router_counts(url: str) -> dict:
    """Requests per backend and prefix-hash outcomes, from the router's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    counts: dict = {"requests": {}, "prefix_routes": {}, "retries": 0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ovllm_router_requests_total":
                key = f"{sample.labels['backend']} {sample.labels['code']}"
                counts["requests"][key] = sample.value
            elif sample.name == "ovllm_router_prefix_routes_total":
                counts["prefix_routes"][sample.labels["outcome"]] = sample.value
            elif sample.name == "ovllm_router_retries_total":
                counts["retries"] += sample.value
    return counts


def run_strategy(strategy: str, model_dir: str, args, logs: Path) -> dict:
    python = [sys.executable, "-m", "ovllm_cli", "--log-level", "WARNING"]
    env = {"VLLM_OPENVINO_KVCACHE_SPACE": str(args.kv_cache_gb)}
    if args.inference_threads:
        env["OVLLM_INFERENCE_THREADS"] = str(args.inference_threads)
    ports = [args.port + 1 + index for index in range(args.replicas)]
    engines = [start([*python, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port),
                      "--served-model-name", "model", "--max-num-batched-tokens", str(args.max_num_batched_tokens)],
                     logs / f"{strategy}-engine-{port}.log", env) for port in ports]
    processes = list(engines)
    try:
        for engine, port in zip(engines, ports, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", engine, 300, logs / f"{strategy}-engine-{port}.log")
        router_url = f"http://127.0.0.1:{args.port}"
        router = start([*python, "router", "--host", "127.0.0.1", "--port", str(args.port), "--strategy", strategy,
                        "--load-factor", str(args.load_factor),
                        *(flag for port in ports for flag in ("--backend", f"http://127.0.0.1:{port}"))],
                       logs / f"{strategy}-router.log")
        processes.append(router)
        wait_ready(router_url, router, 300, logs / f"{strategy}-router.log")
        output = RESULTS / f"router-{args.tag + '-' if args.tag else ''}{strategy}.json"
        bench = [*python, "bench", "serve", "--base-url", router_url, "--tokenizer", model_dir,
                 "--dataset-name", "shared-prefix", "--num-prompts", str(args.num_prompts),
                 "--num-prefixes", str(args.num_prefixes), "--shared-prefix-len", str(args.shared_prefix_len),
                 "--suffix-len", str(args.suffix_len), "--output-len", str(args.output_len), "--ignore-eos",
                 "--max-concurrency", str(args.max_concurrency), "--seed", str(args.seed), "--save-result", str(output)]
        print(f"== {strategy}: {' '.join(bench[2:])}", flush=True)
        subprocess.run(bench, check=True)
        result = json.loads(output.read_text())
        result["router"] = router_counts(router_url)
        result["settings"] = {"strategy": strategy, **{k: v for k, v in vars(args).items() if k != "strategies"}}
        output.write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        stop(*processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a test-model recipe name")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument("--strategies", nargs="+", default=["round-robin", "prefix-hash", "least-load"])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--num-prefixes", type=int, default=12)
    parser.add_argument("--shared-prefix-len", type=int, default=512)
    parser.add_argument("--suffix-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--max-concurrency", type=int, default=6)
    parser.add_argument("--load-factor", type=float, default=1.25, help="the router's --load-factor (prefix-hash)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    parser.add_argument("--kv-cache-gb", type=int, default=1, help="VLLM_OPENVINO_KVCACHE_SPACE of each replica")
    parser.add_argument("--inference-threads", type=int, default=1,
                        help="OVLLM_INFERENCE_THREADS of each replica (0: unset: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="results go to benchmarks/results/router-[TAG-]STRATEGY.json")
    parser.add_argument("--port", type=int, default=8700, help="the router's; the replicas take the next ones")
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    RESULTS.mkdir(exist_ok=True)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "ovllm-router-bench"
    logs.mkdir(exist_ok=True)
    results = {strategy: run_strategy(strategy, model_dir, args, logs) for strategy in args.strategies}

    print(f"\n{'strategy':<12} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'output tok/s':>13} {'home/spilled':>13}")
    for strategy, result in results.items():
        routes = result["router"]["prefix_routes"]
        spread = f"{routes.get('home', 0):.0f}/{routes.get('spilled', 0):.0f}" if strategy == "prefix-hash" else "-"
        print(f"{strategy:<12} {result['median_ttft_ms']:>12.1f} {result['p99_ttft_ms']:>12.1f} "
              f"{result['output_throughput']:>13.2f} {spread:>13}")
    if {"prefix-hash", "round-robin"} <= results.keys():
        ph, rr = results["prefix-hash"], results["round-robin"]
        print(f"prefix-hash / round-robin: TTFT p50 {ph['median_ttft_ms'] / rr['median_ttft_ms']:.3f}, "
              f"TTFT p99 {ph['p99_ttft_ms'] / rr['p99_ttft_ms']:.3f}, "
              f"output tok/s {ph['output_throughput'] / rr['output_throughput']:.3f}")
    for result in results.values():
        if result["failed"]:
            print(f"{result['settings']['strategy']}: {result['failed']} requests failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
