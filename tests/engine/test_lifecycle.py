"""The server's life: graceful SIGTERM, engine death, client disconnects, and startup config errors.

- SIGTERM drains: /health and new requests answer 503 (the server keeps listening, so that clients
  and probes see it), the requests in flight finish, and the server exits 0; a stream still running
  when --shutdown-grace ends gets an error event rather than a silent cut.
- When the engine process dies, requests in flight get errors, /health stops answering 200, and
  the server exits non-zero so that Kubernetes restarts the pod.
- A client that goes away frees its sequence at once (counted as finished_reason="abort").
- A wrong setting stops `ovllm serve` before it loads anything, with one line saying what is wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

MODEL = "tiny"


def metric(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    wanted = {"model_name": MODEL, **labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    raise AssertionError(f"no {name}{wanted} in /metrics")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def health_status(base_url: str) -> int | None:
    """/health's status, or None when the connection is refused."""
    try:
        return httpx.get(base_url + "/health", timeout=5).status_code
    except httpx.ConnectError:
        return None


def test_sigterm_finishes_request_in_flight_then_exits_0(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--ov-config",
                          '{"INFERENCE_PRECISION_HINT": "f32"}')
    client = server.client()
    params = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0,
              "extra_body": {"ignore_eos": True}}
    reference = client.completions.create(**params).choices[0].text

    stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **params)
    text, finish, usage, signalled = "", None, None, False
    for chunk in stream:
        if not signalled:
            server.process.send_signal(signal.SIGTERM)
            signalled = True
            # while it drains, /health and new requests answer 503 (and close the connection)
            wait_for(lambda: "shutting down" in server.log(), 10, "the server logs that it shuts down")
            assert health_status(server.base_url) == 503
            late = httpx.post(server.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=5)
            assert late.status_code == 503, late.text
            assert late.json()["error"]["code"] == "shutting_down" and late.headers["connection"] == "close"
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert signalled
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 300
    assert text == reference
    assert server.process.wait(30) == 0, server.log()
    assert "stopped (exit code 0)" in server.log()


