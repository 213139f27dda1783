"""The OpenAI API surface of `ovllm serve`, through the official openai client: streaming, usage,
finish reasons, n, seed, stop strings, logprobs, /v1/models, /health and /version."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

# The tiny random model emits many tokens that hold part of a UTF-8 character: prompts in scripts
# with multi-byte characters make that happen within a few tokens.
PROMPTS = ["Hello world", "東京の天気は", "Привет, как дела?", "🙂🙃 emoji"]


def stream_text(client, **kwargs):
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    return text, finish, usage, chunks


@pytest.mark.parametrize("prompt", PROMPTS)
def test_stream_concatenation_equals_full_text(tiny_server, prompt):
    client = tiny_server.client()
    args = dict(model="tiny", prompt=prompt, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**args)
    text, finish, usage, chunks = stream_text(client, **args)
    assert text == full.choices[0].text
    assert finish == ["length"]
    assert len(usage) == 1 and usage[0].completion_tokens == 48 == full.usage.completion_tokens
    assert usage[0].prompt_tokens == full.usage.prompt_tokens


def test_no_stream_chunk_splits_a_character(tiny_server):
    """Every streamed piece is valid text on its own: no chunk begins with a dangling UTF-8 remainder."""
    client = tiny_server.client()
    raw_bytes_split = 0
    for prompt in PROMPTS:
        _, _, _, chunks = stream_text(client, model="tiny", prompt=prompt, max_tokens=48, temperature=0,
                                      extra_body={"ignore_eos": True})
        pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
        for piece in pieces:
            piece.encode("utf-8")  # a lone surrogate would raise
        # if the server split characters, pieces would carry replacement characters the full text lacks
        full = client.completions.create(model="tiny", prompt=prompt, max_tokens=48, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        raw_bytes_split += sum(p.count("\ufffd") for p in pieces) - full.count("\ufffd")
    assert raw_bytes_split == 0


def test_chat_stream_roles_and_done(tiny_server):
    with httpx.stream("POST", tiny_server.base_url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True,
            "temperature": 0, "ignore_eos": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    import json

    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len({e["id"] for e in events}) == 1


def test_n_choices_and_seed(tiny_server):
    client = tiny_server.client()
    args = dict(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=1.0, n=3, seed=7,
                extra_body={"ignore_eos": True})
    first = client.completions.create(**args)
    again = client.completions.create(**args)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices], "the same seed must give the same choices"
    assert len(set(texts)) == 3, "n choices from one seed must differ"
    assert first.usage.completion_tokens == 3 * 16
    other = client.completions.create(**{**args, "seed": 8})
    assert [c.text for c in other.choices] != texts


def test_n_choices_stream(tiny_server):
    client = tiny_server.client()
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2,
                                            max_tokens=10, temperature=0.9, seed=1, stream=True,
                                            extra_body={"ignore_eos": True})
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in stream
                if c.choices and c.choices[0].finish_reason}
    assert finished == {0: "length", 1: "length"}


def test_stop_string_ends_generation(tiny_server):
    client = tiny_server.client()
    base = client.completions.create(model="tiny", prompt="Hello world", max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[12:15]  # a string the greedy output is known to contain
    assert stop and stop in base
    expected = base[: base.index(stop)]
    response = client.completions.create(model="tiny", prompt="Hello world", max_tokens=40, temperature=0,
                                         stop=[stop], extra_body={"ignore_eos": True})
    assert response.choices[0].text == expected
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 40
    text, finish, _, _ = stream_text(client, model="tiny", prompt="Hello world", max_tokens=40, temperature=0,
                                     stop=[stop], extra_body={"ignore_eos": True})
    assert text == expected
    assert finish == ["stop"]


def test_max_completion_tokens_and_logprobs(tiny_server):
    client = tiny_server.client()
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_completion_tokens=5, temperature=0, logprobs=True,
                                              extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 5
    content = response.choices[0].logprobs.content
    assert len(content) == 5
    assert all(entry.logprob <= 0.0 for entry in content)
    completion = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, logprobs=0,
                                           extra_body={"ignore_eos": True})
    assert len(completion.choices[0].logprobs.token_logprobs) == 4


def test_penalties_are_honoured(tiny_server):
    """Greedy output of "Hello world" first repeats a token at position 32: penalties leave the tokens
    before it alone and change what follows."""
    client = tiny_server.client()

    def tokens(**fields):
        response = client.completions.create(model="tiny", prompt="Hello world", max_tokens=64, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True, **fields})
        return response.choices[0].token_ids

    plain = tokens()
    first_repeat = next(i for i, t in enumerate(plain) if t in plain[:i])
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        penalised = tokens(**penalty)
        assert penalised[:first_repeat] == plain[:first_repeat], penalty
        assert penalised != plain, f"{penalty} changed nothing"


def test_sampling_fields(tiny_server):
    client = tiny_server.client()
    args = dict(model="tiny", prompt="Hello world", max_tokens=16, temperature=0.9, seed=3)
    top1 = client.completions.create(**args, extra_body={"top_k": 1, "ignore_eos": True}).choices[0].text
    greedy = client.completions.create(**{**args, "temperature": 0}, extra_body={"ignore_eos": True}).choices[0].text
    assert top1 == greedy, "top_k=1 sampling must equal greedy decoding"
    wide = client.completions.create(**args, top_p=1.0, extra_body={"top_k": 0, "ignore_eos": True})
    assert wide.choices[0].text != greedy


def test_models_health_version(tiny_server):
    client = tiny_server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(tiny_server.base_url + "/health").json()["status"] == "ok"
    from ovllm_engine import __version__

    assert httpx.get(tiny_server.base_url + "/version").json() == {"version": __version__}


def test_batch_of_prompts_times_n(tiny_server):
    """A list of prompts with n choices each: choice index = prompt index * n + j, usage over all."""
    client = tiny_server.client()
    prompts = ["Hello world", "東京の天気は"]
    response = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True}) for p in prompts]
    # greedy: both choices of a prompt equal that prompt's single completion
    assert [c.text for c in response.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert response.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert response.usage.completion_tokens == 4 * 6


def test_chat_content_parts_and_developer_role(tiny_server):
    """Text content parts equal plain content, and `developer` is the system turn of the template."""
    client = tiny_server.client()

    def ask(messages):
        return client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                              extra_body={"ignore_eos": True, "return_token_ids": True})

    plain = ask([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])
    parts = ask([{"role": "developer", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}])
    assert parts.choices[0].token_ids == plain.choices[0].token_ids
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
    image = httpx.post(tiny_server.base_url + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert image.status_code == 400 and image.json()["error"]["param"].startswith("messages")


def test_streamed_logprobs_cover_every_token(tiny_server):
    """Tokens held back (half a character) still get their logprobs, with the text they complete."""
    client = tiny_server.client()
    args = dict(model="tiny", messages=[{"role": "user", "content": "東京の天気は"}], max_tokens=40, temperature=0,
                logprobs=True, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**args)
    streamed = [entry.logprob for chunk in client.chat.completions.create(stream=True, **args)
                if chunk.choices and chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert len(streamed) == 40
    assert streamed == pytest.approx([entry.logprob for entry in full.choices[0].logprobs.content], abs=1e-4)
