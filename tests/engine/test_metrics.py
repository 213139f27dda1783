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
# vLLM's names (vllm/v1/metrics/loggers.py), its deprecated aliases among them
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
          "vllm:gpu_cache_usage_perc", "vllm:num_requests_swapped")
COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_hits_total",
            "vllm:num_preemptions_total")
# one observation per sequence
SEQUENCE_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                       "vllm:request_queue_time_seconds", "vllm:request_inference_time_seconds",
                       "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                       "vllm:request_time_per_output_token_seconds", "vllm:request_prompt_tokens",
                       "vllm:request_generation_tokens")
# one per API request
REQUEST_HISTOGRAMS = ("vllm:request_params_n", "vllm:request_params_max_tokens",
                      "vllm:request_max_num_generation_tokens")
HISTOGRAMS = (SEQUENCE_HISTOGRAMS + REQUEST_HISTOGRAMS +
              ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds", "vllm:iteration_tokens_total"))
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
    # the information gauges: the KV cache's block size (llm-d reads it) and no LoRA adapters
    info = {dict(labels)["block_size"]: v for (name, labels), v in samples.items() if name == "vllm:cache_config_info"}
    assert info == {"32": 1.0}
    lora = [dict(labels) for name, labels in samples if name == "vllm:lora_requests_info"]
    assert lora == [{"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}]
    # nothing else is exported without the model's label
    unlabeled = [name for name, labels in samples if name.startswith("vllm:") and
                 dict(labels).get("model_name") != MODEL and not name.endswith("_info")]
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
    for name in SEQUENCE_HISTOGRAMS + REQUEST_HISTOGRAMS:
        assert delta(before, after, name + "_count") == REQUESTS, name
    assert delta(before, after, "vllm:request_prompt_tokens_sum") == prompt_tokens
    assert delta(before, after, "vllm:request_generation_tokens_sum") == completion_tokens
    # the parameters: n=1 each, and max_tokens (= what each generated, as ignore_eos ran to the limit)
    assert delta(before, after, "vllm:request_params_n_sum") == REQUESTS
    assert delta(before, after, "vllm:request_params_max_tokens_sum") == completion_tokens
    assert delta(before, after, "vllm:request_max_num_generation_tokens_sum") == completion_tokens
    # vLLM's count of a step's tokens: each output token, and each prompt in the step of its first token
    assert delta(before, after, "vllm:iteration_tokens_total_sum") == prompt_tokens + completion_tokens
    assert delta(before, after, "vllm:iteration_tokens_total_count") > 0
    # every prompt token is looked up in the prefix cache; none of these prompts fills a block of 32
    assert delta(before, after, "vllm:prefix_cache_queries_total") == prompt_tokens
    assert delta(before, after, "vllm:prefix_cache_hits_total") == 0
    # one latency per token after each request's first
    assert 0 < delta(before, after, "vllm:inter_token_latency_seconds_count") <= completion_tokens - REQUESTS
    assert delta(before, after, "vllm:time_per_output_token_seconds_count") == delta(
        before, after, "vllm:inter_token_latency_seconds_count")
    for name in HISTOGRAMS:
        assert delta(before, after, name + "_sum") > 0, name
        assert delta(before, after, name + "_bucket", le="+Inf") == delta(before, after, name + "_count")
    # the phases add up: prefill + decode = inference, and queue + inference <= e2e
    phases = {name: delta(before, after, f"vllm:request_{name}_time_seconds_sum")
              for name in ("queue", "prefill", "decode", "inference")}
    assert abs(phases["prefill"] + phases["decode"] - phases["inference"]) < 1e-6 * REQUESTS
    assert phases["queue"] + phases["inference"] <= delta(before, after, "vllm:e2e_request_latency_seconds_sum")
    # idle again: the gauges come back to zero
    deadline = time.monotonic() + 3
    while value(after, "vllm:num_requests_running") or value(after, "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "gauges stay above 0 after the load ended"
        time.sleep(0.1)
        after = scrape(tiny_server.base_url)


def test_prefix_cache_hits_count_the_reused_blocks(tiny_server):
    """A prompt's full blocks of 32 tokens, from the first, are found again once a request computed
    them; the last prompt token is always computed."""
    client = tiny_server.client()
    shared = list(range(100, 200))  # 100 token ids: three full blocks and 4 tokens

    def hits_of(prompt: list[int]) -> tuple[float, float]:
        before = scrape(tiny_server.base_url)
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
        after = scrape(tiny_server.base_url)
        return (delta(before, after, "vllm:prefix_cache_queries_total"),
                delta(before, after, "vllm:prefix_cache_hits_total"))

    assert hits_of(shared) == (100, 0)
    assert hits_of(shared) == (100, 96)
    assert hits_of(shared[:70] + list(range(300, 330))) == (100, 64)  # two blocks in common
    assert hits_of(list(range(400, 496))) == (96, 0)
    assert hits_of(list(range(400, 496))) == (96, 95)  # wholly cached: its last token is computed anew
    samples = scrape(tiny_server.base_url)
    assert value(samples, "vllm:gpu_prefix_cache_hits_total") == value(samples, "vllm:prefix_cache_hits_total")


def test_cpu_block_size_is_genai_s(tiny_ov_fp32):
    """The ledger's block size (and vllm:cache_config_info's) is the CPU plugin's: the KV cache's
    usage steps up at the 33rd token of a prompt."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from ovllm_engine.server.engine_process import CPU_BLOCK_SIZE

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 1
    scheduler.enable_prefix_caching = False
    pipeline = ov_genai.ContinuousBatchingPipeline(str(tiny_ov_fp32), scheduler, "CPU", {})
    usage = {}
    for length in (1, CPU_BLOCK_SIZE, CPU_BLOCK_SIZE + 1, 2 * CPU_BLOCK_SIZE + 1):
        config = ov_genai.GenerationConfig()
        config.max_new_tokens, config.ignore_eos = 1, True
        handle = pipeline.add_request(length, ov.Tensor(np.array([[7] * length], dtype=np.int64)), config)
        pipeline.step()
        usage[length] = pipeline.get_metrics().cache_usage
        while handle.get_status() == ov_genai.GenerationStatus.RUNNING:
            pipeline.step()
    one = usage[1]
    assert one > 0
    assert usage[CPU_BLOCK_SIZE] == one
    assert usage[CPU_BLOCK_SIZE + 1] == 2 * one
    assert usage[2 * CPU_BLOCK_SIZE + 1] == 3 * one
