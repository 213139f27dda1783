"""`ovllm bench serve`: load an OpenAI-compatible server (ovllm, llama.cpp's server, vLLM,
OpenVINO Model Server) with streamed completions, at a Poisson request rate or a fixed concurrency,
and measure at the client what its users feel (definitions in serve_metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path

from ovllm_engine.bench import datasets, serve_metrics
from ovllm_engine.bench.serve_metrics import RequestOutput

log = logging.getLogger("ovllm.bench")


def add_arguments(parser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server, without /v1")
    parser.add_argument("--endpoint", default="/v1/completions", help="the completions path")
    parser.add_argument("--model", help="the model name to send (default: the first one /v1/models lists)")
    parser.add_argument("--tokenizer", required=True,
                        help="a model directory with openvino_tokenizer.xml and openvino_detokenizer.xml, to make "
                        "prompts of known lengths (the served model's own, or one with the same vocabulary)")
    datasets.add_arguments(parser)
    parser.add_argument("--prompt-format", choices=["text", "token-ids"], default="text",
                        help="send prompts as text, or as token ids (exact lengths; not every server takes them)")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second, Poisson arrivals (default inf: all at once)")
    parser.add_argument("--max-concurrency", type=int, help="at most this many requests in flight")
    parser.add_argument("--ignore-eos", action="store_true", help="ask for exactly --output-len tokens per request")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--slo", "--goodput", dest="slo", nargs="+", metavar="METRIC:MS",
                        help="service-level objectives for goodput, e.g. ttft:500 tpot:50 e2el:10000")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key ($OPENAI_API_KEY)")
    parser.add_argument("--save-result", help="write the figures and per-request timings to this JSON file")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds one request may take")


def run(args) -> int:
    slos = serve_metrics.parse_slo(args.slo)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency {args.max_concurrency} must be at least 1")
    if args.request_rate <= 0:
        raise ValueError(f"--request-rate {args.request_rate} must be positive (inf: all at once)")
    requests = datasets.load(args, datasets.Tokens(args.tokenizer))
    result = asyncio.run(_benchmark(args, requests, slos))
    print(serve_metrics.report(result), flush=True)
    if args.save_result:
        Path(args.save_result).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["completed"] else 1


async def _benchmark(args, requests: list[datasets.BenchRequest], slos: dict) -> dict:
    import aiohttp

    from ovllm_engine.onboard.progress import progress_class

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    connector = aiohttp.TCPConnector(limit=0)  # concurrency is ours to decide, not the pool's
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(args.base_url, connector=connector, timeout=timeout, headers=headers) as session:
        try:
            model = args.model or await _first_model(session)
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeError(f"cannot list the models of {args.base_url}/v1/models: {exc}") from None
        check = await _send(session, args, model, datasets.BenchRequest(requests[0].prompt, requests[0].prompt_ids, 4))
        if not check.success:
            raise RuntimeError(f"the test request to {args.base_url}{args.endpoint} failed: {check.error}")
        log.info("benchmarking %s at %s: %d requests, rate %s, concurrency %s", model, args.base_url, len(requests),
                 args.request_rate, args.max_concurrency or "unlimited")
        limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        bar = progress_class()(total=len(requests), desc="requests", unit="req")

        async def one(request: datasets.BenchRequest) -> RequestOutput:
            if limit is None:
                output = await _send(session, args, model, request)
            else:
                async with limit:
                    output = await _send(session, args, model, request)
            bar.update(1)
            return output

        rng = random.Random(args.seed)
        started = time.perf_counter()
        tasks = []
        for index, request in enumerate(requests):
            if index and args.request_rate != float("inf"):  # Poisson arrivals: exponential gaps
                await asyncio.sleep(rng.expovariate(args.request_rate))
            tasks.append(asyncio.create_task(one(request)))
        outputs = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
        bar.close()
    failures = [o.error for o in outputs if not o.success]
    if failures:
        log.warning("%d requests failed, the first with: %s", len(failures), failures[0])
    result = serve_metrics.compute(outputs, duration, slos)
    result.update(model=model, base_url=args.base_url, num_prompts=len(requests), request_rate=args.request_rate,
                  max_concurrency=args.max_concurrency,
                  requested_output_tokens=sum(r.output_len for r, o in zip(requests, outputs, strict=True)
                                              if o.success),
                  ttfts=[o.ttft for o in outputs], itls=[o.itl for o in outputs], e2els=[o.latency for o in outputs],
                  output_lens=[o.output_tokens for o in outputs], input_lens=[o.prompt_len for o in outputs],
                  errors=failures)
    return result


async def _first_model(session) -> str:
    async with session.get("/v1/models") as response:
        response.raise_for_status()
        return (await response.json())["data"][0]["id"]


async def _send(session, args, model: str, request: datasets.BenchRequest) -> RequestOutput:
    """One streamed completion; timings taken as each chunk arrives."""
    body = {
        "model": model,
        "prompt": request.prompt_ids if args.prompt_format == "token-ids" else request.prompt,
        "max_tokens": request.output_len,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    output = RequestOutput(prompt_len=request.prompt_len)
    chunks = 0
    started = last = time.perf_counter()
    try:
        async with session.post(args.endpoint, json=body) as response:
            if response.status != 200:
                output.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return output
            async for line in response.content:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    output.error = str(chunk["error"])[:300]
                    return output
                now = time.perf_counter()
                if chunk.get("choices"):
                    if chunks == 0:
                        output.ttft = now - started
                    else:
                        output.itl.append(now - last)
                    last = now
                    chunks += 1
                if chunk.get("usage"):
                    output.output_tokens = chunk["usage"].get("completion_tokens") or 0
                    output.prompt_len = chunk["usage"].get("prompt_tokens") or output.prompt_len
        output.latency = time.perf_counter() - started
        if not output.output_tokens:  # a server without usage in streams: count the chunks with text
            output.output_tokens = chunks
        output.success = True
    except (TimeoutError, OSError, ValueError) as exc:
        output.error = f"{type(exc).__name__}: {exc}"
    return output
