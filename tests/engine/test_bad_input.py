"""Bad requests get an OpenAI-style error with the right status, and hurt nothing else.

Every refusal is a JSON body `{"error": {"message", "type", "param", "code"}}`; `param` names the
offending field where there is one. A streaming request already in flight while the bad ones
arrive finishes with every one of its tokens. `--max-model-len` bounds prompt plus output, and
`--api-key` guards /v1/* but not /health or /metrics.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

BIG_BODY = json.dumps({"model": "tiny", "prompt": "a" * (8 * 1024 * 1024)}).encode()
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

TINY_VOCAB = 151936  # the tiny test model's vocabulary (Qwen2's): ids 0 to 151935


GOOD = b'{"model": "tiny", "prompt": "hi", "max_tokens": 2}'


def encoded(body: bytes, encoding: str) -> dict:
    """httpx kwargs for a body sent with this Content-Encoding."""
    return {"content": body, "headers": {"Content-Encoding": encoding, "Content-Type": "application/json"}}


def raw(text: str) -> dict:
    """httpx kwargs for a body sent exactly as written (not made by a JSON encoder)."""
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


# (id, method, path, request kwargs for httpx, status, param, code); param/code None: not checked
BAD_REQUESTS = [
    ("malformed-json", "POST", COMPLETIONS, {"content": b'{"model": "tiny", "prompt": "hi",'}, 400, None, None),
    ("body-not-object", "POST", COMPLETIONS, {"json": ["hi"]}, 400, None, None),
    ("max-tokens-string", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "hi", "max_tokens": "ten"}},
     400, "max_tokens", None),
    ("prompt-number", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": 3.5}}, 400, "prompt", None),
    ("unknown-model", "POST", COMPLETIONS, {"json": {"model": "nope", "prompt": "hi"}}, 404, "model",
     "model_not_found"),
    ("unknown-model-chat", "POST", CHAT, {"json": {"model": "gpt-4o", "messages": USER}}, 404, "model",
     "model_not_found"),
    ("empty-messages", "POST", CHAT, {"json": {"model": "tiny", "messages": []}}, 400, "messages", None),
    ("max-tokens-beyond-model-len", "POST", COMPLETIONS,
     {"json": {"model": "tiny", "prompt": "hi", "max_tokens": 5000}}, 400, "max_tokens", "context_length_exceeded"),
    ("max-tokens-zero", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "hi", "max_tokens": 0}},
     400, "max_tokens", None),
    ("negative-temperature", "POST", COMPLETIONS,
     {"json": {"model": "tiny", "prompt": "hi", "temperature": -0.5}}, 400, "temperature", None),
    ("negative-temperature-chat", "POST", CHAT,
     {"json": {"model": "tiny", "messages": USER, "temperature": -1}}, 400, "temperature", None),
    ("tool-without-name", "POST", CHAT, {"json": {"model": "tiny", "messages": USER, "tools": [
        {"type": "function", "function": {"parameters": {"type": "object"}}}]}}, 400, "tools.0.function.name", None),
    ("schema-that-cannot-compile", "POST", CHAT, {"json": {"model": "tiny", "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}}, 400,
     "response_format.json_schema.schema", None),
    ("unknown-field", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "hi", "frobnicate": 1}},
     400, "frobnicate", None),
    ("body-8mb", "POST", COMPLETIONS, {"content": BIG_BODY, "headers": {"Content-Type": "application/json"}},
     413, None, None),
    ("unknown-route", "POST", "/v1/embeddings", {"json": {"model": "tiny", "input": "hi"}}, 404, None, None),
    ("unknown-route-get", "GET", "/nowhere", {}, 404, None, None),
    ("get-completions", "GET", COMPLETIONS, {}, 405, None, None),
    # what a parser chokes on: each must be a 400, never a 500
    ("lone-surrogate-prompt", "POST", COMPLETIONS, raw('{"model": "tiny", "prompt": "a\\ud800b"}'), 400, "prompt",
     None),
    ("lone-surrogate-chat", "POST", CHAT,
     raw('{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}'), 400, "messages.0.content",
     None),
    ("nested-5000-deep", "POST", COMPLETIONS, raw('{"model": "tiny", "prompt": ' + "[" * 5000 + "]" * 5000 + "}"),
     400, None, None),
    ("max-tokens-5000-digits", "POST", COMPLETIONS, raw('{"model": "tiny", "prompt": "hi", "max_tokens": '
                                                         + "9" * 5000 + "}"), 400, None, None),
    ("seed-5000-digits", "POST", CHAT,
     raw('{"model": "tiny", "messages": ' + json.dumps(USER) + ', "seed": ' + "1" * 5000 + "}"), 400, None, None),
    ("temperature-nan", "POST", COMPLETIONS, raw('{"model": "tiny", "prompt": "hi", "temperature": NaN}'),
     400, None, None),
    ("repetition-penalty-infinity", "POST", COMPLETIONS,
     raw('{"model": "tiny", "prompt": "hi", "repetition_penalty": Infinity}'), 400, None, None),
    ("top-p-1e999", "POST", CHAT, raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
                                      '"top_p": 1e999}'), 400, None, None),
    ("gzip-that-is-not", "POST", COMPLETIONS, encoded(b'{"model": "tiny", "prompt": "hi"}', "gzip"), 400, None, None),
    ("deflate-truncated", "POST", COMPLETIONS, encoded(zlib.compress(GOOD)[2:-8], "deflate"), 400, None, None),
    ("gzip-truncated", "POST", CHAT, encoded(gzip.compress(GOOD)[:-12], "gzip"), 400, None, None),
    ("gzip-bomb", "POST", COMPLETIONS, encoded(gzip.compress(b" " * (9 * 1024 * 1024)), "gzip"), 413, None, None),
    ("brotli", "POST", COMPLETIONS, encoded(GOOD, "br"), 415, None, None),
    ("two-encodings", "POST", COMPLETIONS, encoded(gzip.compress(gzip.compress(GOOD)), "gzip, gzip"), 415, None,
     None),
    # out of range for the model or the engine
    ("token-id-1e9", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": [1, 1000000000]}}, 400, "prompt",
     None),
    ("token-id-vocab-size", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": [TINY_VOCAB]}}, 400, "prompt",
     None),
    ("token-id-negative", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": [5, -1]}}, 400, "prompt", None),
    ("token-ids-batch-oov", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": [[1, 2], [3, TINY_VOCAB + 7]]}},
     400, "prompt", None),
    ("top-k-2-40", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "hi", "top_k": 2**40}}, 400, "top_k",
     None),
    ("seed-2-64", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "hi", "seed": 2**64}}, 400, "seed", None),
    ("max-tokens-2-31", "POST", CHAT, {"json": {"model": "tiny", "messages": USER, "max_tokens": 2**31}}, 400,
     "max_tokens", None),
    ("prompts-300", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": ["a"] * 300, "max_tokens": 1}}, 400,
     "prompt", None),
    ("prompts-64-n-8", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": ["a"] * 64, "n": 8,
                                                      "max_tokens": 1}}, 400, "prompt", None),
    ("n-300", "POST", CHAT, {"json": {"model": "tiny", "messages": USER, "n": 300, "max_tokens": 1}}, 400, "n", None),
]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None,
                        code: str | None = None) -> dict:
    """The response is `status` with an OpenAI-style error body; returns its `error` object."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert error["code"] is None or isinstance(error["code"], str), error  # as in OpenAI's errors
    return error


