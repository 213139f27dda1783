"""`ovllm bench throughput`: offline throughput of the engine's pipeline in this process, as
vLLM's `benchmark_throughput.py` measures it: every request added at once, the pipeline stepped
until all finish, `ignore_eos` so that each produces exactly its output length.

    Throughput: X requests/s, Y total tokens/s, Z output tokens/s
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ovllm_engine.bench import datasets

log = logging.getLogger("ovllm.bench")


def add_arguments(parser) -> None:
    from ovllm_engine.onboard import options as conversion_options
    from ovllm_engine.server.args import add_engine_arguments

    parser.add_argument("--model", required=True,
                        help="OpenVINO IR directory, Hugging Face model directory or hub id (as ovllm serve takes)")
    datasets.add_arguments(parser)
    add_engine_arguments(parser)
    parser.add_argument("--output-json", help="also write the results to this JSON file")
    conversion_options.add_arguments(parser)


def run(args) -> int:
    from ovllm_engine.config import parse_env
    from ovllm_engine.onboard.prepare import prepare
    from ovllm_engine.server.args import build_config, prepare_draft
    from ovllm_engine.server.engine_process import build_pipeline

    model = prepare(args.model, args, parse_env(), isolate=True)
    args.model, args.served_model_name = str(model.path), model.name
    args.speculative = prepare_draft(args, parse_env())
    config = build_config(args)
    requests = datasets.load(args, datasets.Tokens(config.model_path))
    longest = max(r.prompt_len + r.output_len for r in requests)
    if longest > config.max_model_len:
        raise ValueError(f"a request needs {longest} tokens, more than --max-model-len {config.max_model_len}")
    log.info("configuration: %s", config.summary())
    pipeline = build_pipeline(config)
    generate(pipeline, requests[:1], config.speculative, warmup=True)
    elapsed, produced = generate(pipeline, requests, config.speculative)
    expected = sum(r.output_len for r in requests)
    if produced != expected:
        raise RuntimeError(f"the pipeline produced {produced} tokens, {expected} were asked for")
    prompt_tokens = sum(r.prompt_len for r in requests)
    result = {
        "model": model.name,
        "num_requests": len(requests),
        "elapsed_time": elapsed,
        "total_prompt_tokens": prompt_tokens,
        "total_output_tokens": produced,
        "requests_per_second": len(requests) / elapsed,
        "tokens_per_second": (prompt_tokens + produced) / elapsed,
        "output_tokens_per_second": produced / elapsed,
        "config": json.loads(config.summary()),
    }
    print(f"Throughput: {result['requests_per_second']:.2f} requests/s, {result['tokens_per_second']:.2f} total "
          f"tokens/s, {result['output_tokens_per_second']:.2f} output tokens/s", flush=True)
    print(f"Total num prompt tokens:  {prompt_tokens}\nTotal num output tokens:  {produced}", flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def generate(pipeline, requests: list[datasets.BenchRequest], spec=None, warmup: bool = False) -> tuple[float, int]:
    """Add every request, step until all finish; return (seconds, output tokens)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from ovllm_engine.onboard.progress import progress_class
    from ovllm_engine.server.engine_process import speculate

    started = time.perf_counter()
    handles = []
    for index, request in enumerate(requests):
        config = ov_genai.GenerationConfig()
        config.max_new_tokens = 4 if warmup else request.output_len
        config.ignore_eos = True
        speculate(config, spec)
        handles.append(pipeline.add_request(index, ov.Tensor(np.array([request.prompt_ids], dtype=np.int64)), config))
    produced = 0
    total = sum(4 if warmup else r.output_len for r in requests)
    with progress_class()(total=total, desc="warm-up" if warmup else "generating", unit="tok",
                          disable=warmup) as bar:
        while pipeline.has_non_finished_requests():
            pipeline.step()
            step_tokens = 0
            for handle in handles:
                while handle.can_read():
                    step_tokens += sum(len(output.generated_ids) for output in handle.read().values())
            produced += step_tokens
            bar.update(step_tokens)
    return time.perf_counter() - started, produced
