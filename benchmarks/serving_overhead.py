"""Served output throughput against the same ContinuousBatchingPipeline driven in one process.

Each side gets prompts of the same shape (random token ids, a fresh set per measurement so that the
prefix cache cannot serve one run from another's prompts), the same settings and `ignore_eos`, so
each produces exactly num_prompts x output_len tokens after a short warm-up; the ratio is the cost
of the HTTP server, the process boundary and detokenization. Run on an idle machine:

    python benchmarks/serving_overhead.py --model qwen2.5-0.5b --weight-format int8 --kv-precision u8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(151643) for _ in range(length)] for _ in range(count)]


class InProcess:
    """The ContinuousBatchingPipeline driven directly, as `ovllm bench throughput` drives it."""

    def __init__(self, model_dir: str, batched: int, kv: str):
        from ovllm_engine.config import EngineConfig
        from ovllm_engine.server.engine_process import build_pipeline

        config = EngineConfig(model_path=model_dir, served_model_name="in-process", max_model_len=4096,
                              max_num_batched_tokens=batched, kv_cache_space_gb=4, kv_cache_precision=kv)
        self.pipe = build_pipeline(config)

    def run(self, batch: list[list[int]], new_tokens: int) -> float:
        from ovllm_engine.bench.datasets import BenchRequest
        from ovllm_engine.bench.throughput import generate

        elapsed, produced = generate(self.pipe, [BenchRequest("", prompt, new_tokens) for prompt in batch])
        assert produced == len(batch) * new_tokens, produced
        return produced / elapsed


async def served(base_url: str, prompts: list[list[int]], output_len: int, stream: bool = False) -> float:
    limits = httpx.Limits(max_connections=len(prompts))
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits) as client:
        async def one(prompt):
            body = {"prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True}
            if not stream:
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]
            body.update(stream=True, stream_options={"include_usage": True})
            async with client.stream("POST", "/v1/completions", json=body) as response:
                response.raise_for_status()
                usage = None
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:])["usage"]["completion_tokens"]
                return usage

        started = time.perf_counter()
        produced = sum(await asyncio.gather(*(one(p) for p in prompts)))
        elapsed = time.perf_counter() - started
    assert produced == len(prompts) * output_len, produced
    return produced / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a test-model recipe name")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument("--kv-precision", default="u8")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    direct = InProcess(model_dir, args.max_num_batched_tokens, args.kv_precision)
    env = {**os.environ, "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": args.kv_precision}
    server = subprocess.Popen([sys.executable, "-m", "ovllm_cli", "--log-level", "WARNING", "serve", model_dir,
                               "--host", "127.0.0.1", "--port", str(args.port),
                               "--max-num-batched-tokens", str(args.max_num_batched_tokens)], env=env)
    base = f"http://127.0.0.1:{args.port}"
    results: dict[str, list[float]] = {"in-process": [], "served": [], "served, streamed": []}
    seeds = iter(range(1000))

    def prompts(count: int = args.num_prompts) -> list[list[int]]:
        return random_prompts(count, args.input_len, next(seeds))

    try:
        for _ in range(600):
            assert server.poll() is None, "ovllm serve exited"
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        direct.run(prompts(2), 4)  # warm-up of both sides
        asyncio.run(served(base, prompts(2), 4))
        cpu_before = cpu_seconds(server.pid)
        client_cpu = served_wall = 0.0
        # Interleaved rounds: the machine's noise falls on both sides alike.
        for round_number in range(args.rounds):
            results["in-process"].append(direct.run(prompts(), args.output_len))
            for name, stream in (("served", False), ("served, streamed", True)):
                # This process is the client while it waits for the server: its CPU time then is
                # the client's, taken from the same cores the engine runs on.
                cpu, wall = time.process_time(), time.perf_counter()
                results[name].append(asyncio.run(served(base, prompts(), args.output_len, stream=stream)))
                client_cpu += time.process_time() - cpu
                served_wall += time.perf_counter() - wall
            print(f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
                  flush=True)
        http_cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
        server.wait(60)
    ceiling = statistics.median(results["in-process"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name}: median {median:.1f} output tokens/s (runs {', '.join(f'{v:.1f}' for v in values)}), "
              f"ratio to in-process {median / ceiling:.3f}")
    print(f"over all served runs ({served_wall:.0f}s of wall time): server process (HTTP side) CPU {http_cpu:.1f}s, "
          f"benchmark client CPU {client_cpu:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