def send(base_url: str, case) -> None:
    _, method, path, kwargs, status, param, code = case
    response = httpx.request(method, base_url + path, timeout=30, **kwargs)
    assert_openai_error(response, status, param, code)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_openai_error(tiny_server, case):
    send(tiny_server.base_url, case)


def test_bad_requests_leave_a_stream_in_flight_unharmed(tiny_server):
    """All the bad requests arrive while a long greedy stream runs; it still delivers every token."""
    client = tiny_server.client()
    params = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 300, "temperature": 0,
              "extra_body": {"ignore_eos": True}}
    first_chunk, done = threading.Event(), threading.Event()
    result: dict = {"text": "", "finish": None, "usage": None, "error": None}

    def read_stream() -> None:
        try:
            stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **params)
            for chunk in stream:
                if chunk.choices:
                    result["text"] += chunk.choices[0].text
                    result["finish"] = chunk.choices[0].finish_reason or result["finish"]
                if chunk.usage:
                    result["usage"] = chunk.usage
                first_chunk.set()
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc
        finally:
            first_chunk.set()
            done.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        assert first_chunk.wait(60), "the stream sent nothing"
        answered_while_streaming = 0
        for case in BAD_REQUESTS:
            send(tiny_server.base_url, case)
            answered_while_streaming += not done.is_set()
    finally:
        reader.join(120)
    assert answered_while_streaming > 0, "the stream ended before any bad request was answered"
    assert result["error"] is None, repr(result["error"])
    assert result["finish"] == "length"
    assert result["usage"].completion_tokens == 300
    # the same greedy request alone gives the same text: the stream lost nothing
    reference = client.completions.create(**params)
    assert reference.usage.completion_tokens == 300
    assert result["text"] == reference.choices[0].text


