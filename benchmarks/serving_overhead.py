"""Served output throughput against the same ContinuousBatchingPipeline driven in one process.

Both sides get the same prompts (random token ids), the same settings and `ignore_eos`, so both
produce exactly num_prompts x output_len tokens; the ratio is the cost of the HTTP server, the
process boundary and detokenization. Run on an idle machine:

    python benchmarks/serving_overhead.py --model qwen2.5-0.5b --weight-format int8 --kv-precision u8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time

import httpx


def in_process(model_dir: str, prompts: list[list[int]], output_len: int, batched: int, kv: str) -> float:
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 4
    scheduler.max_num_batched_tokens = batched
    scheduler.enable_prefix_caching = True
    scheduler.dynamic_split_fuse = True
    pipe = ov_genai.ContinuousBatchingPipeline(model_dir, scheduler, "CPU", {"KV_CACHE_PRECISION": kv})
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = output_len
    config.ignore_eos = True
    started = time.perf_counter()
    handles = [pipe.add_request(i, ov.Tensor(np.array([p], dtype=np.int64)), config) for i, p in enumerate(prompts)]
    produced = 0
    while pipe.has_non_finished_requests():
        pipe.step()
        for handle in handles:
            while handle.can_read():
                produced += sum(len(o.generated_ids) for o in handle.read().values())
    elapsed = time.perf_counter() - started
    assert produced == len(prompts) * output_len, produced
    return produced / elapsed


async def served(base_url: str, prompts: list[list[int]], output_len: int) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=3600) as client:
        async def one(prompt):
            response = await client.post("/v1/completions", json={
                "prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True})
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

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
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    rng = random.Random(0)
    prompts = [[rng.randrange(151643) for _ in range(args.input_len)] for _ in range(args.num_prompts)]

    direct = in_process(model_dir, prompts, args.output_len, args.max_num_batched_tokens, args.kv_precision)
    print(f"in-process pipeline: {direct:.1f} output tokens/s", flush=True)

    env = {**os.environ, "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": args.kv_precision}
    server = subprocess.Popen([sys.executable, "-m", "ovllm_engine.cli", "serve", model_dir, "--host", "127.0.0.1",
                               "--port", str(args.port), "--max-num-batched-tokens", str(args.max_num_batched_tokens)],
                              env=env)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        asyncio.run(served(base, prompts[:2], 4))  # warm-up
        over_http = asyncio.run(served(base, prompts, args.output_len))
    finally:
        server.terminate()
        server.wait(60)
    print(f"served (ovllm serve): {over_http:.1f} output tokens/s", flush=True)
    print(f"ratio served / in-process: {over_http / direct:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
