"""Hostile and careless clients at the HTTP level, against a real `ovllm serve`:

- Malformed HTTP, an over-long or non-UTF-8 `Authorization` header: an OpenAI-style 4xx that quotes
  nothing of the request; the API key and the hub token appear in no answer and no log line.
- Client errors are logged one line each, without a traceback, at most a burst per interval.
- Slow clients: a request head that never completes is closed at --header-timeout, a body that
  never completes gets 408 at --body-timeout.
- A flood: requests past --max-num-seqs + --max-queued-seqs sequences get 429 with Retry-After,
  counted in ovllm:requests_rejected_total, and the server serves the rest.
- The vocabulary's last id is served (the check refuses only ids past it).
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
from test_bad_input import CHAT, COMPLETIONS, TINY_VOCAB, USER, assert_openai_error
from test_lifecycle import metric

pytestmark = pytest.mark.e2e

MODEL = "tiny"
API_KEY = "sk-ovllm-test-7d41c9e2a0b84f6f"
HUB_TOKEN = "hf_testtoken5e1a7b9c3d2f4e6a"


def exchange(base_url: str, data: bytes, rest: bytes = b"", pause: float = 0.0, timeout: float = 20.0
             ) -> tuple[bytes, float]:
    """Raw bytes to the server (more after a pause); what it answered before closing, and when it closed."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        if pause:
            time.sleep(pause)
            sock.sendall(rest)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply, time.monotonic() - started


def status_and_json(reply: bytes) -> tuple[int, dict]:
    import json

    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_secrets_never_reach_answers_or_logs(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--api-key", API_KEY,
                          env={"HF_TOKEN": HUB_TOKEN})
    url = server.base_url
    replies = []
    # an Authorization header that begins with the real key, far too long: aiohttp's parser refuses it
    long_header = f"Authorization: Bearer {API_KEY}{'x' * 20000}\r\n".encode()
    reply, _ = exchange(url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + long_header + b"\r\n")
    status, body = status_and_json(reply)
    assert status == 400 and body["error"]["type"] == "invalid_request_error", reply[:400]
    replies.append(reply)
    # header bytes that are not UTF-8: a wrong key like any other
    reply, _ = exchange(url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Authorization: Bearer \xff\xfe" + API_KEY.encode() + b"\r\n\r\n")
    status, body = status_and_json(reply)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", reply[:400]
    replies.append(reply)
    # not HTTP at all (a TLS hello), and a request line with a control character
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40 + b"\r\n\r\n",
                    b"GET /v1/\x01models HTTP/1.1\r\nHost: x\r\n\r\n"):
        reply, _ = exchange(url, garbage)
        status, body = status_and_json(reply)
        assert status == 400 and body["error"]["message"], reply[:400]
        replies.append(reply)
    # a flood of bad requests with the right key
    good = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(40):
        answer = httpx.post(url + COMPLETIONS, content=b'{"model": "tiny", "prompt": ', headers=good, timeout=30)
        assert_openai_error(answer, 400)
        replies.append(answer.content)
    # the server still serves, and says what it was asked
    ok = server.client(api_key=API_KEY).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert ok.usage.completion_tokens >= 1
    for reply in replies:
        assert API_KEY.encode() not in reply and HUB_TOKEN.encode() not in reply
        assert b"xxxxxxxxxx" not in reply  # nothing of the header is quoted back
    log = server.log()
    assert API_KEY not in log and HUB_TOKEN not in log
    assert "Traceback" not in log, log[-3000:]
    # client errors: one INFO/WARNING line each, at most a burst (5) per kind per 10 s
    refusals = [line for line in log.splitlines() if "400 POST '/v1/completions'" in line]
    assert 1 <= len(refusals) <= 5, refusals
    assert all(" ERROR " not in line for line in refusals)
    bad_http = [line for line in log.splitlines() if "ovllm.http" in line]
    assert bad_http and all(" ERROR " not in line for line in bad_http), bad_http


