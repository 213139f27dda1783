"""Prometheus metrics under vLLM's names, types, labels and buckets (vllm/v1/metrics/loggers.py), so
that dashboards, KEDA triggers and routers built for vLLM read ovllm unchanged. Latencies are
measured in the server process as tokens reach it; the engine process reports its gauges, the
tokens of each step and the prefix cache's counts (prefix_cache.py) in its Stats.

vLLM's deprecated names that consumers still read are kept as aliases: vllm:gpu_cache_usage_perc and
vllm:gpu_prefix_cache_* (vLLM production-stack's router), vllm:time_per_output_token_seconds and
vllm:num_requests_swapped (vLLM's older Grafana dashboard).
"""

from __future__ import annotations

from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ovllm_engine.server.messages import CacheInfo, Stats

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 640.0)
TTFT_BUCKETS = (*LATENCY_BUCKETS, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error")
CONTENT_TYPE = CONTENT_TYPE_LATEST
# vLLM exports no *_created series; neither do we.
prometheus_client.disable_created_metrics()


def token_buckets(max_model_len: int) -> tuple[int, ...]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to the model's length."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return tuple(buckets)
            buckets.append(mantissa * scale)
        scale *= 10


@dataclass
class SequenceTiming:
    """One sequence's life, in time.monotonic() seconds, filled in as its tokens arrive."""

    arrival: float
    prompt_tokens: int
    scheduled: float | None = None  # the pipeline took it
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    generated: int = 0
    finish_reason: str | None = None


class EngineMetrics:
    def __init__(self, model_name: str, max_model_len: int = 100_000, speculative_tokens: int = 0):
        self.registry = r = CollectorRegistry()
        self.labels = {"model_name": model_name}
        label = ["model_name"]
        tokens = token_buckets(max_model_len)

        def gauge(name: str, doc: str, labelnames=label) -> Gauge:
            return Gauge(name, doc, labelnames, registry=r)

        def counter(name: str, doc: str, labelnames=label) -> Counter:
            return Counter(name, doc, labelnames, registry=r)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, label, buckets=buckets, registry=r)

        # scheduler state
        self.num_requests_running = gauge("vllm:num_requests_running", "Number of requests in model execution "
                                          "batches.")
        self.num_requests_waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.num_requests_swapped = gauge(
            "vllm:num_requests_swapped", "Requests swapped out to CPU memory: always 0 (the KV cache already is in "
            "host memory; OpenVINO GenAI preempts by recomputing). DEPRECATED in vLLM.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_cache_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage. "
                                     "DEPRECATED: Use vllm:kv_cache_usage_perc instead.")
        self.prefix_cache_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number "
                                            "of queried tokens.")
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                                         "tokens.")
        self.gpu_prefix_cache_queries = counter(
            "vllm:gpu_prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens. "
            "DEPRECATED: Use vllm:prefix_cache_queries instead.")
        self.gpu_prefix_cache_hits = counter(
            "vllm:gpu_prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens. DEPRECATED: Use "
            "vllm:prefix_cache_hits instead.")
        # counters
        self.num_preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine. OpenVINO GenAI does not "
            "report its preemptions: this stays 0.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.request_success = counter("vllm:request_success", "Count of successfully processed requests.",
                                       label + ["finished_reason"])
        # histograms of counts
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                               tokens)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Number of generation tokens processed.", tokens)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS)
        self.request_max_num_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
            tokens)
        self.request_params_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.request_params_max_tokens = histogram("vllm:request_params_max_tokens",
                                                   "Histogram of the max_tokens request parameter.", tokens)
        # histograms of times
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             LATENCY_BUCKETS)
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds. DEPRECATED: Use "
            "vllm:inter_token_latency_seconds instead.", TPOT_BUCKETS)
        self.request_time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
            TPOT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.",
                                        REQUEST_LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS)
        # information: set when the engine is up (cache_info), and the LoRA state vLLM reports (none here)
        self.cache_config_info = gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            ["block_size", "cache_dtype", "enable_prefix_caching", "engine"])
        self.lora_requests_info = gauge(
            "vllm:lora_requests_info", "Running stats on lora requests. ovllm serves no LoRA adapters: max_lora 0.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        self.lora_requests_info.labels(max_lora="0", waiting_lora_adapters="", running_lora_adapters="").set(0)
        # Ours, not vLLM's (vLLM has no admission control): requests refused before reaching the engine.
        self.requests_rejected = counter(
            "ovllm:requests_rejected", "Requests refused at admission (reason=queue_full: 429 with Retry-After).",
            label + ["reason"])
        # speculative decoding, as vLLM exports it: only when --speculative-config is given
        self.spec_decode = None
        if speculative_tokens:
            self.spec_decode = (
                counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts."),
                counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens."),
                counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens."),
                counter("vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
                        label + ["position"]))
            for total in self.spec_decode[:3]:
                total.labels(**self.labels)
            for position in range(speculative_tokens):
                self.spec_decode[3].labels(position=str(position), **self.labels)
        for metric in list(vars(self).values()):  # export every series from the start, at zero
            if isinstance(metric, (Counter, Gauge, Histogram)) and metric._labelnames == ("model_name",):
                metric.labels(**self.labels)
        for reason in FINISH_REASONS:
            self.request_success.labels(finished_reason=reason, **self.labels)
        self.requests_rejected.labels(reason="queue_full", **self.labels)

    def rejected(self, reason: str) -> None:
        self.requests_rejected.labels(reason=reason, **self.labels).inc()

    def cache_info(self, cache: CacheInfo | None) -> None:
        if cache is None:
            return
        self.cache_config_info.labels(block_size=str(cache.block_size), cache_dtype=cache.cache_dtype,
                                      enable_prefix_caching=str(cache.enable_prefix_caching), engine="0").set(1)

    def engine_stats(self, stats: Stats) -> None:
        labels = self.labels
        self.num_requests_running.labels(**labels).set(stats.running)
        self.num_requests_waiting.labels(**labels).set(stats.waiting)
        for gauge in (self.kv_cache_usage, self.gpu_cache_usage):
            gauge.labels(**labels).set(stats.kv_cache_usage)
        for queries, hits in ((self.prefix_cache_queries, self.prefix_cache_hits),
                              (self.gpu_prefix_cache_queries, self.gpu_prefix_cache_hits)):
            queries.labels(**labels).inc(stats.prefix_queries)
            hits.labels(**labels).inc(stats.prefix_hits)
        if stats.step_tokens:
            self.iteration_tokens.labels(**labels).observe(stats.step_tokens)
        if stats.speculation is not None and self.spec_decode is not None:
            drafts, draft_tokens, accepted, per_position = self.spec_decode
            drafts.labels(**labels).inc(stats.speculation.drafts)
            draft_tokens.labels(**labels).inc(stats.speculation.draft_tokens)
            accepted.labels(**labels).inc(stats.speculation.accepted)
            for position, count in enumerate(stats.speculation.accepted_per_position):
                per_position.labels(position=str(position), **labels).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def first_token(self, timing: SequenceTiming) -> None:
        self.ttft.labels(**self.labels).observe(timing.first_token - timing.arrival)
        self.prompt_tokens.labels(**self.labels).inc(timing.prompt_tokens)

    def tokens(self, count: int, gap: float | None) -> None:
        """`count` tokens arrived; `gap` is the time since the previous ones (None for the first)."""
        self.generation_tokens.labels(**self.labels).inc(count)
        if gap is not None:
            each = gap / count  # one step can deliver several tokens: spread the gap over them
            for _ in range(count):
                self.itl.labels(**self.labels).observe(each)
                self.time_per_output_token.labels(**self.labels).observe(each)

    def finished(self, timing: SequenceTiming) -> None:
        """A sequence ended (finish_reason stop, length, abort or error): its whole-request histograms."""
        labels, t = self.labels, timing
        self.request_success.labels(finished_reason=t.finish_reason, **labels).inc()
        self.request_prompt_tokens.labels(**labels).observe(t.prompt_tokens)
        self.request_generation_tokens.labels(**labels).observe(t.generated)
        self.e2e.labels(**labels).observe(max(0.0, t.finished - t.arrival))
        if t.scheduled is None:
            return  # it never reached the pipeline
        self.queue_time.labels(**labels).observe(max(0.0, t.scheduled - t.arrival))
        if t.first_token is None:
            return
        self.prefill_time.labels(**labels).observe(max(0.0, t.first_token - t.scheduled))
        self.decode_time.labels(**labels).observe(t.last_token - t.first_token)
        self.inference_time.labels(**labels).observe(max(0.0, t.last_token - t.scheduled))
        if t.generated > 1:
            self.request_time_per_output_token.labels(**labels).observe(
                (t.last_token - t.first_token) / (t.generated - 1))

    def request(self, n: int, max_tokens: int, sequences: list[SequenceTiming]) -> None:
        """An API request ended: its parameters, and the most tokens one of its sequences generated."""
        self.request_params_n.labels(**self.labels).observe(n)
        self.request_params_max_tokens.labels(**self.labels).observe(max_tokens)
        if sequences:
            self.request_max_num_generation_tokens.labels(**self.labels).observe(max(s.generated for s in sequences))
