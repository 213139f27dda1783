"""`ovllm serve` at run time: start the engine process, serve HTTP, stop cleanly.

Exit codes: 0 after SIGTERM or Ctrl-C once requests in flight finished (or the grace period ran
out); 1 when the engine process died or could not load the model, so that Kubernetes restarts the pod.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ovllm_engine.config import EngineConfig
from ovllm_engine.server.api_server import make_server
from ovllm_engine.server.engine_client import EngineClient, EngineStartFailed
from ovllm_engine.server.metrics import EngineMetrics

log = logging.getLogger("ovllm.serve")


def run(config: EngineConfig, host: str, port: int, api_key: str | None, shutdown_grace: float,
        max_request_bytes: int) -> int:
    log.info("configuration: %s", config.summary())
    return asyncio.run(_serve(config, host, port, api_key, shutdown_grace, max_request_bytes))


async def _serve(config: EngineConfig, host: str, port: int, api_key: str | None, shutdown_grace: float,
                 max_request_bytes: int) -> int:
    metrics = EngineMetrics(config.served_model_name)
    engine = EngineClient(config, on_stats=metrics.engine_stats)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    exit_code = 0

    def engine_died() -> None:
        nonlocal exit_code
        exit_code = 1
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine.on_death = engine_died
    try:
        await engine.start()
    except EngineStartFailed as exc:
        log.error("%s", exc)
        await engine.stop()
        return 1
    if stop.is_set():  # a signal arrived while the model loaded
        await engine.stop()
        return exit_code

    server = make_server(config, engine, metrics, api_key)
    # handler_cancellation: a client that disconnects cancels its handler, which frees its sequences.
    runner = web.AppRunner(server.app(max_request_bytes), handler_cancellation=True,
                           shutdown_timeout=shutdown_grace, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("serving %s on http://%s:%d (engine pid %s)", config.served_model_name, host, port, engine.pid)

    await stop.wait()
    server.draining = True
    if exit_code == 0:
        log.info("shutting down: finishing %d requests in flight (grace %gs)", server.active_requests, shutdown_grace)
    # Stops listening, closes idle connections, waits up to shutdown_grace for handlers in flight.
    await runner.cleanup()
    await engine.stop()
    log.info("stopped (exit code %d)", exit_code)
    return exit_code