def test_slow_clients_are_cut_off(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--header-timeout", "1",
                          "--body-timeout", "1")
    url = server.base_url
    # a head that never ends (slowloris): the connection closes at the header timeout, unanswered
    reply, took = exchange(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    assert reply == b"" and 0.9 < took < 10, (reply, took)
    # a connection that sends nothing at all
    reply, took = exchange(url, b"")
    assert reply == b"" and 0.9 < took < 10, (reply, took)
    # a body that never completes: 408, then the connection closes
    reply, took = exchange(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 500\r\n\r\n{\"model\": \"tiny\", ")
    status, body = status_and_json(reply)
    assert status == 408 and "did not arrive within 1s" in body["error"]["message"], reply
    assert took < 10
    # a client sending a whole request slowly but within the limits is served
    request = b'{"model": "tiny", "prompt": "hi", "max_tokens": 2}'
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(request))
    reply, _ = exchange(url, head + request[:10], request[10:], pause=0.3)
    status, body = status_and_json(reply)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1, reply


def test_a_flood_queues_at_the_edge_with_429(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL, "--max-num-seqs", "2",
                          "--max-queued-seqs", "2")
    client = server.client()
    started, stop = threading.Barrier(5), threading.Event()
    errors: list = []

    def long_stream() -> None:
        try:
            stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3000, stream=True,
                                               extra_body={"ignore_eos": True})
            started.wait(60)
            for _ in stream:
                if stop.is_set():
                    stream.close()
                    return
        except Exception as exc:  # reported below
            errors.append(exc)

    streams = [threading.Thread(target=long_stream) for _ in range(4)]  # 2 running + 2 queued: the bound
    for thread in streams:
        thread.start()
    try:
        started.wait(60)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        assert caught.value.code == "queue_full"
        assert caught.value.response.headers["retry-after"] == "1"
        assert metric(server.base_url, "ovllm:requests_rejected_total", reason="queue_full") == 1
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
    finally:
        stop.set()
        for thread in streams:
            thread.join(60)
    assert not errors, errors
    # once the flood is gone, requests are taken again
    deadline = time.monotonic() + 30
    while metric(server.base_url, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the cancelled streams still run"
        time.sleep(0.1)
    answer = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert answer.usage.completion_tokens >= 1


def test_the_vocabularys_last_id_is_served(tiny_server):
    answer = tiny_server.client().completions.create(model=MODEL, prompt=[TINY_VOCAB - 1, 0], max_tokens=1)
    assert answer.usage.prompt_tokens == 2
    assert_openai_error(httpx.post(tiny_server.base_url + COMPLETIONS, json={"model": MODEL, "prompt": [TINY_VOCAB]},
                                   timeout=30), 400, "prompt")


def test_a_chat_body_of_megabytes_is_refused_for_its_length(tiny_server):
    """Tokenized away from the event loop (a helper process), then refused: a 400, not a 500."""
    messages = [{"role": "user", "content": "word " * 400_000}]
    answer = httpx.post(tiny_server.base_url + CHAT, json={"model": MODEL, "messages": messages}, timeout=120)
    assert_openai_error(answer, 400, "messages", "context_length_exceeded")


def test_a_body_that_is_not_its_encoding_leaves_the_connection_usable(tiny_server):
    """The body is read as bytes first, then decoded: a bad one is a 400, and a client that keeps its
    connection alive sends its next request on it without a reset."""
    with httpx.Client(base_url=tiny_server.base_url, timeout=30) as client:
        for _ in range(3):
            bad = client.post(COMPLETIONS, content=b"not gzip", headers={"Content-Encoding": "gzip",
                                                                          "Content-Type": "application/json"})
            assert_openai_error(bad, 400)
            good = client.post(COMPLETIONS, json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
            assert good.status_code == 200, good.text


def test_clients_that_leave_midway_are_no_error(tiny_ov_fp32, start_server):
    """A client gone mid-body or mid-stream is an everyday event: no ERROR line, no traceback, and
    its sequence leaves the engine."""
    server = start_server(tiny_ov_fp32, "--served-model-name", MODEL)
    url = server.base_url
    host, port = url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:  # half a body, then gone
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"model\": \"tiny\", \"prompt\": \"hi")
            time.sleep(0.2)
        with httpx.stream("POST", url + COMPLETIONS, timeout=30, json={  # a few chunks of a stream, then gone
                "model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "stream": True,
                "ignore_eos": True}) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number == 5:
                    break
    deadline = time.monotonic() + 30
    while metric(url, "vllm:num_requests_running") + metric(url, "vllm:num_requests_waiting") > 0:
        assert time.monotonic() < deadline, "sequences of clients that left still run"
        time.sleep(0.1)
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_compressed_bodies_are_served(tiny_server):
    """gzip, deflate as RFC 9110 says (zlib-wrapped) and bare deflate streams (as some clients send)."""
    import gzip
    import json
    import zlib

    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                           ("deflate", zlib.compress(body)[2:-4]), ("identity", body)):
        answer = httpx.post(tiny_server.base_url + COMPLETIONS, content=data, timeout=30,
                            headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        assert answer.status_code == 200, (encoding, answer.text)
        assert answer.json()["usage"]["prompt_tokens"] >= 1
