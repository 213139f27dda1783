"""Speculative decoding (`--speculative-config`, vLLM's JSON): prompt lookup and a draft model give
the same greedy output as plain decoding, token for token, on the real model (SmolLM2-135M-Instruct)
and the tiny test model, streamed, with stop strings, with structured output and under concurrency
(where new requests go to the plain pipeline); vLLM's spec_decode counters count what was accepted;
wrong settings stop the server at start with one line.

Every server here runs with exact arithmetic: f32, no dynamic quantization of activations, and an
f16 KV cache. With bf16 or int8 activations, checking K+1 tokens in one step rounds differently from
decoding one at a time; with a u8 KV cache (the CPU plugin's default) the guessed tokens' keys,
written into a block before they are checked, change how the block is quantized. Either way a
near-tie can flip (BENCHMARKS.md measures how often).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest

from conftest import Server
from ovllm_engine.config import EXACT_OV_CONFIG, KV_CACHE_PRECISION_NEW, ConfigError
from ovllm_engine.speculative import DEFAULT_DISABLE_BY_BATCH_SIZE, DRAFT_MODEL, NGRAM, parse

EXACT = json.dumps(EXACT_OV_CONFIG)
NAME = "smol"
TEXT = ("The city council met on Tuesday to discuss the new budget for the public library. Members agreed "
        "that the opening hours should be extended on weekends, and that more money should go to books for "
        "children and to new computers. The mayor said that the plan would be paid for by savings in other "
        "departments, and that no new taxes would be needed.")
COPY_PROMPTS = [f"Repeat the following text exactly as it is:\n\n{TEXT}",
                f"Rewrite this text, keeping every sentence:\n\n{TEXT}"]
CODE_PROMPT = ("Rename the variable total to amount in this code and show the code:\n\n"
               "def add(values):\n    total = 0\n    for value in values:\n        total += value\n    return total\n")


# --- the flag, read --------------------------------------------------------------------------------

def test_vllm_keys_are_read_with_ovllm_defaults():
    lookup = parse('{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}')
    assert (lookup.method, lookup.num_speculative_tokens, lookup.prompt_lookup_max) == (NGRAM, 5, 4)
    assert lookup.disable_by_batch_size == DEFAULT_DISABLE_BY_BATCH_SIZE
    assert parse('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1}').prompt_lookup_max == 3
    draft = parse('{"model": "org/draft", "num_speculative_tokens": 3, "quantization": "int4", "revision": "v1", '
                  '"disable_by_batch_size": 8}')  # vLLM infers the method from "model"
    assert (draft.method, draft.model, draft.quantization, draft.revision, draft.disable_by_batch_size) == (
        DRAFT_MODEL, "org/draft", "int4", "v1", 8)
    assert parse(None) is None and parse("  ") is None


@pytest.mark.parametrize(("raw", "says"), [
    ("{not json", "is not JSON"),
    ("[1]", "must be a JSON object"),
    ('{"method": "eagle3", "model": "x", "num_speculative_tokens": 2}', "method 'eagle3' is not supported"),
    ('{"method": "ngram"}', '"num_speculative_tokens" is required'),
    ('{"method": "ngram", "num_speculative_tokens": 0}', "num_speculative_tokens 0 must be a whole number from 1"),
    ('{"method": "ngram", "num_speculative_tokens": 17}', "from 1 to 16"),
    ('{"method": "ngram", "num_speculative_tokens": true}', "must be a whole number"),
    ('{"method": "ngram", "num_speculative_tokens": 4, "model": "x"}', "'model' not supported with method 'ngram'"),
    ('{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2}', "prompt_lookup_min 2 is not"),
    ('{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 9}', "prompt_lookup_max 9"),
    ('{"method": "draft_model", "num_speculative_tokens": 4}', 'needs "model"'),
    ('{"model": "x", "num_speculative_tokens": 4, "quantization": "awq"}', "quantization 'awq'"),
    ('{"model": "x", "num_speculative_tokens": 4, "draft_tensor_parallel_size": 2}',
     "'draft_tensor_parallel_size' not supported"),
    ('{"method": "ngram", "num_speculative_tokens": 4, "disable_by_batch_size": 0}', "disable_by_batch_size 0"),
])
def test_wrong_settings_are_refused_in_one_line(raw, says):
    with pytest.raises(ConfigError) as refused:
        parse(raw)
    message = str(refused.value)
    assert says in message and message.startswith("--speculative-config") and "\n" not in message


def test_the_speculation_counts_follow_the_tokens_each_step_delivers():
    from ovllm_engine.server.engine_process import SpeculationCounts

    counts = SpeculationCounts(4)
    for delivered in (1, 5, 3):  # none accepted, all four, the first two
        counts.step(delivered)
    taken = counts.take()
    assert (taken.drafts, taken.draft_tokens, taken.accepted, taken.accepted_per_position) == (3, 12, 6, (2, 2, 1, 1))
    assert counts.take() is None  # nothing since


# --- served for real ---------------------------------------------------------------------------------

def _serve(model, tmp_path_factory, *flags: str) -> Server:
    server = Server(model, "--served-model-name", NAME, "--ov-config", EXACT, "--max-num-batched-tokens", "64", *flags,
                    env={KV_CACHE_PRECISION_NEW: "f16"}, log_path=tmp_path_factory.mktemp("speculative") / "server.log")
    try:
        return server.wait_ready(timeout=300)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def smol_servers(smollm2_gguf, tmp_path_factory):
    """The real model three ways: plain, prompt lookup, and a draft model (the GGUF file itself, made
    IR once as the engine makes any GGUF draft)."""
    # from 2 requests in the engine new ones go to the plain pipeline (test_under_load_...)
    lookup = json.dumps({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
                         "disable_by_batch_size": 2})
    draft = json.dumps({"method": "draft_model", "model": str(smollm2_gguf), "num_speculative_tokens": 4})
    servers = {}
    try:
        for name, flags in (("plain", ()), ("ngram", ("--speculative-config", lookup)),
                            ("draft", ("--speculative-config", draft))):
            servers[name] = _serve(smollm2_gguf, tmp_path_factory, *flags)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def chat(server: Server, prompt: str, **kwargs):
    kwargs.setdefault("temperature", 0)
    return server.client().chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                                   **kwargs)


def streamed(server: Server, prompt: str, **kwargs) -> tuple[str, str]:
    text, finish = [], None
    for chunk in chat(server, prompt, stream=True, **kwargs):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def spec_counts(server: Server) -> dict[str, float]:
    import urllib.request

    page = urllib.request.urlopen(server.base_url + "/metrics", timeout=10).read().decode()
    return {name: float(value) for name, value in
            re.findall(r'^vllm:spec_decode_(num_\w+?_total)\{model_name="smol"\} (\S+)$', page, re.M)}


def token_ids(server: Server, prompt: str, max_tokens: int) -> tuple[list[int], str, str]:
    """The greedy answer's token ids, text and finish reason."""
    answer = chat(server, prompt, max_tokens=max_tokens, extra_body={"return_token_ids": True})
    return answer.choices[0].token_ids, answer.choices[0].message.content, answer.choices[0].finish_reason


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_output_is_the_same_token_for_token(smol_servers, method):
    plain, fast = smol_servers["plain"], smol_servers[method]
    before = spec_counts(fast)
    for prompt in [*COPY_PROMPTS, CODE_PROMPT, "Write a short story about a lighthouse."]:
        expected = token_ids(plain, prompt, 96)
        assert token_ids(fast, prompt, 96) == expected, prompt
        assert streamed(fast, prompt, max_tokens=96) == expected[1:]
    after = spec_counts(fast)
    # it did speculate, and guesses were accepted: the copy prompts repeat what the prompt holds
    drafts = after["num_drafts_total"] - before["num_drafts_total"]
    accepted = after["num_accepted_tokens_total"] - before["num_accepted_tokens_total"]
    assert drafts > 0 and accepted > 0
    assert after["num_draft_tokens_total"] - before["num_draft_tokens_total"] == 4 * drafts
    assert accepted <= 4 * drafts


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_stop_strings_end_both_at_the_same_place(smol_servers, method):
    plain, fast = smol_servers["plain"], smol_servers[method]
    whole = chat(plain, COPY_PROMPTS[0], max_tokens=80).choices[0].message.content
    stop = "budget"  # a word in the middle of the copied text: the engine runs past it within a step
    assert stop in whole and not whole.startswith(stop)
    expected = chat(plain, COPY_PROMPTS[0], max_tokens=80, stop=[stop])
    assert expected.choices[0].finish_reason == "stop"
    got = chat(fast, COPY_PROMPTS[0], max_tokens=80, stop=[stop])
    assert got.choices[0].message.content == expected.choices[0].message.content == whole[:whole.index(stop)]
    assert got.choices[0].finish_reason == "stop"
    assert streamed(fast, COPY_PROMPTS[0], max_tokens=80, stop=[stop]) == (whole[:whole.index(stop)], "stop")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_structured_output_is_the_same(smol_servers, method):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    prompt = 'Repeat this JSON as it is: {"name": "Ann Lee", "age": 31}'
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    expected = chat(smol_servers["plain"], prompt, max_tokens=40, response_format=response_format)
    got = chat(smol_servers[method], prompt, max_tokens=40, response_format=response_format)
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert json.loads(got.choices[0].message.content).keys() == {"name", "age"}


