"""/metrics exports vLLM's metric names, and its counters add up to what clients were served.

/metrics is scraped while 8 requests run at once (half streaming, half not) and after they end:
the gauges see the running batch, and the counters' and histograms' deltas equal the tokens and
requests the clients got back.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

MODEL = "tiny"
REQUESTS = 8
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds")
REASONS = ("stop", "length", "abort", "error")


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by (sample name, labels)."""
    response = httpx.get(base_url + "/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, frozenset({"model_name": MODEL, **labels}.items()))
    assert key in samples, f"no sample {name}{labels} with model_name={MODEL!r}"
    return samples[key]


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metric_names_and_labels(tiny_server):
    samples = scrape(tiny_server.base_url)
    for name in GAUGES + COUNTERS:
        value(samples, name)
    for reason in REASONS:
        value(samples, "vllm:request_success_total", finished_reason=reason)
    for name in HISTOGRAMS:
        value(samples, name + "_count")
        value(samples, name + "_sum")
        value(samples, name + "_bucket", le="+Inf")
    # nothing is exported without the model's label
    unlabeled = [name for name, labels in samples if name.startswith("vllm:") and
                 dict(labels).get("model_name") != MODEL]
    assert not unlabeled, unlabeled


def test_metrics_under_load_add_up(tiny_server):
    client = tiny_server.client()
    before = scrape(tiny_server.base_url)
    usages: list = []
    errors: list = []

    def one(index: int) -> None:
        try:
            params = {"model": MODEL, "prompt": "count " * (index + 1), "max_tokens": 40 + 10 * index,
                      "extra_body": {"ignore_eos": True}}
            if index % 2:
                stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **params)
                chunks = list(stream)
                assert chunks[-1].usage is not None
                assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
                usages.append(chunks[-1].usage)
            else:
                response = client.completions.create(**params)
                assert response.choices[0].finish_reason == "length"
                usages.append(response.usage)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    running_seen = []
    while any(t.is_alive() for t in threads):
        during = scrape(tiny_server.base_url)
        running_seen.append(value(during, "vllm:num_requests_running"))
        assert value(during, "vllm:num_requests_waiting") >= 0
        assert 0 <= value(during, "vllm:kv_cache_usage_perc") <= 1
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(usages) == REQUESTS
    assert max(running_seen, default=0) > 0, f"num_requests_running never above 0 in {running_seen}"
    assert max(running_seen) <= REQUESTS

    after = scrape(tiny_server.base_url)
    completion_tokens = sum(u.completion_tokens for u in usages)
    prompt_tokens = sum(u.prompt_tokens for u in usages)
    assert completion_tokens == sum(40 + 10 * i for i in range(REQUESTS))
    assert delta(before, after, "vllm:generation_tokens_total") == completion_tokens
    assert delta(before, after, "vllm:prompt_tokens_total") == prompt_tokens
    assert delta(before, after, "vllm:request_success_total", finished_reason="length") == REQUESTS
    for reason in ("stop", "abort", "error"):
        assert delta(before, after, "vllm:request_success_total", finished_reason=reason) == 0
    assert delta(before, after, "vllm:e2e_request_latency_seconds_count") == REQUESTS
    assert delta(before, after, "vllm:time_to_first_token_seconds_count") == REQUESTS
    assert delta(before, after, "vllm:request_queue_time_seconds_count") == REQUESTS
    # one latency per token after each request's first
    assert 0 < delta(before, after, "vllm:inter_token_latency_seconds_count") <= completion_tokens - REQUESTS
    for name in HISTOGRAMS:
        assert delta(before, after, name + "_sum") > 0
        assert delta(before, after, name + "_bucket", le="+Inf") == delta(before, after, name + "_count")
    # idle again: the gauges come back to zero
    deadline = time.monotonic() + 3
    while value(after, "vllm:num_requests_running") or value(after, "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "gauges stay above 0 after the load ended"
        time.sleep(0.1)
        after = scrape(tiny_server.base_url)
