"""One log line per request at INFO: request id, endpoint, status, tokens, finish reason, TTFT and
latency; the prompt only with --log-prompts; none with --disable-log-requests; JSON lines with
--log-format json. Real servers, read through their logs."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

MODEL = "tiny"
SECRET_PROMPT = "the launch code is swordfish"
PLAIN_LINE = re.compile(
    r"INFO ovllm\.requests: request (?P<id>\S+): POST (?P<path>\S+) (?P<status>\d+) prompt_tokens=(?P<prompt>\d+) "
    r"output_tokens=(?P<output>\d+) finish_reason=(?P<reason>\S+) ttft=(?P<ttft>[\d.]+)s latency=(?P<latency>[\d.]+)s$")


def request_lines(log: str) -> list[re.Match]:
    return [m for m in map(PLAIN_LINE.search, log.splitlines()) if m]


def wait_for(server, predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate(server.log()):
        assert time.monotonic() < deadline, f"{what}; log:\n{server.log()[-3000:]}"
        time.sleep(0.1)


def test_one_plain_line_per_request_without_the_prompt(tiny_server):
    client = tiny_server.client()
    before = len(request_lines(tiny_server.log()))
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": SECRET_PROMPT}],
                                          max_tokens=5, extra_body={"ignore_eos": True})
    stream = client.completions.create(model=MODEL, prompt=SECRET_PROMPT, max_tokens=4, n=2, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    refused = httpx.post(tiny_server.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x",
                                                                         "max_tokens": -1})
    assert refused.status_code == 400
    wait_for(tiny_server, lambda log: len(request_lines(log)) >= before + 2, "two request lines")
    lines = request_lines(tiny_server.log())[before:]
    assert len(lines) == 2, [m.group(0) for m in lines]  # the refused request is not a generation request
    first, second = lines
    assert first["id"] == chat.id and first["path"] == "/v1/chat/completions" and first["status"] == "200"
    assert int(first["prompt"]) == chat.usage.prompt_tokens and int(first["output"]) == 5
    assert first["reason"] == "length"
    assert float(first["ttft"]) <= float(first["latency"])
    assert second["id"] == chunks[0].id and second["path"] == "/v1/completions"
    assert int(second["output"]) == chunks[-1].usage.completion_tokens == 8  # both choices
    assert SECRET_PROMPT not in tiny_server.log()


def test_json_lines_with_the_prompt_when_asked(start_server, tiny_ov_fp32):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--log-format", "json", "--log-prompts",
                          "--max-log-len", "10")
    client = server.client()
    response = client.completions.create(model=MODEL, prompt=SECRET_PROMPT, max_tokens=3,
                                         extra_body={"ignore_eos": True})
    # a client that goes away mid-stream: its line says so (499, abort)
    with httpx.stream("POST", server.base_url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "go on", "max_tokens": 2000, "stream": True,
                            "ignore_eos": True}) as streamed:
        for _ in zip(range(3), streamed.iter_lines(), strict=False):
            pass

    def entries(log: str) -> list[dict]:
        return [json.loads(line) for line in log.splitlines() if line.strip()]

    wait_for(server, lambda log: len([e for e in entries(log) if e["logger"] == "ovllm.requests"]) >= 2,
             "two JSON request lines")
    everything = entries(server.log())  # every line is JSON, the engine process's too
    assert {"timestamp", "severity", "logger", "message"} <= set(everything[0])
    assert any(e["logger"] == "ovllm.engine" for e in everything)
    done, aborted = [e for e in everything if e["logger"] == "ovllm.requests"]
    assert done["severity"] == "info"
    assert done["request_id"] == response.id and done["endpoint"] == "/v1/completions" and done["status"] == 200
    assert done["prompt_tokens"] == response.usage.prompt_tokens and done["output_tokens"] == 3
    assert done["finish_reason"] == "length" and 0 < done["ttft_s"] <= done["latency_s"]
    assert done["prompt"] == SECRET_PROMPT[:10]
    assert aborted["status"] == 499 and aborted["finish_reason"] == "abort"
    assert 0 < aborted["output_tokens"] < 2000


def test_disable_log_requests(start_server, tiny_ov_fp32):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--disable-log-requests")
    server.client().completions.create(model=MODEL, prompt="hello", max_tokens=2)
    time.sleep(0.5)
    assert "ovllm.requests" not in server.log()
