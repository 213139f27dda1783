"""Read the engines' own /metrics, the load signal autoscaling decides on.

Each engine pod exports vLLM's gauge names (engine/ovllm_engine/server/metrics.py), so the operator
reads them straight from the pods: no Prometheus or metrics adapter needs to be installed. One pod's
failure (not listening yet, killed, hung) never fails the others: it becomes a Reading without a
value and with the reason, and autoscaling.Recommender decides what missing data allows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3
from prometheus_client.parser import text_string_to_metric_families

# The spec's metric names -> the engine series summed for one pod (over every label set, e.g. each
# model_name). In-flight is running plus waiting: everything the pod has accepted and not finished.
METRICS: dict[str, tuple[str, ...]] = {
    "waitingRequests": ("vllm:num_requests_waiting",),
    "inFlightRequests": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "kvCacheUsage": ("vllm:kv_cache_usage_perc",),
}

# Pods read at once; more targets queue for a free worker, each still bounded by its own timeout.
MAX_PARALLEL = 16


class MetricError(Exception):
    """The exposition text lacks a series the metric needs, or is not exposition text."""


@dataclass(frozen=True)
class Reading:
    pod: str
    value: float | None  # None: could not be read, `error` says why
    error: str = ""


def value(text: str, metric: str) -> float:
    """The metric's value for one pod: the sum of its series' samples in the exposition `text`."""
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    totals: dict[str, float | None] = dict.fromkeys(METRICS[metric])
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] = (totals[sample.name] or 0.0) + sample.value
    except ValueError as exc:  # the parser's error for text that is not Prometheus exposition
        raise MetricError(f"unparseable metrics text: {exc}") from exc
    missing = [name for name, total in totals.items() if total is None]
    if missing:
        raise MetricError(f"no series {', '.join(missing)} in the metrics")
    return sum(totals.values())


def _read(http: urllib3.PoolManager, pod: str, url: str, metric: str, timeout: float) -> Reading:
    try:
        # total= bounds connecting and each read together: a pod that accepts but never answers
        # costs `timeout`, not a connect timeout plus a read timeout.
        response = http.request("GET", url, timeout=urllib3.Timeout(total=timeout), retries=False)
    except urllib3.exceptions.NewConnectionError as exc:  # refused, unreachable, no route
        return Reading(pod, None, f"cannot connect to {url}: {_reason(exc)}")
    except urllib3.exceptions.TimeoutError:
        return Reading(pod, None, f"no answer from {url} within {timeout:g}s")
    except urllib3.exceptions.HTTPError as exc:  # reset, closed mid-answer, bad URL
        return Reading(pod, None, f"reading {url} failed: {_reason(exc)}")
    if response.status != 200:
        return Reading(pod, None, f"{url} answered HTTP {response.status}")
    try:
        return Reading(pod, value(response.data.decode("utf-8", errors="replace"), metric))
    except MetricError as exc:
        return Reading(pod, None, f"{url}: {exc}")


def _reason(exc: Exception) -> str:
    """The innermost cause's text: urllib3 wraps the OSError that says e.g. 'Connection refused'."""
    while exc.__context__ is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    return getattr(exc, "strerror", None) or str(exc)


def read_all(targets: list[tuple[str, str]], metric: str, timeout: float = 2.0) -> list[Reading]:
    """Read `metric` from each (pod name, metrics URL) at once; results in the targets' order."""
    if metric not in METRICS:  # a caller's mistake, not a pod's failure
        raise MetricError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not targets:
        return []
    # A pool per call: no keep-alive connection outlives a pod that was replaced between reads.
    with urllib3.PoolManager(num_pools=len(targets), maxsize=1) as http, \
            ThreadPoolExecutor(min(len(targets), MAX_PARALLEL), thread_name_prefix="engine-metrics") as pool:
        futures = [pool.submit(_read, http, pod, url, metric, timeout) for pod, url in targets]
        return [future.result() for future in futures]