@pytest.mark.e2e
@pytest.mark.slow
def test_under_load_new_requests_go_to_the_plain_pipeline_and_agree(smol_servers):
    """disable_by_batch_size 2: the third and fourth of four concurrent requests go to the plain
    pipeline (and stay there until fewer than one request is in the engine); every answer still
    equals the plain server's."""
    plain, fast = smol_servers["plain"], smol_servers["ngram"]
    assert "pipelines (speculating, plain) ready" in fast.log()
    prompts = [*COPY_PROMPTS, CODE_PROMPT, "Write a short story about a lighthouse."]
    expected = [chat(plain, p, max_tokens=64).choices[0].message.content for p in prompts]

    async def together() -> list[str]:
        async with fast.async_client() as client:
            answers = await asyncio.gather(*(client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": p}], max_tokens=64, temperature=0)
                for p in prompts))
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(together()) == expected


@pytest.mark.e2e
@pytest.mark.slow
def test_requests_running_when_load_rises_move_to_the_plain_pipeline_and_agree(smol_servers):
    """Two requests speculate and have streamed tokens when two more arrive (disable_by_batch_size 2).
    The unconstrained one moves to the plain pipeline with what it has delivered as part of its
    prompt; the structured-output one (a grammar's state cannot move) finishes where it is. Every
    answer, streamed across the move, equals the plain server's."""
    plain, fast = smol_servers["plain"], smol_servers["ngram"]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    constrained = {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
                   "max_tokens": 40}
    first = [(COPY_PROMPTS[0], {"max_tokens": 96, "extra_body": {"ignore_eos": True}}),
             ('Repeat this JSON as it is: {"name": "Ann Lee", "age": 31}', constrained)]
    later = [(CODE_PROMPT, {"max_tokens": 48}), (COPY_PROMPTS[1], {"max_tokens": 48})]
    expected = [chat(plain, p, **kw).choices[0].message.content for p, kw in [*first, *later]]
    moved_before = fast.log().count("moved 1 request(s) to the plain pipeline")

    async def moved_midway() -> list[str]:
        async with fast.async_client() as client:
            async def read(stream, text: list[str]) -> str:
                async for chunk in stream:
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
                return "".join(text)

            texts: list[list[str]] = [[], []]
            streams = [await client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": p}], temperature=0, stream=True, **kw)
                for p, kw in first]
            iterators = [stream.__aiter__() for stream in streams]
            pairs = list(zip(iterators, texts, strict=True))
            for iterator, text in pairs:  # both have delivered tokens before the load rises
                while len(text) < 3:
                    chunk = await iterator.__anext__()
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
            rest = [asyncio.ensure_future(read(iterator, text)) for iterator, text in pairs]
            answers = await asyncio.gather(*(client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": p}], temperature=0, **kw) for p, kw in later))
            return [*(await asyncio.gather(*rest)), *(a.choices[0].message.content for a in answers)]

    assert asyncio.run(moved_midway()) == expected
    assert fast.log().count("moved 1 request(s) to the plain pipeline") == moved_before + 1


@pytest.mark.e2e
@pytest.mark.slow
def test_a_request_moves_to_the_plain_pipeline_and_back(smol_servers, smollm2_gguf, tmp_path_factory):
    """disable_by_batch_size 4: the fifth request sends the four running ones to the plain pipeline;
    once they are down to one, the next request brings that one back to the speculating pipeline (into
    the pipeline it was cancelled in, under the same id). Its stream, across both moves, and every
    other answer equal the plain server's; the spec_decode counts stay whole (K per draft)."""
    spec = json.dumps({"method": "ngram", "num_speculative_tokens": 4, "disable_by_batch_size": 4})
    fast = _serve(smollm2_gguf, tmp_path_factory, "--speculative-config", spec)
    plain = smol_servers["plain"]
    long = (COPY_PROMPTS[0], 300)
    short = [(COPY_PROMPTS[1], 48), (CODE_PROMPT, 48), ("Write a short story about a lighthouse.", 48)]
    fifth, sixth = ("Name three colours.", 24), ("Name three animals.", 24)
    asks = [long, *short, fifth, sixth]

    def request(prompt: str, max_tokens: int) -> dict:
        return {"model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "extra_body": {"ignore_eos": True}}

    expected = [plain.client().chat.completions.create(**request(*ask)).choices[0].message.content for ask in asks]

    async def text_of(stream, text: list[str], until: int | None = None) -> str:
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            if until is not None and len(text) >= until:
                break
        return "".join(text)

    async def round_trip() -> list[str]:
        async with fast.async_client() as client:
            texts: list[list[str]] = [[] for _ in range(4)]
            streams = []
            for (prompt, max_tokens), text in zip([long, *short], texts, strict=True):  # four running, speculating
                stream = (await client.chat.completions.create(**request(prompt, max_tokens), stream=True)).__aiter__()
                await text_of(stream, text, until=3 if not streams else 1)
                streams.append(stream)
            rest = [asyncio.ensure_future(text_of(stream, text)) for stream, text in zip(streams, texts, strict=True)]
            answers = [(await client.chat.completions.create(**request(*fifth))).choices[0].message.content]
            short_texts = await asyncio.gather(*rest[1:])  # the long one is alone in the engine now
            assert not rest[0].done(), "the long request ended too soon to move back"
            answers.append((await client.chat.completions.create(**request(*sixth))).choices[0].message.content)
            return [await rest[0], *short_texts, *answers]

    try:
        assert asyncio.run(round_trip()) == expected
        log = fast.log()
        assert re.search(r"moved [1-4] request\(s\) to the plain pipeline", log), log
        assert "moved 1 request(s) to the speculating pipeline" in log, log
        counts = spec_counts(fast)
        assert counts["num_draft_tokens_total"] == 4 * counts["num_drafts_total"] > 0
    finally:
        fast.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_draft_model_samples_and_keeps_serving(smol_servers):
    """GenAI 2026.4 fails sampled requests of a draft-model pipeline with prefix caching, so the engine
    turns prefix caching off for a draft (with a warning): sampling works, and so does what follows."""
    draft = smol_servers["draft"]
    assert "prefix caching is turned off" in draft.log()
    for seed in (1, 2):
        sampled = chat(draft, "Tell me a story.", max_tokens=32, temperature=0.9, seed=seed)
        assert sampled.choices[0].message.content and sampled.usage.completion_tokens > 0
    assert chat(draft, COPY_PROMPTS[0], max_tokens=48).choices[0].message.content == chat(
        smol_servers["plain"], COPY_PROMPTS[0], max_tokens=48).choices[0].message.content


@pytest.mark.e2e
@pytest.mark.slow
def test_spec_decode_metrics_only_with_speculation(smol_servers):
    import urllib.request

    def page(server: Server) -> str:
        return urllib.request.urlopen(server.base_url + "/metrics", timeout=10).read().decode()

    lookup = page(smol_servers["ngram"])
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        assert f"# TYPE vllm:spec_decode_{name}_total counter" in lookup
    per_position = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
    for position in range(4):
        assert f'{per_position}{{model_name="smol",position="{position}"}}' in lookup
    assert "spec_decode" not in page(smol_servers["plain"])


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_the_tiny_test_model_agrees_too(tiny_ov_fp32, tmp_path_factory, method):
    spec = ({"method": "ngram", "num_speculative_tokens": 3} if method == "ngram" else
            {"method": "draft_model", "model": str(tiny_ov_fp32), "num_speculative_tokens": 3})
    plain = _serve(tiny_ov_fp32, tmp_path_factory)
    fast = _serve(tiny_ov_fp32, tmp_path_factory, "--speculative-config", json.dumps(spec))
    try:
        for prompt in ("one two three one two three one two", "hello world"):
            texts = [s.client().completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0,
                                                   extra_body={"ignore_eos": True}).choices[0].text
                     for s in (plain, fast)]
            assert texts[0] == texts[1]
        assert spec_counts(fast)["num_drafts_total"] > 0
    finally:
        plain.stop()
        fast.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_echo_with_logprobs_after_a_prefix_cache_hit(smol_servers):
    """(Found on the way.) GenAI reports no logprobs for prompt tokens it took from the prefix cache:
    those are null, and the request no longer fails with a 500."""
    client = smol_servers["plain"].client()
    ids = list(range(1000, 1080))  # longer than two KV blocks
    first, second = (client.completions.create(model=NAME, prompt=ids, max_tokens=2, temperature=0, echo=True,
                                               logprobs=1) for _ in range(2))
    assert first.choices[0].logprobs.token_logprobs[-2:] == second.choices[0].logprobs.token_logprobs[-2:]
    known = second.choices[0].logprobs.token_logprobs[:len(ids)]
    assert len(known) == len(ids) and known[0] is None and known[-1] is not None
    assert None in known[1:64]  # the cached blocks' tokens


@pytest.mark.e2e
@pytest.mark.parametrize(("spec", "says"), [
    ('{"method": "ngram"}', '"num_speculative_tokens" is required'),
    ('{"method": "draft_model", "model": "/nonexistent/draft", "num_speculative_tokens": 4}', "/nonexistent/draft"),
])
def test_the_server_refuses_to_start_in_one_line(smollm2_gguf, spec, says):
    result = subprocess.run([sys.executable, "-m", "ovllm_cli", "serve", str(smollm2_gguf), "--speculative-config",
                             spec], capture_output=True, text=True, timeout=120)
    assert result.returncode in (1, 2), result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.stderr
