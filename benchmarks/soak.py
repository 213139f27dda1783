"""Soak: `ovllm serve` under mixed traffic at saturation for a long while (30 minutes by default),
watching for what only time shows: memory that grows, descriptors that leak, sequences that never
leave the engine.

Clients, all at once, each picking its next request at random (seeded):
- non-streamed completions and chats (some with n=2), read whole;
- streams read to the end, and streams dropped after a few chunks (a client that goes away);
- requests cancelled by a client timeout before their answer (the server must abort them);
- bad requests (malformed JSON, unknown model, out-of-vocabulary ids, over the per-request cap).

Every `--sample-seconds` it records the server's and the engine's resident memory and open file
descriptors (from /proc), the engine's running and waiting sequences and its KV cache usage
(/metrics). At the end it stops the traffic, waits for the engine to empty and reports: RSS slope
per hour after warm-up (least squares over the samples after the first `--warmup-fraction`),
descriptors at warm-up's end and at the end, running and waiting after the traffic.

The engine's RSS grows by design until the KV cache reaches VLLM_OPENVINO_KVCACHE_SPACE: GenAI
allocates cache blocks as they are first needed, and prefix caching keeps the blocks of finished
requests for later prompts that share them. The soak therefore runs with a small cache (1 GB, which
the 0.5B model's traffic fills in minutes) and counts the slope after warm-up, when only a leak
could make it grow. Run on an idle machine:

    python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from served import serving

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MODEL = "m"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def engine_pid(server_pid: int) -> int:
    """The engine process: the server's child that runs multiprocessing's spawn entry point."""
    for pid in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise RuntimeError("no engine process")


def gauges(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    wanted = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
              "vllm:kv_cache_usage_perc": "kv_usage"}
    return {wanted[s.name]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in wanted}


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per hour."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var if var else 0.0


async def client_loop(client: httpx.AsyncClient, rng: random.Random, deadline: float,
                      counts: collections.Counter) -> None:
    prompts = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "List three colours:"]
    while time.monotonic() < deadline:
        kind = rng.choices(["complete", "chat", "stream", "drop", "cancel", "bad"], [3, 2, 3, 2, 1, 1])[0]
        prompt = rng.choice(prompts) + " " + str(rng.randrange(10**6))  # fresh prefixes as well as shared ones
        tokens = rng.randrange(8, 96)
        status = 0
        try:
            if kind == "complete":
                response = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": prompt, "max_tokens": tokens,
                                                                "n": rng.choice([1, 1, 2]), "ignore_eos": True})
                status = response.status_code
                counts[f"complete {status}"] += 1
            elif kind == "chat":
                response = await client.post(CHAT, json={"model": MODEL, "max_tokens": tokens, "messages": [
                    {"role": "user", "content": prompt}]})
                status = response.status_code
                counts[f"chat {status}"] += 1
            elif kind in ("stream", "drop"):
                async with client.stream("POST", COMPLETIONS, json={"model": MODEL, "prompt": prompt, "stream": True,
                                                                    "max_tokens": tokens, "ignore_eos": True}) as resp:
                    chunks = 0
                    async for _ in resp.aiter_lines():
                        chunks += 1
                        if kind == "drop" and chunks >= 6:
                            break  # leaving the block closes the connection mid-stream
                    status = resp.status_code
                    counts[f"{kind} {status}"] += 1
            elif kind == "cancel":
                try:
                    await asyncio.wait_for(client.post(COMPLETIONS, json={
                        "model": MODEL, "prompt": prompt, "max_tokens": 200, "ignore_eos": True}), rng.uniform(0.05, 1))
                    counts["cancel finished first"] += 1
                except TimeoutError:
                    counts["cancel"] += 1
            else:
                path, body = rng.choice([
                    (COMPLETIONS, b'{"model": "m", "prompt": '),
                    (COMPLETIONS, json.dumps({"model": "nope", "prompt": "hi"}).encode()),
                    (COMPLETIONS, json.dumps({"model": MODEL, "prompt": [10**9]}).encode()),
                    (COMPLETIONS, json.dumps({"model": MODEL, "prompt": ["a"] * 300}).encode()),
                    (CHAT, json.dumps({"model": MODEL, "messages": [], "temperature": -1}).encode())])
                response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
                counts[f"bad {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            counts[f"{kind} {type(exc).__name__}"] += 1
            continue
        if status == 429:
            await asyncio.sleep(1)  # as Retry-After says


async def traffic(base_url: str, clients: int, seconds: float, seed: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=httpx.Limits(max_connections=None)) as client:
        await asyncio.gather(*(client_loop(client, random.Random(seed + i), deadline, counts) for i in range(clients)))
    return counts


async def soak(base_url: str, server_pid: int, args) -> dict:
    engine = engine_pid(server_pid)
    samples: list[dict] = []
    started = time.monotonic()
    load = asyncio.create_task(traffic(base_url, args.clients, args.minutes * 60, args.seed))
    while not load.done():
        sample = {"t": time.monotonic() - started, "server_rss_mib": rss_mib(server_pid),
                  "engine_rss_mib": rss_mib(engine), "server_fds": open_fds(server_pid),
                  "engine_fds": open_fds(engine), **await asyncio.to_thread(gauges, base_url)}
        samples.append(sample)
        print(json.dumps({k: round(v, 1) for k, v in sample.items()}), flush=True)
        await asyncio.wait([load], timeout=args.sample_seconds)
    counts = load.result()
    deadline = time.monotonic() + 60
    while True:  # the engine empties once the traffic is gone
        after = gauges(base_url)
        if after["running"] == after["waiting"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    warm = [s for s in samples if s["t"] >= args.warmup_fraction * samples[-1]["t"]]
    end = {"server_rss_mib": rss_mib(server_pid), "engine_rss_mib": rss_mib(engine),
           "server_fds": open_fds(server_pid), "engine_fds": open_fds(engine)}
    return {
        "minutes": args.minutes, "clients": args.clients, "requests": dict(sorted(counts.items())),
        "requests_total": counts.total(),
        "server_errors": sum(v for k, v in counts.items() if k.split()[-1].startswith("5")),
        "after_traffic": {**after, **end},
        "warmup_end": {k: warm[0][k] for k in ("t", "server_rss_mib", "engine_rss_mib", "server_fds", "engine_fds")},
        "rss_slope_mib_per_hour": {
            "server": slope_per_hour([(s["t"], s["server_rss_mib"]) for s in warm]),
            "engine": slope_per_hour([(s["t"], s["engine_rss_mib"]) for s in warm])},
        "rss_range_after_warmup_mib": {
            "server": [min(s["server_rss_mib"] for s in warm), max(s["server_rss_mib"] for s in warm)],
            "engine": [min(s["engine_rss_mib"] for s in warm), max(s["engine_rss_mib"] for s in warm)]},
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a test-model recipe name")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument("--kv-cache-gb", type=int, default=1,
                        help="VLLM_OPENVINO_KVCACHE_SPACE: the KV cache grows (prefix caching keeps the blocks of "
                        "finished requests) up to this, so a soak must fill it to see a plateau")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=64,
                        help="concurrent clients: more than the running batch plus the queue, so some get 429")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="the server's running batch")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--out", help="write the figures (and every sample) to this JSON file")
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    base = f"http://127.0.0.1:{args.port}"
    with serving(model_dir, args.port, "--served-model-name", MODEL, "--max-num-seqs", str(args.max_num_seqs),
                 "--max-queued-seqs", "32",
                 env={**os.environ, "VLLM_OPENVINO_KVCACHE_SPACE": str(args.kv_cache_gb)}) as server:
        figures = asyncio.run(soak(base, server.pid, args))
        assert server.poll() is None, "ovllm serve died during the soak"
    summary = {k: v for k, v in figures.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    clean = figures["server_errors"] == 0 and figures["after_traffic"]["running"] == 0 \
        and figures["after_traffic"]["waiting"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
