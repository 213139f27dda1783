"""`ovllm router` in front of three real `ovllm serve` replicas, exercised with the official openai
client: completions and chat, streamed and not; prompts sharing a prefix meet on one replica and
distinct ones spread; streams are relayed as they are produced; a client that leaves aborts the
generation on the engine; the router's own metrics count what was sent; a replica killed with
SIGKILL costs clients nothing but a retry, and one killed mid-stream ends that stream with an error
event; SIGTERM lets streams in flight finish.

The tests run in file order on shared replicas: the ones that kill a replica come last.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from router_testing import API_KEY, MODEL

from ovllm_router.balancer import Balancer, prefix_key

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SHARED = "You are a careful assistant for the harbour office. Answer briefly and cite the rule you apply. "


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (sample name, labels)."""
    response = httpx.get(base_url + "/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return get(after, name, **labels) - get(before, name, **labels)


def prompt_tokens(engine) -> float:
    return get(scrape(engine.base_url), "vllm:prompt_tokens_total", model_name=MODEL)


def complete(client, prompt: str, max_tokens: int = 4):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens)


def test_completions_and_chat_streamed_and_not(router):
    client = router.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    response = client.completions.create(model=MODEL, prompt="The harbour opens at", max_tokens=8,
                                         extra_body={"ignore_eos": True})
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 8
    chunks = list(client.completions.create(model=MODEL, prompt="The harbour opens at", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    messages = [{"role": "system", "content": SHARED}, {"role": "user", "content": "When does the harbour open?"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, stream=True))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")
    # the Authorization header reaches the engines: a wrong key is refused by them, and not retried
    before = scrape(router.base_url)
    with pytest.raises(openai.AuthenticationError):
        complete(router.client(api_key="wrong"), "hi")
    after = scrape(router.base_url)
    assert sum(delta(before, after, "ovllm_router_requests_total", backend=e, code="401")
               for e in routers_backends(after)) == 1
    assert not any(name == "ovllm_router_retries_total" for name, _ in after)


def routers_backends(samples: dict) -> list[str]:
    return sorted(dict(labels)["backend"] for name, labels in samples if name == "ovllm_router_backend_in_flight")


def test_shared_prefix_meets_on_one_replica_and_distinct_prefixes_spread(router, engines):
    client = router.client()
    before = [prompt_tokens(e) for e in engines]
    shared_usage = sum(complete(client, SHARED + f"Question {i}: may boat {i} moor overnight?").usage.prompt_tokens
                       for i in range(5))
    after = [prompt_tokens(e) for e in engines]
    grew = [a - b for a, b in zip(after, before, strict=True)]
    assert sorted(grew)[:2] == [0, 0], f"requests with one prefix reached several replicas: {grew}"
    assert max(grew) == shared_usage

    before_router = scrape(router.base_url)
    for i in range(12):
        complete(client, f"Topic {i * 7919}: {'a different opening ' * 3} and then question {i}")
    after_router = scrape(router.base_url)
    served = {b: delta(before_router, after_router, "ovllm_router_requests_total", backend=b, code="200")
              for b in routers_backends(after_router)}
    assert sum(served.values()) == 12
    assert sum(1 for count in served.values() if count) >= 2, f"12 distinct prefixes all went to one replica: {served}"
    # one at a time, no replica is above its bound: every request went home
    assert delta(before_router, after_router, "ovllm_router_prefix_routes_total", outcome="home") == 12
    assert delta(before_router, after_router, "ovllm_router_prefix_routes_total", outcome="spilled") == 0


def test_streams_are_relayed_as_they_are_produced(router):
    client = router.client()
    started = time.monotonic()
    arrivals = []
    for chunk in client.completions.create(model=MODEL, prompt="Count the boats:", max_tokens=300, stream=True,
                                           extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 100, len(arrivals)
    first, last = arrivals[0], arrivals[-1]
    # a buffering proxy would deliver every chunk at the end: here the first comes long before the last
    assert first < 0.5 * last, f"first chunk at {first:.3f}s, last at {last:.3f}s"
    assert len({round(t, 2) for t in arrivals}) > 10, "chunks arrived in a few bursts only"


def test_a_client_that_leaves_aborts_the_generation_on_the_engine(router, engines):
    before = [scrape(e.base_url) for e in engines]
    body = {"model": MODEL, "prompt": "A long story:", "max_tokens": 3000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", router.base_url + "/v1/completions", json=body, headers=HEADERS, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the connection is closed: the router closes its request to the engine, which aborts the sequence
    deadline = time.monotonic() + 20
    while True:
        after = [scrape(e.base_url) for e in engines]
        aborted = sum(delta(b, a, "vllm:request_success_total", model_name=MODEL, finished_reason="abort")
                      for b, a in zip(before, after, strict=True))
        running = sum(get(a, "vllm:num_requests_running", model_name=MODEL) for a in after)
        if aborted == 1 and running == 0:
            break
        assert time.monotonic() < deadline, f"aborted {aborted}, running {running}: the engine went on generating"
        time.sleep(0.1)
    length = sum(delta(b, a, "vllm:request_success_total", model_name=MODEL, finished_reason="length")
                 for b, a in zip(before, after, strict=True))
    assert length == 0


def test_router_metrics_count_what_was_sent(router, engines):
    client = router.client()
    before = scrape(router.base_url)
    backends = routers_backends(before)
    assert backends == sorted(e.base_url for e in engines)
    for i in range(3):
        complete(client, f"metrics check {i}")
        list(client.completions.create(model=MODEL, prompt=f"metrics stream {i}", max_tokens=4, stream=True))
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "metrics chat"}], max_tokens=3)
    client.models.list()  # no prompt: least load
    after = scrape(router.base_url)
    sent = 8
    assert sum(delta(before, after, "ovllm_router_requests_total", backend=b, code="200") for b in backends) == sent
    assert delta(before, after, "ovllm_router_time_to_first_token_seconds_count") == sent
    assert delta(before, after, "ovllm_router_request_duration_seconds_count") == sent
    assert delta(before, after, "ovllm_router_time_to_first_token_seconds_bucket", le="+Inf") == sent
    assert 0 < delta(before, after, "ovllm_router_time_to_first_token_seconds_sum") <= \
        delta(before, after, "ovllm_router_request_duration_seconds_sum")
    assert delta(before, after, "ovllm_router_prefix_routes_total", outcome="home") + \
        delta(before, after, "ovllm_router_prefix_routes_total", outcome="spilled") == sent - 1
    assert delta(before, after, "ovllm_router_prefix_routes_total", outcome="fallback") == 1
    assert get(after, "ovllm_router_backends") == 3
    assert all(get(after, "ovllm_router_backend_in_flight", backend=b) == 0 for b in backends)
    assert not [key for key in after if key[0] == "ovllm_router_retries_total"]
    # while a stream runs, its backend has one request in flight
    stream = client.completions.create(model=MODEL, prompt="in flight", max_tokens=2000, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    during = scrape(router.base_url)
    assert sorted(get(during, "ovllm_router_backend_in_flight", backend=b) for b in backends) == [0, 0, 1]
    stream.close()


def test_sigterm_lets_streams_in_flight_finish(engines, start_router):
    router = start_router([engines[0].base_url], "--shutdown-grace", "60")
    client = router.client()
    stream = client.completions.create(model=MODEL, prompt="Before closing time", max_tokens=200, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = [next(iter(stream))]
    router.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    with pytest.raises(httpx.ConnectError):  # soon no longer listening
        while time.monotonic() < deadline:
            httpx.get(router.base_url + "/health", timeout=5)
            time.sleep(0.1)
    chunks += list(stream)
    assert chunks[-1].usage.completion_tokens == 200
    assert router.process.wait(30) == 0


def engine_serving_the_stream(router, engines) -> int:
    samples = scrape(router.base_url)
    busy = [i for i, e in enumerate(engines) if get(samples, "ovllm_router_backend_in_flight", backend=e.base_url)]
    assert len(busy) == 1, busy
    return busy[0]


def kill(engine) -> None:
    """SIGKILL the replica (server and engine process), as when its node is lost."""
    engine_pid = engine.engine_pid()
    engine.process.send_signal(signal.SIGKILL)
    os.kill(engine_pid, signal.SIGKILL)
    engine.process.wait(10)


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event(router, engines):
    client = router.client()
    before = scrape(router.base_url)
    stream = client.completions.create(model=MODEL, prompt="A story that will not end:", max_tokens=3000,
                                       stream=True, extra_body={"ignore_eos": True})
    received = [next(iter(stream))]
    victim = engines[engine_serving_the_stream(router, engines)]
    kill(victim)
    with pytest.raises(openai.APIError, match="engine replica failed while streaming"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) < 3000
    after = scrape(router.base_url)
    assert delta(before, after, "ovllm_router_requests_total", backend=victim.base_url, code="error") == 1
    assert get(after, "ovllm_router_backends") == 2  # ejected
    # the router that saw the failure sends nothing more to the dead replica: no retries needed
    for i in range(6):
        assert complete(client, f"after the failure {i}").choices[0].finish_reason in ("stop", "length")
    final = scrape(router.base_url)
    assert delta(after, final, "ovllm_router_requests_total", backend=victim.base_url, code="200") == 0
    assert not [key for key in final if key[0] == "ovllm_router_retries_total"]


def test_requests_to_a_dead_replica_are_retried_on_another(engines, start_router):
    dead = next(e for e in engines if e.process.poll() is not None)  # killed by the test before
    backends = [e.base_url for e in engines]
    router = start_router(backends, "--eject-seconds", "60")
    # prompts whose home (by the router's own ring) is the dead replica: each would go there first
    ring = Balancer()
    ring.set_backends(backends)
    prompts = [p for p in (f"home finding {i}" for i in range(300))
               if ring.home(prefix_key(f'{{"prompt": "{p}"}}'.encode(), 100)) == dead.base_url][:5]
    assert len(prompts) == 5
    client = router.client()
    results, errors = [], []
    for index, prompt in enumerate(prompts):
        try:
            if index % 2:
                results.append(list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, stream=True)))
            else:
                results.append(complete(client, prompt))
        except openai.APIError as exc:
            errors.append(exc)
    assert not errors and len(results) == 5
    samples = scrape(router.base_url)
    # the first request found the replica dead and went on; the dead one was ejected, the rest went elsewhere
    assert get(samples, "ovllm_router_retries_total", backend=dead.base_url, reason="connect") == 1
    assert sum(v for (name, labels), v in samples.items() if name == "ovllm_router_retries_total") == 1
    assert get(samples, "ovllm_router_backends") == 2
    assert get(samples, "ovllm_router_requests_total", backend=dead.base_url, code="200") == 0
    assert sum(get(samples, "ovllm_router_requests_total", backend=b, code="200") for b in backends) == 5
    assert httpx.get(router.base_url + "/health").json() == {"status": "ok", "backends": 2}


def test_every_replica_dead_gives_503_without_their_addresses(engines, start_router):
    live = [e for e in engines if e.process.poll() is None]
    for engine in live:
        kill(engine)
    router = start_router([e.base_url for e in engines], "--retries", "2")
    response = httpx.post(router.base_url + "/v1/completions", json={"model": MODEL, "prompt": "anyone?"},
                          headers=HEADERS)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "no_replica_ready" and error["param"] is None
    assert "3 tried" in error["message"]
    assert "127.0.0.1" not in response.text and "Cannot connect" not in response.text  # addresses stay in the log
    samples = scrape(router.base_url)
    assert sum(v for (name, _), v in samples.items() if name == "ovllm_router_retries_total") == 2
    assert get(samples, "ovllm_router_backends") == 0


