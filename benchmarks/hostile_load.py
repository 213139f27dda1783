"""/health latency while `ovllm serve` is saturated by the worst requests a client can send.

A probe in its own process asks /health every 50 ms (a kubelet's probe, the router's health check)
and records how long each answer took, while loaders keep these going at once:

- chat bodies of 3.7 MB (one long message: refused for its length after tokenizing it),
- completions requests at the per-request cap (256 prompts) and far past it (2048 prompts, n=8),
- bodies that choke parsers (5000-deep nesting, 5000-digit integers, lone surrogates),
- slow clients: connections that send their request head a byte at a time,
- streams of generated text (the engine's real work, up to its running batch and queue).

Reports the probe's p50/p99/max and the loaders' status counts (no 5xx may appear). Run on an idle
machine:

    python benchmarks/hostile_load.py --model qwen2.5-0.5b --weight-format int8 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import httpx

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def probe(base_url: str, seconds: float, interval: float, out) -> None:
    """In its own process: GET /health every `interval` s; send back each answer's latency in ms."""
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = client.get(base_url + "/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            failures += not ok
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    out.send((latencies, failures))


def hostile_bodies(model: str) -> dict[str, tuple[str, bytes]]:
    """name: (path, body) of the worst requests."""
    head = json.dumps({"model": model}).encode()[:-1] + b', "prompt": '  # the rest written by hand
    return {
        "chat-3.7MB": (CHAT, json.dumps({"model": model, "messages": [
            {"role": "user", "content": "word " * 740_000}]}).encode()),
        "prompts-256": (COMPLETIONS, json.dumps({"model": model, "prompt": ["tell me a story"] * 256,
                                                 "max_tokens": 16, "ignore_eos": True}).encode()),
        "prompts-2048-n-8": (COMPLETIONS, json.dumps({"model": model, "prompt": ["hi"] * 2048, "n": 8,
                                                      "max_tokens": 16}).encode()),
        "nested-5000": (COMPLETIONS, head + ("[" * 5000 + "]" * 5000 + "}").encode()),
        "int-5000-digits": (COMPLETIONS, head + b'"hi", "seed": ' + b"7" * 5000 + b"}"),
        "lone-surrogates": (COMPLETIONS, head + b'"' + b"\\ud800" * 20000 + b'"}'),
    }


async def loader(client: httpx.AsyncClient, path: str, body: bytes, deadline: float, statuses: collections.Counter,
                 name: str) -> None:
    while time.monotonic() < deadline:
        try:
            response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            statuses[f"{name} {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            statuses[f"{name} {type(exc).__name__}"] += 1


async def streamer(client: httpx.AsyncClient, model: str, deadline: float, statuses: collections.Counter) -> None:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 128, "ignore_eos": True, "stream": True}
    while time.monotonic() < deadline:
        try:
            async with client.stream("POST", COMPLETIONS, json=body) as response:
                async for _ in response.aiter_lines():
                    pass
                statuses[f"stream {response.status_code}"] += 1
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        except httpx.HTTPError as exc:
            statuses[f"stream {type(exc).__name__}"] += 1


async def slow_client(host: str, port: int, deadline: float, statuses: collections.Counter) -> None:
    """Sends a request head one byte every 0.5 s until the server closes the connection."""
    head = f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode() * 50
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
                if reader.at_eof() or time.monotonic() > deadline:
                    break
            statuses["slow-client closed by server" if reader.at_eof() else "slow-client ended"] += 1
        except OSError:
            statuses["slow-client closed by server"] += 1
        finally:
            writer.close()


async def load(base_url: str, model: str, seconds: float, streams: int, slow: int, copies: int
               ) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    host, port = base_url.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        tasks = [loader(client, path, body, deadline, statuses, name)
                 for name, (path, body) in hostile_bodies(model).items() for _ in range(copies)]
        tasks += [streamer(client, model, deadline, statuses) for _ in range(streams)]
        tasks += [slow_client(host, int(port), deadline, statuses) for _ in range(slow)]
        await asyncio.gather(*tasks)
    return statuses


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a test-model recipe name")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts")
    parser.add_argument("--streams", type=int, default=48, help="concurrent streaming clients")
    parser.add_argument("--slow-clients", type=int, default=100, help="connections dribbling their head")
    parser.add_argument("--copies", type=int, default=2, help="concurrent clients per kind of hostile request")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    server = subprocess.Popen([sys.executable, "-m", "ovllm_cli", "--log-level", "WARNING", "serve", model_dir,
                               "--host", "127.0.0.1", "--port", str(args.port), "--served-model-name", "m",
                               "--header-timeout", "10"])
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            assert server.poll() is None, "ovllm serve exited"
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        httpx.post(base + COMPLETIONS, json={"model": "m", "prompt": "warm up", "max_tokens": 4}, timeout=120)
        idle = multiprocessing.get_context("spawn")
        receive, send = idle.Pipe(duplex=False)
        # the probe alone first: /health on an idle server, the baseline
        baseline_probe = idle.Process(target=probe, args=(base, 5.0, 0.05, send))
        baseline_probe.start()
        baseline, _ = receive.recv()
        baseline_probe.join()
        loaded_probe = idle.Process(target=probe, args=(base, args.seconds, 0.05, send))
        loaded_probe.start()
        statuses = asyncio.run(load(base, "m", args.seconds, args.streams, args.slow_clients, args.copies))
        latencies, failures = receive.recv()
        loaded_probe.join()
        assert server.poll() is None, "ovllm serve died under the load"
    finally:
        server.terminate()
        server.wait(60)
    figures = {
        "model": f"{args.model} {args.weight_format}", "seconds": args.seconds, "streams": args.streams,
        "slow_clients": args.slow_clients, "copies": args.copies,
        "idle_health_ms": {"p50": statistics.median(baseline), "p99": percentile(baseline, 99), "max": max(baseline)},
        "loaded_health_ms": {"p50": statistics.median(latencies), "p99": percentile(latencies, 99),
                             "max": max(latencies), "probes": len(latencies), "not_200": failures},
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(v for k, v in statuses.items() if k.split()[-1].startswith("5")),
        "cpu": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if figures["server_errors"] == 0 and failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
