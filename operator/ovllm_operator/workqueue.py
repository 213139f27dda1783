"""A work queue of resource keys with client-go's guarantees, on asyncio:

- a key waiting in the queue is there once, however many events name it (a burst of a Deployment's
  status changes costs one reconcile);
- a key is handed to one worker at a time; added again while a worker holds it, it is queued once
  more when that worker is done, so the change that came meanwhile is seen;
- a key can be added after a delay (retries with backoff, re-checks).

Only kopf's event loop touches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class WorkQueue:
    def __init__(self) -> None:
        self._ready: asyncio.Queue[Hashable] = asyncio.Queue()
        self._dirty: dict[Hashable, str] = {}  # key -> why it was added (the first reason since taken)
        self._processing: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}

    def add(self, key: Hashable, reason: str) -> None:
        if key in self._dirty:
            return
        self._dirty[key] = reason
        if key not in self._processing:
            self._ready.put_nowait(key)

    def add_after(self, key: Hashable, reason: str, delay: float) -> None:
        """Add `key` in `delay` seconds; an earlier pending delay for it is replaced."""
        if timer := self._timers.pop(key, None):
            timer.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key, reason)

        self._timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    def retry(self, key: Hashable, base: float = 1.0, cap: float = 120.0) -> float:
        """Add `key` again after a delay that doubles with each failure in a row; returns it."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(base * 2 ** (failures - 1), cap)
        self.add_after(key, "retry", delay)
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    async def get(self) -> tuple[Hashable, str]:
        key = await self._ready.get()
        self._processing.add(key)
        return key, self._dirty.pop(key, "event")

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._ready.put_nowait(key)

    def forget(self, key: Hashable) -> None:
        """The resource is gone: no retry or re-check of it is left."""
        self._failures.pop(key, None)
        if timer := self._timers.pop(key, None):
            timer.cancel()

    def __len__(self) -> int:
        return self._ready.qsize()
