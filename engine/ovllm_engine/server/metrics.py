"""Prometheus metrics under vLLM's names, so that dashboards, KEDA triggers and routers built for
vLLM read ovllm unchanged. Latencies are measured in the server process, as tokens reach it."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ovllm_engine.server.messages import Stats

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 640.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# vLLM exports no *_created series; neither do we.
prometheus_client.disable_created_metrics()


class EngineMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model_name"]
        self.num_requests_running = Gauge(
            "vllm:num_requests_running", "Sequences in the running batch.", label, registry=r)
        self.num_requests_waiting = Gauge(
            "vllm:num_requests_waiting", "Sequences waiting to be scheduled.", label, registry=r)
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 means 100 percent).", label, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", label, registry=r)
        self.request_success = Counter(
            "vllm:request_success", "Requests that finished.", label + ["finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", label,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between successive tokens.", label,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency, arrival to last token.", label,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Time from arrival until the sequence is handed to the pipeline.",
            label, buckets=LATENCY_BUCKETS, registry=r)
        self.request_prompt_tokens = Histogram("vllm:request_prompt_tokens", "Prompt tokens per request.", label,
                                               buckets=TOKEN_BUCKETS, registry=r)
        self.request_generation_tokens = Histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", label, buckets=TOKEN_BUCKETS,
            registry=r)
        # Ours, not vLLM's (vLLM has no admission control): requests refused before reaching the engine.
        self.requests_rejected = Counter(
            "ovllm:requests_rejected", "Requests refused at admission (reason=queue_full: 429 with Retry-After).",
            label + ["reason"], registry=r)
        self.labels = {"model_name": model_name}
        for metric in (self.num_requests_running, self.num_requests_waiting, self.kv_cache_usage,
                       self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e, self.queue_time,
                       self.request_prompt_tokens, self.request_generation_tokens):
            metric.labels(**self.labels)  # export every series from the start, at zero
        for reason in ("stop", "length", "abort", "error"):
            self.request_success.labels(finished_reason=reason, **self.labels)
        self.requests_rejected.labels(reason="queue_full", **self.labels)

    def rejected(self, reason: str) -> None:
        self.requests_rejected.labels(reason=reason, **self.labels).inc()

    def engine_stats(self, stats: Stats) -> None:
        self.num_requests_running.labels(**self.labels).set(stats.running)
        self.num_requests_waiting.labels(**self.labels).set(stats.waiting)
        self.kv_cache_usage.labels(**self.labels).set(stats.kv_cache_usage)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, name: str, value: float) -> None:
        getattr(self, name).labels(**self.labels).observe(value)

    def count(self, name: str, amount: float = 1.0) -> None:
        getattr(self, name).labels(**self.labels).inc(amount)

    def finished(self, reason: str, prompt_tokens: int, generation_tokens: int, latency: float) -> None:
        self.request_success.labels(finished_reason=reason, **self.labels).inc()
        self.observe("request_prompt_tokens", prompt_tokens)
        self.observe("request_generation_tokens", generation_tokens)
        self.observe("e2e", latency)
