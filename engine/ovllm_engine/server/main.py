"""`ovllm serve` at run time: start the engine process, serve HTTP, stop cleanly.

Exit codes: 0 after SIGTERM or Ctrl-C once requests in flight finished (or the grace period ran
out); 1 when the engine process died or could not load the model, so that Kubernetes restarts the pod.

Drain: after SIGTERM the server keeps listening. /health answers 503 (so readiness fails and the
endpoint goes) and new requests get 503 `shutting_down` (a router retries them on another replica),
while requests in flight run to their end for up to the shutdown grace. Streams still running then
get an error event and non-streamed requests a 503, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from ovllm_edge.site import EdgeSite
from ovllm_engine.config import EngineConfig
from ovllm_engine.server.api_server import ChatOptions, make_server
from ovllm_engine.server.engine_client import EngineClient, EngineStartFailed, ShuttingDown
from ovllm_engine.server.limits import Limits
from ovllm_engine.server.metrics import EngineMetrics
from ovllm_engine.server.request_log import RequestLogOptions
from ovllm_engine.server.tokenizer import Tokenizer

log = logging.getLogger("ovllm.serve")

# After the grace: how long interrupted requests get to send their error event, then how long
# handlers still running get before they are cancelled, then how long the engine process gets to
# stop before it is killed. All three bound the exit: the operator's terminationGracePeriodSeconds
# allows preStop + --shutdown-grace + 15 (builders.py).
FINAL_SECONDS = 5.0
CANCEL_SECONDS = 1.0
ENGINE_STOP_SECONDS = 5.0


def run(config: EngineConfig, host: str, port: int, api_key: str | None, shutdown_grace: float,
        limits: Limits, chat: ChatOptions | None = None, request_log: RequestLogOptions | None = None) -> int:
    log.info("configuration: %s", config.summary())
    return asyncio.run(_serve(config, host, port, api_key, shutdown_grace, limits, chat or ChatOptions(),
                              request_log or RequestLogOptions()))


def _own_signals() -> None:
    """In a child that a library forks from this process (OpenVINO's telemetry does, at `import
    openvino`, and SIGTERMs it when the network hangs): the child inherits the event loop's signal
    wakeup fd, through which its own SIGTERM would reach this server as a SIGTERM of its own and stop
    it. The child gets the default handling back instead."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the child's main thread: it cannot have Python signal handlers either
        pass


async def _serve(config: EngineConfig, host: str, port: int, api_key: str | None, shutdown_grace: float,
                 limits: Limits, chat: ChatOptions, request_log: RequestLogOptions) -> int:
    spec = config.speculative
    metrics = EngineMetrics(config.served_model_name, config.max_model_len, spec.num_speculative_tokens if spec else 0)
    if spec is not None:
        log.info("speculative decoding: %s", spec.describe())
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
    os.register_at_fork(after_in_child=_own_signals)
    engine.on_death = engine_died
    starting = asyncio.ensure_future(engine.start())
    await asyncio.sleep(0)  # the engine process is spawned and builds its pipeline...
    try:
        tokenizer = Tokenizer(config.model_path)  # ...while this process loads the tokenizer (seconds for a GGUF)
    except Exception as exc:
        log.error("could not load the tokenizer of %s: %s", config.model_path, exc)
        starting.cancel()
        await engine.stop(1.0)  # still loading: no pipeline to stop cleanly
        return 1
    try:
        await starting
    except EngineStartFailed as exc:
        log.error("%s", exc)
        await engine.stop()
        return 1
    if stop.is_set():  # a signal arrived while the model loaded
        await engine.stop()
        return exit_code

    metrics.cache_info(engine.cache)
    server = make_server(config, engine, metrics, api_key, limits, tokenizer, chat, request_log)
    server.grammar.start()  # builds its pipeline while the server starts answering
    if server.tool_parser is not None:
        log.info("tool calls are read with the %s parser", server.tool_parser.name)
    # handler_cancellation: a client that disconnects cancels its handler, which frees its sequences.
    runner = web.AppRunner(server.app(), handler_cancellation=True, shutdown_timeout=CANCEL_SECONDS)
    await runner.setup()
    # auto_decompress off: api_server.py decodes bodies itself (bounded, truncation refused at once)
    await EdgeSite(runner, host, port, header_timeout=limits.header_timeout, auto_decompress=False).start()
    log.info("serving %s on http://%s:%d (engine pid %s)", config.served_model_name, host, port, engine.pid)

    await stop.wait()
    server.draining = True
    if exit_code == 0:
        log.info("shutting down: %d requests in flight get up to %gs to finish; new ones get 503",
                 server.active_requests, shutdown_grace)
        if not await server.wait_idle(shutdown_grace):
            log.warning("the shutdown grace ended with %d requests in flight: ending them with an error",
                        server.active_requests)
            engine.interrupt_all(ShuttingDown())
            await server.wait_idle(FINAL_SECONDS)
    # Stops listening, closes connections (handlers still running get CANCEL_SECONDS, then are cancelled).
    await runner.cleanup()
    server.tokenizer.close()
    server.grammar.close()
    await engine.stop(ENGINE_STOP_SECONDS)
    log.info("stopped (exit code %d)", exit_code)
    return exit_code
