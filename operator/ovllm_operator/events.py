"""Events on OVLLMDeployments, posted in the background as client-go's EventRecorder does: a
reconcile hands an Event over and goes on, so a burst (a thousand resources created at once, each
with its children's and conditions' Events) never holds the workers. The queue is bounded: past it,
Events are dropped and counted (an Event is a notice; status holds the truth)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping

from ovllm_operator import metrics
from ovllm_operator.kube import Kube

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000


class EventRecorder:
    def __init__(self, kube: Kube, threads: int = 2):
        self._kube = kube
        self._pending: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._threads = [threading.Thread(target=self._post, name=f"events-{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def record(self, involved: Mapping, type_: str, reason: str, message: str) -> None:
        try:
            self._pending.put_nowait((involved, type_, reason, message))
        except queue.Full:
            metrics.EVENTS_DROPPED.inc()

    def _post(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            try:
                self._kube.event(*item)  # logs the API server's refusals itself
            except Exception as exc:  # noqa: BLE001 (unreachable API server: this Event is lost, not the poster)
                log.warning("cannot post Event %s: %s: %s", item[2], type(exc).__name__, exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (within `timeout`), then stop."""
        for _ in self._threads:
            self._pending.put(None)
        for thread in self._threads:
            thread.join(timeout)
