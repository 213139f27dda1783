"""Property-based fuzzing of the running server (hypothesis): whatever the body, the answer is a
well-formed success or an OpenAI-style 4xx, never a 5xx, a hang or a dropped connection, and the
server serves a plain request afterwards.

Bodies are drawn from the request models' own fields with values of every JSON type (huge and
negative integers, non-finite numbers, lone surrogates, deep nesting, wrong types) and from raw
bytes. Valid generation requests are kept short (max_tokens and n drawn small when they are valid)
so that the examples go to the parsers, not to generating text. OVLLM_FUZZ_EXAMPLES sets the number
of examples per body test (default 500; the raw-bytes test runs three times as many, they are cheap):
about three minutes in all on 2 cores.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import CHAT, COMPLETIONS

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("OVLLM_FUZZ_EXAMPLES", "500"))
# A fresh draw each run (derandomize off): over many CI runs the examples cover more ground; a
# failure prints the falsifying body, which goes into test_bad_input.py's BAD_REQUESTS.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RAW_FUZZ = settings(FUZZ, max_examples=3 * EXAMPLES)

SAMPLING = ["max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "n", "stream",
            "stream_options", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
            "ignore_eos", "min_tokens", "user", "logit_bias", "best_of", "stop_token_ids", "skip_special_tokens",
            "response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar"]
CHAT_FIELDS = ["max_completion_tokens", "top_logprobs", "tools", "tool_choice", "add_generation_prompt",
               "chat_template_kwargs", "parallel_tool_calls"]

texts = st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfffb", "\x00", "🙂" * 3, " " * 50]))
integers = st.one_of(st.integers(-3, 40), st.sampled_from([-(2**63) - 1, 2**31, 2**63, 2**64, 10**40]))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
# valid-looking values for the costly fields, so a valid request stays cheap to serve
small = {"max_tokens": st.one_of(st.integers(-2, 4), values),
         "max_completion_tokens": st.one_of(st.integers(-2, 4), values),
         "n": st.one_of(st.integers(-1, 3), values), "best_of": st.one_of(st.integers(-1, 3), values),
         "min_tokens": st.one_of(st.integers(-1, 4), values)}
token_ids = st.lists(st.one_of(st.integers(0, 151935), integers), min_size=0, max_size=6)
prompts = st.one_of(texts, token_ids, st.lists(texts, max_size=3), st.lists(token_ids, max_size=3), values)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bad"]),
                                    "content": st.one_of(texts, values)}), max_size=3),
    values)


def body_of(fields: list[str], first: dict) -> st.SearchStrategy:
    """Dicts holding `first` and any of `fields` (with any value) plus an occasional unknown key."""
    optional = {name: small.get(name, values) for name in fields}
    return st.fixed_dictionaries(first, optional=optional).flatmap(
        lambda known: st.dictionaries(texts, values, max_size=1).map(lambda extra: {**extra, **known}))


# max_tokens always: a request without it may generate up to the model's length
completion_bodies = body_of([f for f in SAMPLING + ["echo", "suffix"] if f != "max_tokens"],
                            {"model": st.sampled_from(["tiny", "nope"]), "prompt": prompts,
                             "max_tokens": small["max_tokens"]})
chat_bodies = body_of([f for f in SAMPLING + CHAT_FIELDS if f != "max_tokens"],
                      {"model": st.just("tiny"), "messages": messages, "max_tokens": small["max_tokens"]})


def encode(body: dict) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity allowed, lone surrogates escaped."""
    return json.dumps(body, allow_nan=True).encode()


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:1000])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"], error
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", response.text[-500:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), event
    else:
        assert response.json()["choices"], response.text[:1000]


def post(client: httpx.Client, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    return client.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})


@pytest.fixture(scope="module")
def http(tiny_server):
    with httpx.Client(base_url=tiny_server.base_url, timeout=60) as client:
        yield client
    # after all the examples, the server still serves
    answer = httpx.post(tiny_server.base_url + COMPLETIONS, json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                        timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1


@FUZZ
@given(body=completion_bodies)
def test_completions_bodies(http, body):
    check_answer(post(http, COMPLETIONS, encode(body)))


@FUZZ
@given(body=chat_bodies)
def test_chat_bodies(http, body):
    check_answer(post(http, CHAT, encode(body)))


@RAW_FUZZ
@given(raw=st.one_of(st.binary(max_size=200), values.map(encode)),
       path=st.sampled_from([COMPLETIONS, CHAT]),
       encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "x-nonsense"]))
def test_raw_bodies_and_encodings(http, raw, path, encoding):
    check_answer(post(http, path, raw, {"Content-Encoding": encoding} if encoding else None))
