"""Read the engines' own /metrics, the load signal autoscaling decides on.

Each engine pod exports vLLM's gauge names (engine/ovllm_engine/server/metrics.py), so the operator
reads them straight from the pods: no Prometheus or metrics adapter needs to be installed. One pod's
failure (not listening yet, killed, hung) never fails the others: it becomes a Reading without a
value and with the reason, and autoscaling.Recommender decides what missing data allows.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# The spec's metric names -> the engine series summed for one pod (over every label set, e.g. each
# model_name). In-flight is running plus waiting: everything the pod has accepted and not finished.
METRICS: dict[str, tuple[str, ...]] = {
    "waitingRequests": ("vllm:num_requests_waiting",),
    "inFlightRequests": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "kvCacheUsage": ("vllm:kv_cache_usage_perc",),
}

# Pods read at once; more targets wait for a free slot, each still bounded by its own timeout. One
# event loop holds them all: 1000 pods that never answer cost 1000 / 256 timeouts, not 1000 / 16.
MAX_PARALLEL = 256


class MetricError(Exception):
    """The exposition text lacks a series the metric needs, or is not exposition text."""


@dataclass(frozen=True)
class Reading:
    pod: str
    value: float | None  # None: could not be read, `error` says why
    error: str = ""


def value(text: str, metric: str) -> float:
    """The metric's value for one pod: the sum of its series' samples in the exposition `text`.
    Only the lines of those series are parsed (an engine's page holds hundreds of histogram lines,
    and a fleet's autoscaler reads a page per pod every few seconds); the whole page only when they
    are missing, to say whether it is metrics at all."""
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    wanted = METRICS[metric]
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    totals = _sum_series("\n".join(lines), wanted)
    missing = [name for name, total in totals.items() if total is None]
    if missing:
        _sum_series(text, wanted)  # raises for text that is not exposition at all
        raise MetricError(f"no series {', '.join(missing)} in the metrics")
    return sum(totals.values())


def _sum_series(text: str, series: tuple[str, ...]) -> dict[str, float | None]:
    totals: dict[str, float | None] = dict.fromkeys(series)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] = (totals[sample.name] or 0.0) + sample.value
    except ValueError as exc:  # the parser's error for text that is not Prometheus exposition
        raise MetricError(f"unparseable metrics text: {exc}") from exc
    return totals


async def _read(session: aiohttp.ClientSession, slots: asyncio.Semaphore, pod: str, url: str, metric: str,
                timeout: float) -> Reading:
    async with slots:
        try:
            # total= bounds connecting and reading together: a pod that accepts but never answers
            # costs `timeout`, not a connect timeout plus a read timeout.
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status != 200:
                    return Reading(pod, None, f"{url} answered HTTP {response.status}")
                text = await response.text(errors="replace")
        except TimeoutError:
            return Reading(pod, None, f"no answer from {url} within {timeout:g}s")
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, no route
            return Reading(pod, None, f"cannot connect to {url}: {_reason(exc.os_error)}")
        except (aiohttp.ClientError, ValueError) as exc:  # reset, closed mid-answer, bad URL
            return Reading(pod, None, f"reading {url} failed: {exc}")
    try:
        return Reading(pod, value(text, metric))
    except MetricError as exc:
        return Reading(pod, None, f"{url}: {exc}")


def _reason(error: OSError) -> str:
    """The system's words for a failed connect ("Connection refused", "No route to host"): asyncio
    writes "Connect call failed (address)" in their place."""
    return os.strerror(error.errno) if error.errno else str(error)


async def read_all_async(targets: list[tuple[str, str]], metric: str, timeout: float = 2.0,
                         slots: asyncio.Semaphore | None = None) -> list[Reading]:
    """Read `metric` from each (pod name, metrics URL) at once; results in the targets' order.
    slots: shared by every caller, it bounds the reads in flight across them (default: this call's
    own MAX_PARALLEL)."""
    if metric not in METRICS:  # a caller's mistake, not a pod's failure
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not targets:
        return []
    slots = slots or asyncio.Semaphore(MAX_PARALLEL)
    # No keep-alive: no connection outlives a pod that was replaced between reads.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # `slots` is the limit
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(_read(session, slots, pod, url, metric, timeout) for pod, url in targets)))


def read_all(targets: list[tuple[str, str]], metric: str, timeout: float = 2.0) -> list[Reading]:
    """read_all_async for callers outside an event loop."""
    return asyncio.run(read_all_async(targets, metric, timeout))
