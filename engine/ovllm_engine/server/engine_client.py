"""The server's side of the engine process: starts it, sends it requests, and routes the tokens
it produces to one asyncio queue per request.

The pipe is watched with `loop.add_reader`, so tokens reach the HTTP handlers as soon as a step
ends, without a polling thread. When the engine process dies the pipe reaches EOF: every request in
flight gets an EngineDead, and `on_death` tells the server to exit non-zero.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from collections.abc import Callable

from ovllm_cli.logs import current_format
from ovllm_engine.config import EngineConfig
from ovllm_engine.server.engine_process import engine_main
from ovllm_engine.server.messages import Abort, AddRequest, CacheInfo, Failed, Outputs, Ready, Sampling, Stats, Stop

log = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    """The engine process is gone; no request can complete."""


class EngineStartFailed(RuntimeError):
    pass


class ShuttingDown(RuntimeError):
    """The server's shutdown grace ended with this request still running."""


class EngineClient:
    def __init__(self, config: EngineConfig, on_stats: Callable[[Stats], None] | None = None):
        self.config = config
        self.on_stats = on_stats or (lambda stats: None)
        self.on_death: Callable[[], None] = lambda: None
        self.alive = False
        self.pid: int | None = None
        self.cache: CacheInfo | None = None  # the pipeline's KV cache, once it is up
        self._ids = itertools.count()
        self._queues: dict[int, asyncio.Queue] = {}
        self._process = None
        self._conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future | None = None
        self._stopping = False
        self._interrupted: Exception | None = None  # set by interrupt_all

    async def start(self) -> None:
        """Start the engine process and wait until its pipeline is loaded."""
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # no fork: the server holds sockets and an event loop
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=engine_main,
            args=(self.config, child_conn, logging.getLogger().level, current_format()),
            name="ovllm-engine",
            daemon=True,
        )
        self._process.start()
        child_conn.close()  # so that the child's death reaches us as EOF
        self._ready = self._loop.create_future()
        self._loop.add_reader(self._conn.fileno(), self._on_readable)
        ready: Ready = await self._ready
        self.pid = ready.pid
        self.cache = ready.cache
        self.alive = True

    def add(self, prompt_ids: list[int], sampling: Sampling) -> tuple[int, asyncio.Queue]:
        """Submit one sequence; its Outputs arrive on the returned queue."""
        if not self.alive:
            raise EngineDead("the engine process is not running")
        if self._interrupted is not None:  # a request that was still being read or tokenized
            raise self._interrupted
        request_id = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        self._send(AddRequest(request_id, prompt_ids, sampling))
        return request_id, queue

    def abort(self, request_id: int) -> None:
        """Free a sequence at once (client gone, stop string found)."""
        if self._queues.pop(request_id, None) is not None and self.alive:
            self._send(Abort(request_id))

    def release(self, request_id: int) -> None:
        """Forget a finished sequence."""
        self._queues.pop(request_id, None)

    def interrupt_all(self, error: Exception) -> None:
        """End every sequence in flight with `error` (their handlers raise it and abort them), and
        refuse new ones with it."""
        self._interrupted = error
        for queue in self._queues.values():
            queue.put_nowait(error)

    @property
    def in_flight(self) -> int:
        return len(self._queues)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self.alive:
            self._send(Stop())
        if self._process is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, timeout)
            if self._process.is_alive():
                self._process.kill()
        self._detach()

    def _send(self, message: AddRequest | Abort | Stop) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._died()

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._dispatch(self._conn.recv())
        except (EOFError, ConnectionResetError, OSError):
            self._died()

    def _dispatch(self, message: Outputs | Ready | Failed) -> None:
        if isinstance(message, Outputs):
            for output in message.outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
            self.on_stats(message.stats)
        elif isinstance(message, Ready):
            self._ready.set_result(message)
        elif isinstance(message, Failed):
            self._ready.set_exception(EngineStartFailed(message.message))
        else:
            raise TypeError(f"unknown message {message!r}")

    def _died(self) -> None:
        self._detach()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineStartFailed("the engine process died while loading the model"))
            return
        was_alive, self.alive = self.alive, False
        for queue in self._queues.values():
            queue.put_nowait(EngineDead("the engine process died"))
        self._queues.clear()
        if was_alive and not self._stopping:
            code = self._process.exitcode if self._process is not None else None
            log.error("the engine process died (exit code %s)", code)
            self.on_death()

    def _detach(self) -> None:
        if self._conn is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._conn.fileno())
            except (ValueError, OSError):
                pass
