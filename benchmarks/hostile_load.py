"""/health latency while `ovllm serve` is saturated by the worst requests a client can send.

A probe in its own process asks /health every 50 ms (a kubelet's probe, the router's health check)
and records how long each answer took, through two phases of load (after an idle baseline):

- **bodies:** what costs the server process itself: chat bodies of 3.7 MB (one long message,
  tokenized, then refused for its length), bodies that choke parsers (5000-deep nesting, 5000-digit
  integers, 20000 lone surrogates), completions far past the per-request cap (2048 prompts, n=8),
  slow clients sending their request head a byte every 0.5 s, and 16 streams generating text;
- **flood:** the engine full: completions at the per-request cap (256 prompts) and 48 streams, so
  that the running batch and the queue fill and the rest gets 429; the 3.7 MB chats keep coming.

Reports the probe's p50/p99/max per phase and the loaders' status counts (no 5xx may appear). Run
on an idle machine:

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
import sys
import time

import httpx
from served import serving

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


PHASES = {
    "bodies": {"bodies": ["chat-3.7MB", "nested-5000", "int-5000-digits", "lone-surrogates", "prompts-2048-n-8"],
               "streams": 16, "slow": True},
    "flood": {"bodies": ["chat-3.7MB", "prompts-256"], "streams": 48, "slow": False},
}


async def load(base_url: str, model: str, phase: str, seconds: float, slow: int, copies: int
               ) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    host, port = base_url.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=None)
    plan, bodies = PHASES[phase], hostile_bodies(model)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        tasks = [loader(client, *bodies[name], deadline, statuses, name)
                 for name in plan["bodies"] for _ in range(copies)]
        tasks += [streamer(client, model, deadline, statuses) for _ in range(plan["streams"])]
        tasks += [slow_client(host, int(port), deadline, statuses) for _ in range(slow if plan["slow"] else 0)]
        await asyncio.gather(*tasks)
    return statuses


def summary(latencies: list[float]) -> dict:
    return {"p50": round(statistics.median(latencies), 1), "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1), "probes": len(latencies)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a test-model recipe name")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each phase of load lasts")
    parser.add_argument("--slow-clients", type=int, default=100, help="connections dribbling their head")
    parser.add_argument("--copies", type=int, default=2, help="concurrent clients per kind of hostile request")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()

    from ovllm_engine import testmodels

    model_dir = str(testmodels.ov_model(args.model, args.weight_format))
    base = f"http://127.0.0.1:{args.port}"
    with serving(model_dir, args.port, "--served-model-name", "m", "--header-timeout", "10") as server:
        httpx.post(base + COMPLETIONS, json={"model": "m", "prompt": "warm up", "max_tokens": 4}, timeout=120)
        spawn = multiprocessing.get_context("spawn")
        receive, send = spawn.Pipe(duplex=False)
        phases: dict[str, dict] = {}
        for phase in ("idle", *PHASES):  # idle: the probe alone, the baseline
            seconds = 10.0 if phase == "idle" else args.seconds
            prober = spawn.Process(target=probe, args=(base, seconds, 0.05, send))
            prober.start()
            statuses = collections.Counter() if phase == "idle" else \
                asyncio.run(load(base, "m", phase, seconds, args.slow_clients, args.copies))
            latencies, failures = receive.recv()
            prober.join()
            phases[phase] = {"health_ms": summary(latencies), "health_not_200": failures,
                             "statuses": dict(sorted(statuses.items()))}
            print(phase, json.dumps(phases[phase]), flush=True)
            assert server.poll() is None, f"ovllm serve died under the {phase} load"
    server_errors = sum(v for p in phases.values() for k, v in p["statuses"].items()
                        if k.split()[-1].startswith("5"))
    figures = {"model": f"{args.model} {args.weight_format}", "seconds": args.seconds,
               "slow_clients": args.slow_clients, "copies": args.copies, "phases": phases,
               "server_errors": server_errors, "cpu": os.cpu_count()}
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if server_errors == 0 and not any(p["health_not_200"] for p in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
