"""One sequence from prompt ids to text: submit it to the engine, turn its tokens into text as they
arrive, stop on stop strings, record latencies, and free it at once if the caller goes away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ovllm_engine.server.detokenizer import IncrementalText
from ovllm_engine.server.engine_client import EngineClient
from ovllm_engine.server.messages import Output, Sampling
from ovllm_engine.server.metrics import EngineMetrics, SequenceTiming


class EngineRejected(ValueError):
    """The pipeline refused this request's parameters."""


@dataclass
class Chunk:
    """Text and tokens a sequence produced since the previous chunk."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None = None
    prompt_logprobs: list[float | None] | None = None  # with echo and logprobs, on the first chunk


@dataclass
class SequenceResult:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[float | None] | None = None


async def generate(
    engine: EngineClient,
    metrics: EngineMetrics,
    decode: Callable[[list[int]], str],
    prompt_ids: list[int],
    sampling: Sampling,
    stops: list[str],
    timing: SequenceTiming,
    want_text: bool = True,
) -> AsyncIterator[Chunk]:
    """Yield Chunks of one sequence until it finishes; the last one carries the finish reason.
    `timing` is filled in as it goes (the caller's request log reads it).

    With want_text False (a non-streamed request without stop strings) chunks carry token ids only
    and the caller decodes the whole sequence once at the end: on a 2-core machine every
    per-token decode in the server process is taken from the engine's inference threads.
    """
    request_id, queue = engine.add(prompt_ids, sampling)
    text = IncrementalText(decode, stops) if want_text or stops else None

    def end(reason: str) -> None:
        timing.finish_reason, timing.finished = reason, time.monotonic()
        metrics.finished(timing)

    try:
        while timing.finish_reason is None:
            delta: Output | Exception = await queue.get()
            if isinstance(delta, Exception):  # EngineDead, or ShuttingDown when the grace ran out
                raise delta
            if delta.error:
                engine.release(request_id)
                end("error")
                raise EngineRejected(delta.error)
            now = time.monotonic()
            if delta.added_at is not None:
                timing.scheduled = delta.added_at
            if delta.token_ids:
                previous = timing.last_token
                timing.last_token = now
                timing.generated += len(delta.token_ids)
                if previous is None:
                    timing.first_token = now
                    metrics.first_token(timing)
                metrics.tokens(len(delta.token_ids), None if previous is None else now - previous)
            piece = text.add(delta.token_ids) if text else ""
            finish = delta.finish_reason
            if text and text.stopped:
                finish = "stop"
            if finish:
                piece += text.finish() if text else ""
                if delta.finish_reason is None:  # stopped here, not by the engine: free it now
                    engine.abort(request_id)
                else:
                    engine.release(request_id)
                end(finish)
            yield Chunk(piece, delta.token_ids, delta.logprobs, finish, delta.prompt_logprobs)
    finally:
        if timing.finish_reason is None:  # the caller went away, or the engine failed
            engine.abort(request_id)
            end("abort")


async def merge(streams: list[AsyncIterator[Chunk]]) -> AsyncIterator[tuple[int, Chunk]]:
    """Interleave several sequences' chunks as they come, tagged with each sequence's index."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as stream:
            async for chunk in stream:
                yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
        except BaseException as exc:  # handed to the consumer, which raises it
            await queue.put((index, exc))
        finally:
            await queue.put((index, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
