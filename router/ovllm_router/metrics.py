"""The router's own Prometheus metrics, in a registry of their own (served at the router's /metrics).

The names are a contract: the operator's documentation and dashboards cite them.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# The engine's buckets (ovllm_engine/server/metrics.py), so router and engine latencies compare bucket
# for bucket; copied because the router does not import the engine.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 640.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_BACKEND = "none"  # the backend label of requests that no backend was chosen for
prometheus_client.disable_created_metrics()


class RouterMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ovllm_router_requests", "Requests, by the backend tried last ('none': no backend) and the HTTP status "
            "the client got ('error': the backend gave no complete response).", ["backend", "code"], registry=r)
        self.ttft = Histogram(
            "ovllm_router_time_to_first_token_seconds", "Arrival at the router to the first body byte forwarded "
            "to the client (for a stream, the first token's event).", buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram(
            "ovllm_router_request_duration_seconds", "Arrival at the router to the response's end.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("ovllm_router_backend_in_flight", "Requests in flight per backend.", ["backend"],
                               registry=r)
        self.retries = Counter(
            "ovllm_router_retries", "Requests sent on to another backend, by the backend that failed and why.",
            ["backend", "reason"], registry=r)
        self.backends = Gauge("ovllm_router_backends", "Backends known and not ejected.", registry=r)
        self.prefix_routes = Counter(
            "ovllm_router_prefix_routes", "prefix-hash choices: home (the prompt's own backend), spilled (the load "
            "bound moved it on), fallback (no prompt to hash: least load).", ["outcome"], registry=r)
        for outcome in ("home", "spilled", "fallback"):
            self.prefix_routes.labels(outcome=outcome)
        # label values used per backend, so that a backend's series go when the backend goes
        self._series: dict[str, set[tuple]] = {}

    def _seen(self, metric, backend: str, *values: str) -> None:
        self._series.setdefault(backend, set()).add((metric, (backend, *values)))

    def request(self, backend: str, code: str) -> None:
        self.requests.labels(backend=backend, code=code).inc()
        self._seen(self.requests, backend, code)

    def retry(self, backend: str, reason: str) -> None:
        self.retries.labels(backend=backend, reason=reason).inc()
        self._seen(self.retries, backend, reason)

    def add_backend(self, backend: str) -> None:
        self.in_flight.labels(backend=backend)  # exported from the start, at zero
        self._seen(self.in_flight, backend)

    def set_in_flight(self, backend: str, value: int) -> None:
        if backend in self._series:  # not for a backend already removed
            self.in_flight.labels(backend=backend).set(value)

    def forget_backend(self, backend: str) -> None:
        for metric, values in self._series.pop(backend, ()):
            try:
                metric.remove(*values)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
