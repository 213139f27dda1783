"""engine_metrics reads real `ovllm serve` engines' /metrics, and the Recommender decides on what it read.

Two engines on loopback stand for two pods. Each runs one sequence at a time (--max-num-seqs 1), so
concurrent requests queue and show as waiting. Faults are real too: a killed engine refuses
connections, a bare listening socket that never answers times out, the engine's own 404 and
/health give an HTTP error and a page that is not metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import urllib3
from ovllm_tests_conftest import Server  # tests/conftest.py as tests/operator/conftest.py loads it

from conftest import free_port
from ovllm_operator.autoscaling import Policy, Recommender
from ovllm_operator.engine_metrics import METRICS, MetricError, Reading, read_all, value

pytestmark = pytest.mark.e2e

# Without chunked prefill: with it, OpenVINO GenAI's scheduler ran 4 sequences at once despite
# --max-num-seqs 1 and nothing ever waited. Without it a whole prompt must fit one step.
FLAGS = ("--max-num-seqs", "1", "--no-enable-chunked-prefill", "--max-model-len", "256",
         "--served-model-name", "tiny")
LOAD = 5  # concurrent requests on one engine: 1 running, up to 4 waiting
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def engines(tiny_ov_fp32, tmp_path_factory):
    logs = tmp_path_factory.mktemp("engines")
    servers = [Server(tiny_ov_fp32, *FLAGS, log_path=logs / f"engine-{i}.log") for i in range(2)]
    try:
        yield [server.wait_ready() for server in servers]  # started together, so they load in parallel
    finally:
        for server in servers:
            server.stop()


def targets(*servers: Server) -> list[tuple[str, str]]:
    return [(f"engine-{server.port}", server.base_url + "/metrics") for server in servers]


def scrape(server: Server) -> str:
    response = urllib3.request("GET", server.base_url + "/metrics", timeout=10)
    assert response.status == 200
    return response.data.decode()


def load(server: Server) -> tuple[list[threading.Thread], list[Exception]]:
    """LOAD long completions at once, each exactly MAX_TOKENS long (ignore_eos)."""
    client, errors = server.client(), []

    def one() -> None:
        try:
            response = client.completions.create(model="tiny", prompt="count", max_tokens=MAX_TOKENS,
                                                 extra_body={"ignore_eos": True})
            assert response.usage.completion_tokens == MAX_TOKENS
        except Exception as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(LOAD)]
    for thread in threads:
        thread.start()
    return threads, errors


def test_idle_engines_read_zero(engines):
    for metric in METRICS:
        readings = read_all(targets(*engines), metric)
        assert readings == [Reading(pod, 0.0) for pod, _ in targets(*engines)], metric


def test_value_sums_the_series_of_real_text(engines):
    text = scrape(engines[0])
    for metric in METRICS:
        assert value(text, metric) == 0.0
    # every label set counts: the same series for a second model_name (text edited: one engine
    # serves one model) doubles the sum
    line = next(line for line in text.splitlines() if line.startswith("vllm:num_requests_waiting{"))
    assert value(text + line.replace('"tiny"', '"other"').replace("0.0", "2.0") + "\n", "waitingRequests") == 2.0
    # a missing series is named
    without = "\n".join(line for line in text.splitlines() if "vllm:num_requests_waiting" not in line)
    with pytest.raises(MetricError, match="no series vllm:num_requests_waiting in the metrics"):
        value(without, "inFlightRequests")
    assert value(without, "kvCacheUsage") == 0.0
    with pytest.raises(MetricError, match="unknown metric"):
        value(text, "tokensPerSecond")


def test_load_scales_up_then_down_after_the_window(engines):
    """Real readings, explicit decision times (as the operator passes its clock): how fast this
    machine generates cannot move the windows."""
    busy, idle = engines
    policy = Policy(min_replicas=1, max_replicas=4, metric="waitingRequests", target=1.0,
                    scale_up_window=0, scale_down_window=60.0)
    recommender, current, t0 = Recommender(), 2, 1000.0

    def decide(readings: list[Reading], now: float):
        return recommender.decide("ns/chat", policy, current, readings, now)

    # the first decision after a start seeds the history: idle engines do not scale down yet
    first = decide(read_all(targets(busy, idle), policy.metric), t0)
    assert (first.desired, first.reason, first.value) == (current, "Stabilizing", 0.0), first

    threads, errors = load(busy)
    seen, peak = [], None
    while any(thread.is_alive() for thread in threads):
        readings = read_all(targets(busy, idle), policy.metric)
        assert readings[1] == Reading(targets(idle)[0][0], 0.0), readings
        seen.append(readings[0].value)
        if readings[0].value >= 3 and peak is None:
            peak, peak_text = readings, scrape(busy)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert peak is not None, f"never 3 waiting on the busy engine: {seen}"

    # 3 or more waiting over 2 engines, 1 per replica wanted: ScaleUp at once (no up window)
    up = decide(peak, t0 + 10)
    assert (up.reason, up.desired) == ("ScaleUp", peak[0].value), up
    assert f"scaling up from 2 to {up.desired}" in up.message
    current = up.desired  # as if the operator applied it

    # the real text at the peak: one running (--max-num-seqs 1), the rest waiting, some KV cache used
    waiting = value(peak_text, "waitingRequests")
    assert waiting >= 1
    assert value(peak_text, "inFlightRequests") == waiting + 1
    assert 0 < value(peak_text, "kvCacheUsage") <= 1

    # idle again (the engine reports its gauges at least once a second)
    deadline = time.monotonic() + 10
    while True:
        idle_readings = read_all(targets(busy, idle), policy.metric)
        if not any(r.value for r in idle_readings):
            break
        assert time.monotonic() < deadline, f"still waiting requests after the load ended: {idle_readings}"
        time.sleep(0.1)
    held = decide(idle_readings, t0 + 20)
    assert (held.desired, held.reason) == (current, "Stabilizing"), held
    assert f"scale-down window) also recommended {current}" in held.message
    assert decide(idle_readings, t0 + 69).desired == current  # the peak at t0 + 10 is still in the window
    # once the whole window saw idle engines: down to minReplicas
    down = decide(read_all(targets(busy, idle), policy.metric), t0 + 70.5)
    assert (down.reason, down.current, down.desired) == ("ScaleDown", current, 1), down


def test_killed_engine_is_unreadable_and_holds(engines, start_server, tiny_ov_fp32):
    survivor = engines[0]
    victim = start_server(tiny_ov_fp32, *FLAGS)
    # a pod dies with all its processes: the engine process and the server
    os.kill(victim.engine_pid(), signal.SIGKILL)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)

    policy = Policy(min_replicas=1, max_replicas=4, metric="inFlightRequests", target=1.0,
                    scale_up_window=0, scale_down_window=0)
    readings = read_all(targets(survivor, victim), policy.metric)
    assert readings[0] == Reading(targets(survivor)[0][0], 0.0)
    assert readings[1].value is None and "Connection refused" in readings[1].error, readings

    # the idle survivor alone would scale 2 replicas down to 1; with a pod unread it holds
    alone = Recommender().decide("ns/chat", policy, 2, readings[:1], 0.0)
    assert (alone.desired, alone.reason) == (1, "ScaleDown"), alone
    held = Recommender().decide("ns/chat", policy, 2, readings, 0.0)
    assert (held.desired, held.reason, held.readable, held.unreadable) == (2, "PartialMetrics", 1, 1), held
    assert targets(victim)[0][0] in held.message and "Connection refused" in held.message
    # and with nothing readable at all
    none = Recommender().decide("ns/chat", policy, 2, readings[1:], 0.0)
    assert (none.desired, none.reason, none.value) == (2, "MetricUnavailable", None), none


def test_unreachable_pods_give_reasons_within_the_timeout(engines):
    hung = [socket.socket(), socket.socket()]  # accept connections (the kernel's backlog), never answer
    for sock in hung:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
    refused = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    engine = engines[1].base_url
    pods = [(f"hung-{i}", f"http://127.0.0.1:{sock.getsockname()[1]}/metrics") for i, sock in enumerate(hung)]
    pods += [("refused", refused), ("not-found", engine + "/nope"), ("not-metrics", engine + "/health"),
             ("good", engine + "/metrics")]
    try:
        started = time.monotonic()
        readings = read_all(pods, "waitingRequests", timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        for sock in hung:
            sock.close()
    assert [r.pod for r in readings] == [pod for pod, _ in pods]
    by_pod = {r.pod: r for r in readings}
    assert by_pod["good"] == Reading("good", 0.0)
    for pod, url in pods[:2]:
        assert by_pod[pod].error == f"no answer from {url} within 1.5s"
    assert by_pod["refused"].error == f"cannot connect to {refused}: Connection refused"
    assert by_pod["not-found"].error == f"{engine}/nope answered HTTP 404"
    assert by_pod["not-metrics"].error.startswith(f"{engine}/health: unparseable metrics text")
    assert all(r.value is None for r in readings[:-1])
    # read at once: the two hung pods cost the call one timeout, not one each
    assert 1.4 < elapsed < 2.8, elapsed
