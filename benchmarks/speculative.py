"""Speculative decoding, measured: `ovllm serve` without it, with prompt lookup and with a draft
model, side by side in one run on one machine.

For each model it serves the same model three ways (off, `{"method": "ngram"}`, `{"method":
"draft_model"}`) one after the other and measures through the OpenAI API, greedy:

- batch 1: output tok/s (output tokens over the requests' wall time, one at a time) and TPOT (time
  per output token after the first), on a copy-heavy workload (rewrite a given text, edit given
  code) and on free generation; acceptance from the server's own vllm:spec_decode_* counters;
- throughput at concurrency 2, 4, 16 and 64 (2 x N requests, at most N in flight), with speculation as
  configured (it turns itself off from disable_by_batch_size requests) and forced on for every request.

It also checks that every speculative answer equals the plain one token for token (greedy).

    .venv/bin/python benchmarks/speculative.py --out benchmarks/results/speculative.json

Models: SmolLM2-135M-Instruct (the demo GGUF) converted to fp16 as the main model and to int4 as its
draft; the qwen2.5-0.5b test model's shape (random weights) in int8 with an int4 draft of the same
weights (random weights copy nothing, so it runs free generation only). Needs the convert extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from compare import OVLLM, machine
from served import serving

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "benchmarks" / "texts" / "quality.txt").read_text()
PORT = 8731
FORCED_ON = 1 << 20  # disable_by_batch_size that no load reaches
SLOW = 0.8  # a method this much slower than plain decoding at batch 1 is not measured under load

CODE = '''def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item["price"] * item["quantity"]
    tax = subtotal * tax_rate
    return subtotal + tax


def cheapest(items):
    best = None
    for item in items:
        if best is None or item["price"] < best["price"]:
            best = item
    return best
'''


def paragraphs(count: int, words: int = 110) -> list[str]:
    """`count` passages of about `words` words from quality.txt (public domain, see texts/README.md)."""
    tokens = TEXT.split()
    return [" ".join(tokens[i * words:(i + 1) * words]) for i in range(1, count + 1)]


def copy_heavy(count: int) -> list[str]:
    """Requests whose answer repeats much of the prompt: rewrite a text, edit code."""
    prompts = [f"Rewrite the following text in modern English, keeping every sentence:\n\n{p}"
               for p in paragraphs(count - count // 3)]
    edits = ("Rename the variable subtotal to net_total in this Python code and show the whole code:",
             "Add a docstring to each function in this Python code and show the whole code:",
             "Change the parameter items to products in this Python code and show the whole code:")
    prompts += [f"{edits[i % len(edits)]}\n\n{CODE}" for i in range(count // 3)]
    return prompts


def free_generation(count: int) -> list[str]:
    topics = ("a lighthouse keeper who finds a map", "a robot learning to paint", "a village that forgets winter",
              "two friends building a boat", "a cat that runs a bakery", "a storm over a mountain town")
    return [f"Write a long story about {topics[i % len(topics)]}." for i in range(count)]


def spec_counts(base_url: str) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode()
    counts = {}
    for name in ("drafts", "draft_tokens", "accepted_tokens"):
        match = re.search(rf"^vllm:spec_decode_num_{name}_total\{{[^}}]*\}} (\S+)$", text, re.M)
        counts[name] = float(match.group(1)) if match else 0.0
    return counts


async def one(client, model: str, prompt: str, max_tokens: int, chat: bool, ignore_eos: bool) -> dict:
    started = time.perf_counter()
    stamps, text = [], []
    extra = {"ignore_eos": True} if ignore_eos else {}
    if chat:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body=extra)
    else:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=extra)
    tokens = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices:
            piece = chunk.choices[0].delta.content if chat else chunk.choices[0].text
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
    ended = time.perf_counter()
    tpot = (stamps[-1] - stamps[0]) / (tokens - 1) if tokens > 1 and stamps else None
    return {"tokens": tokens, "seconds": ended - started, "tpot": tpot, "text": "".join(text)}


async def batch_one(base_url: str, model: str, prompts: list[str], max_tokens: int, chat: bool,
                    ignore_eos: bool) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=600) as client:
        await one(client, model, prompts[0], 8, chat, ignore_eos)  # warm-up
        before = spec_counts(base_url)
        runs = [await one(client, model, p, max_tokens, chat, ignore_eos) for p in prompts]
    after = spec_counts(base_url)
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    tpots = [r["tpot"] for r in runs if r["tpot"] is not None]
    spec = {k: after[k] - before[k] for k in after}
    result = {"output_tokens": tokens, "output_tok_s": tokens / seconds,
              "tpot_ms": 1000 * sum(tpots) / len(tpots) if tpots else None, "texts": [r["text"] for r in runs]}
    if spec["draft_tokens"]:
        result["acceptance_rate"] = spec["accepted_tokens"] / spec["draft_tokens"]
        result["mean_accepted_length"] = 1 + spec["accepted_tokens"] / spec["drafts"]
    return result


async def at_concurrency(base_url: str, model: str, prompts: list[str], level: int, max_tokens: int,
                         chat: bool) -> dict:
    """All `prompts`, at most `level` in flight: a steady load once the first ones finish."""
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(level)

    async def gated(client, prompt: str) -> dict:
        async with gate:
            return await one(client, model, prompt, max_tokens, chat, True)

    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=1200) as client:
        await one(client, model, prompts[0], 8, chat, True)
        started = time.perf_counter()
        runs = await asyncio.gather(*(gated(client, p) for p in prompts))
        seconds = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in runs)
    return {"requests": len(prompts), "output_tokens": tokens, "output_tok_s": tokens / seconds}


def bench_model(name: str, main: str, draft: str, args, workloads: dict, chat: bool) -> dict:
    k = args.num_speculative_tokens
    modes = {
        "off": None,
        "ngram": {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": args.prompt_lookup_max},
        "draft": {"method": "draft_model", "model": draft, "num_speculative_tokens": k},
    }
    modes = {mode: config for mode, config in modes.items() if mode == "off" or mode in args.modes}
    if args.disable_by_batch_size:  # else the engine's default
        modes = {mode: config and {**config, "disable_by_batch_size": args.disable_by_batch_size}
                 for mode, config in modes.items()}
    results: dict = {"main": main, "draft": draft, "batch_1": {}, "concurrency": {}}
    base_url = f"http://127.0.0.1:{PORT}"
    for mode, spec in modes.items():
        variants = {"": spec}
        if spec is not None and args.forced_on:
            variants["forced_on"] = {**spec, "disable_by_batch_size": FORCED_ON}
        for variant, config in variants.items():
            label = f"{mode}_{variant}" if variant else mode
            # prefix caching off for all: a draft model turns it off, and the warm-up would favour the rest
            flags = ["--max-num-seqs", str(max(args.concurrency)), "--disable-log-requests",
                     "--no-enable-prefix-caching"]
            if config is not None:
                flags += ["--speculative-config", json.dumps(config)]
            print(f"[{name}] serving {label}", flush=True)
            with serving(main, PORT, *flags):
                model = json.loads(subprocess.run(["curl", "-s", f"{base_url}/v1/models"], capture_output=True,
                                                  check=True).stdout)["data"][0]["id"]
                if not variant:  # batch 1 is the same with or without forcing: measured once
                    for workload, prompts in workloads.items():
                        measured = asyncio.run(batch_one(base_url, model, prompts, args.max_tokens, chat,
                                                         ignore_eos=not chat))
                        results["batch_1"].setdefault(workload, {})[mode] = measured
                        print(f"[{name}] {label} {workload}: {measured['output_tok_s']:.1f} tok/s", flush=True)
                slow = all(mode in by_mode and by_mode[mode]["output_tok_s"] < SLOW * by_mode["off"]["output_tok_s"]
                           for by_mode in results["batch_1"].values())
                for level in args.concurrency:
                    if mode != "off" and slow and level > 4:
                        # slower than plain decoding even alone: a loaded server only loses more
                        results["concurrency"].setdefault(str(level), {})[label] = {"skipped": "slower at batch 1"}
                        continue
                    count = args.waves * level
                    prompts = ((workloads.get("copy_heavy") or workloads["free"]) * count)[:count]
                    measured = asyncio.run(at_concurrency(base_url, model, prompts, level, args.wave_tokens, chat))
                    results["concurrency"].setdefault(str(level), {})[label] = measured
                    print(f"[{name}] {label} c{level}: {measured['output_tok_s']:.1f} tok/s", flush=True)
    for by_mode in results["batch_1"].values():
        plain = by_mode["off"]
        for mode in set(by_mode) - {"off"}:
            by_mode[mode]["speedup"] = by_mode[mode]["output_tok_s"] / plain["output_tok_s"]
            # greedy: speculation changes no token under exact arithmetic; with bf16 or int8 activations
            # checking K+1 tokens at once rounds differently from one at a time, and near-ties can flip
            pairs = list(zip(by_mode[mode]["texts"], plain["texts"], strict=True))
            by_mode[mode]["same_text_as_off"] = sum(a == b for a, b in pairs)
            by_mode[mode]["common_prefix_share"] = sum(common_prefix(a, b) for a, b in pairs) / sum(
                max(len(b), 1) for _, b in pairs)
        for measured in by_mode.values():
            measured.pop("texts")
    for by_label in results["concurrency"].values():
        plain = by_label["off"]["output_tok_s"]
        for measured in by_label.values():
            if "output_tok_s" in measured:
                measured["vs_off"] = measured["output_tok_s"] / plain
    return results


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def convert(source: str, out: Path, *flags: str) -> str:
    """`ovllm convert` once into `out` (its progress goes to out.log)."""
    if not (out / "ovllm-conversion.json").is_file():
        with open(f"{out}.log", "w") as log:
            subprocess.run([*OVLLM, "convert", source, "--output", str(out), *flags], check=True, stdout=log,
                           stderr=subprocess.STDOUT)
    return str(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speculative.json")
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5-0.5b"])
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "ovllm" / "bench-speculative")
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--prompt-lookup-max", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=6, help="batch-1 requests per workload")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--wave-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 4, 16, 64])
    parser.add_argument("--modes", nargs="+", default=["off", "ngram", "draft"], help="off always runs first")
    parser.add_argument("--disable-by-batch-size", type=int, help="for every speculative mode (default: the engine's)")
    parser.add_argument("--no-forced-on", dest="forced_on", action="store_false",
                        help="skip the runs with speculation forced on for every request")
    parser.add_argument("--waves", type=int, default=2, help="requests per concurrency level, times the level")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "engine"))
    from ovllm_engine import testmodels
    from ovllm_engine.server.args import demo_gguf

    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    if "smollm2" in args.models:
        gguf = str(demo_gguf())
        main_ir = convert(gguf, args.work_dir / "smollm2-fp16", "--weight-format", "fp16")
        # SmolLM2's hidden size, 576, is no multiple of the default 128 weights per int4 group
        draft_ir = convert(gguf, args.work_dir / "smollm2-int4", "--weight-format", "int4", "--group-size", "64")
        workloads = {"copy_heavy": copy_heavy(args.prompts), "free": free_generation(args.prompts)}
        results["models"]["SmolLM2-135M-Instruct fp16, int4 draft"] = bench_model(
            "smollm2", main_ir, draft_ir, args, workloads, chat=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if "qwen2.5-0.5b" in args.models:
        main_ir = str(testmodels.ov_model("qwen2.5-0.5b", "int8"))
        draft_ir = convert(str(testmodels.hf_model("qwen2.5-0.5b")), args.work_dir / "qwen2.5-0.5b-int4",
                           "--weight-format", "int4")
        words = TEXT.split()
        workloads = {"free": [" ".join(words[i * 40:(i + 1) * 40]) for i in range(max(2, args.prompts // 2))]}
        results["models"]["qwen2.5-0.5b shape (random) int8, int4 draft"] = bench_model(
            "0.5b", main_ir, draft_ir, args, workloads, chat=False)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    headline = {m: {"batch_1": r["batch_1"], "concurrency": r["concurrency"]} for m, r in results["models"].items()}
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