def test_streams_past_the_grace_end_with_an_error_event(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--shutdown-grace", "1")
    client = server.client()
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4000, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks, error = 0, None
    try:
        for _ in stream:
            if chunks == 0:
                server.process.send_signal(signal.SIGTERM)
            chunks += 1
    except openai.APIError as exc:  # the client raises on an error event
        error = exc
    assert error is not None, f"the stream ended after {chunks} chunks without an error event"
    assert error.code == "shutting_down" and "shut down before this stream finished" in error.message, error
    assert server.process.wait(30) == 0, server.log()


def test_engine_death_fails_requests_and_exits_nonzero(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL)
    client = server.client()
    params = {"model": MODEL, "prompt": "hello", "max_tokens": 3000, "extra_body": {"ignore_eos": True}}
    outcome: dict = {}

    def non_streaming() -> None:
        try:
            outcome["response"] = client.completions.create(**params)
        except Exception as exc:  # the expected way out, checked below
            outcome["error"] = exc

    waiter = threading.Thread(target=non_streaming)
    waiter.start()
    stream = client.completions.create(stream=True, **params)
    finish = None
    with pytest.raises((openai.APIError, httpx.HTTPError)) as stream_error:
        for index, chunk in enumerate(stream):
            finish = chunk.choices[0].finish_reason if chunk.choices else finish
            if index == 2:
                wait_for(lambda: metric(server.base_url, "vllm:num_requests_running") == 2, 10,
                         "both requests run in the engine")
                os.kill(server.engine_pid(), signal.SIGKILL)
    assert finish is None, "the stream finished although its engine died"
    if isinstance(stream_error.value, openai.APIStatusError):
        assert stream_error.value.status_code >= 500
    waiter.join(30)
    assert not waiter.is_alive(), "the non-streaming request hangs after the engine died"
    assert "response" not in outcome, "a 3000-token request completed although its engine died"
    error = outcome["error"]
    assert isinstance(error, openai.APIStatusError), repr(error)
    assert error.status_code >= 500
    assert isinstance(error.body, dict) and error.body.get("message"), error.body
    assert health_status(server.base_url) in (None, 503)
    try:
        code = server.process.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server still runs 15s after its engine died:\n{server.log()}")
    assert code != 0, server.log()
    assert "engine process died" in server.log()


def test_client_disconnect_aborts_the_sequence(tiny_server):
    url = tiny_server.base_url
    abort_before = metric(url, "vllm:request_success_total", finished_reason="abort")
    wait_for(lambda: metric(url, "vllm:num_requests_running") == 0, 5, "an idle server")

    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", url + "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping the generator would close the connection here
        events = 0
        for line in lines:
            events += line.startswith("data: {")
            if events == 5:
                break
        assert metric(url, "vllm:num_requests_running") == 1
        generating = metric(url, "vllm:generation_tokens_total")
        wait_for(lambda: metric(url, "vllm:generation_tokens_total") > generating, 5, "the sequence generates")
    # the connection is closed mid-stream
    wait_for(lambda: metric(url, "vllm:num_requests_running") == 0, 2, "num_requests_running back to 0")
    wait_for(lambda: metric(url, "vllm:request_success_total", finished_reason="abort") == abort_before + 1, 2,
             "one more abort counted")
    generated = metric(url, "vllm:generation_tokens_total")
    time.sleep(0.3)
    assert metric(url, "vllm:generation_tokens_total") == generated, "the engine still generates for nobody"

    ok = tiny_server.client().completions.create(model=MODEL, prompt="hi", max_tokens=4,
                                                 extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 4 and ok.choices[0].finish_reason == "length"


def test_client_timeout_aborts_non_streaming(tiny_server):
    url = tiny_server.base_url
    abort_before = metric(url, "vllm:request_success_total", finished_reason="abort")
    wait_for(lambda: metric(url, "vllm:num_requests_running") == 0, 5, "an idle server")
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    wait_for(lambda: metric(url, "vllm:request_success_total", finished_reason="abort") == abort_before + 1, 2,
             "the timed-out request counted as aborted")
    wait_for(lambda: metric(url, "vllm:num_requests_running") == 0, 2, "num_requests_running back to 0")

    ok = tiny_server.client().completions.create(model=MODEL, prompt="hi", max_tokens=4,
                                                 extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 4


# (environment or flags, what the one error line must mention)
CONFIG_ERRORS = [
    pytest.param({"VLLM_OPENVINO_KVCACHE_SPACE": "-1"}, [],
                 ["VLLM_OPENVINO_KVCACHE_SPACE", "'-1'", ">= 0"], id="kvcache-space-negative"),
    pytest.param({"VLLM_OPENVINO_KVCACHE_SPACE": "abc"}, [],
                 ["VLLM_OPENVINO_KVCACHE_SPACE", "'abc'", "GB"], id="kvcache-space-not-a-number"),
    pytest.param({"VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "fp8"}, [],
                 ["VLLM_OPENVINO_CPU_KV_CACHE_PRECISION", "'fp8'", "u8", "f16", "bf16", "f32"],
                 id="kv-precision-fp8"),
    pytest.param({"VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": "maybe"}, [],
                 ["VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS", "'maybe'", "ON", "OFF", "true", "false"],
                 id="quantized-weights-maybe"),
    pytest.param({}, ["--ov-config", "notjson"], ["--ov-config", "notjson", "JSON", "INFERENCE_PRECISION_HINT"],
                 id="ov-config-not-json"),
]


def serve_once(model, args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "OVLLM_INFERENCE"))}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ovllm_cli", "serve", str(model), "--host", "127.0.0.1",
         "--port", "0", *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def assert_one_error_line(result: subprocess.CompletedProcess, needles: list[str]) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "serving" not in result.stderr and "pipeline ready" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if needles[0] in line]
    assert len(lines) == 1, result.stderr
    missing = [needle for needle in needles if needle not in lines[0]]
    assert not missing, f"{missing} not in {lines[0]!r}"


@pytest.mark.parametrize(("env", "args", "needles"), CONFIG_ERRORS)
def test_bad_setting_stops_startup(tiny_ov_fp32, env, args, needles):
    result, elapsed = serve_once(tiny_ov_fp32, args, env)
    assert_one_error_line(result, needles)
    assert elapsed < 20, f"took {elapsed:.1f}s to refuse a bad setting"


def test_model_dir_without_ir_stops_startup(tiny_ov_fp32, tmp_path):
    model = tmp_path / "not-a-model"
    model.mkdir()
    (model / "config.json").write_text((tiny_ov_fp32 / "config.json").read_text())
    result, elapsed = serve_once(model, [], {})
    assert_one_error_line(result, [str(model), "no weights", "openvino_model.xml"])
    assert elapsed < 20


def test_a_forked_child_of_the_server_cannot_stop_it(tiny_ov_fp32, start_server, tmp_path):
    """`import openvino` sends OpenVINO's telemetry event from a forked child and SIGTERMs the child
    after 3 s when the network hangs, as it does in a pod that reaches no DNS. The child inherited the
    server's signal wakeup fd, so its SIGTERM handler wrote 15 into the server's self-pipe and the
    server shut down at once, right after it began serving (found on the real node: a CrashLoopBackOff
    with exit code 0). Here a proxy that accepts and never answers makes the network hang for real."""
    import socket

    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(64)
    address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    # A fresh HOME (no consent file: OpenVINO's telemetry is on) and CI unset (it is off under CI=true).
    env = {"https_proxy": address, "HTTPS_PROXY": address, "http_proxy": address, "HTTP_PROXY": address,
           "no_proxy": "", "HOME": str(tmp_path), "CI": ""}
    try:
        server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not server.process.poll() and "shutting down" not in server.log():
            time.sleep(0.5)
        assert server.process.poll() is None and "shutting down" not in server.log(), server.log()[-3000:]
        reply = server.client().completions.create(model=MODEL, prompt="Hello", max_tokens=4,
                                                   extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 4
    finally:
        proxy.close()