def test_unknown_field_is_named_in_the_message(tiny_server):
    body = {"model": "tiny", "messages": USER, "frobnicate": True}
    error = assert_openai_error(httpx.post(tiny_server.base_url + CHAT, json=body, timeout=30), 400, "frobnicate")
    assert "frobnicate" in error["message"]


def test_openai_client_sees_typed_errors(tiny_server):
    client = tiny_server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="hi", max_tokens="ten")  # type: ignore[arg-type]
    assert caught.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=USER, temperature=-1)
    assert caught.value.param == "temperature"
    # and the server still serves
    ok = client.completions.create(model="tiny", prompt="hi", max_tokens=3, extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 3


def test_max_model_len_bounds_prompt_and_output(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--max-model-len", "64", "--served-model-name", "tiny")
    url = server.base_url
    long_text = "hello world " * 60
    response = httpx.post(url + COMPLETIONS, json={"model": "tiny", "prompt": long_text, "max_tokens": 1}, timeout=30)
    error = assert_openai_error(response, 400, "prompt", "context_length_exceeded")
    assert "64" in error["message"]
    response = httpx.post(url + CHAT, json={"model": "tiny", "max_tokens": 1,
                                            "messages": [{"role": "user", "content": long_text}]}, timeout=30)
    assert_openai_error(response, 400, "messages", "context_length_exceeded")
    response = httpx.post(url + COMPLETIONS, json={"model": "tiny", "prompt": list(range(1, 65)), "max_tokens": 1},
                          timeout=30)
    assert_openai_error(response, 400, "prompt", "context_length_exceeded")
    response = httpx.post(url + COMPLETIONS, json={"model": "tiny", "prompt": "hi", "max_tokens": 64}, timeout=30)
    assert_openai_error(response, 400, "max_tokens", "context_length_exceeded")
    # what fits is served: 60 prompt tokens plus 4 new ones is exactly 64
    ok = server.client().completions.create(model="tiny", prompt=list(range(1, 61)), max_tokens=4,
                                            extra_body={"ignore_eos": True})
    assert ok.usage.prompt_tokens == 60 and ok.usage.completion_tokens == 4
    assert ok.choices[0].finish_reason == "length"


def test_api_key_guards_v1_only(tiny_ov_fp32, start_server):
    server = start_server(tiny_ov_fp32, "--api-key", "secret", "--served-model-name", "tiny")
    url = server.base_url
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"},
                    {"Authorization": "Bearer secret2"}):
        assert_openai_error(httpx.get(url + "/v1/models", headers=headers, timeout=30), 401)
        error = assert_openai_error(httpx.post(url + COMPLETIONS, json=body, headers=headers, timeout=30), 401)
        assert error["type"] == "authentication_error"
    good = {"Authorization": "Bearer secret"}
    models = httpx.get(url + "/v1/models", headers=good, timeout=30)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny"
    completion = httpx.post(url + COMPLETIONS, json=body, headers=good, timeout=30)
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["prompt_tokens"] > 0
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    metrics = httpx.get(url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "vllm:num_requests_running" in metrics.text
    # the official client: a wrong key is AuthenticationError, the right one works
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    assert [m.id for m in server.client(api_key="secret").models.list()] == ["tiny"]
    assert server.client(api_key="secret").completions.create(**body).usage.completion_tokens >= 1
