"""The served model computes what transformers computes on the same weights.

With fp32 inference (`INFERENCE_PRECISION_HINT=f32`) and the fp32 IR of the tiny random model,
greedy completions from the server equal transformers' greedy generation token for token, with
prefix caching and chunked prefill on (32 batched tokens), for prompts several times longer than
one prefill chunk, and with 16 requests in flight at once.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from conftest import transformers_greedy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NEW_TOKENS = 24
BATCHED_TOKENS = 32  # the tiny_server fixture's --max-num-batched-tokens


@pytest.fixture(scope="module")
def reference(tiny_hf):
    """transformers' greedy generation on the tiny model's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    return transformers_greedy(AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval(), NEW_TOKENS)


def random_prompts(count: int, seed: int, shared_prefix: int = 0) -> list[list[int]]:
    """Token-id prompts of 3 to 7 prefill chunks; the first `shared_prefix` ids are common to all."""
    rng = random.Random(seed)
    prefix = [rng.randrange(151643) for _ in range(shared_prefix)]
    return [prefix + [rng.randrange(151643) for _ in range(rng.randrange(3 * BATCHED_TOKENS, 7 * BATCHED_TOKENS))]
            for _ in range(count)]


def test_greedy_long_prompt_equals_transformers(tiny_server, reference):
    client = tiny_server.client()
    for prompt in random_prompts(3, seed=1):
        response = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, extra_body={
                "ignore_eos": True, "return_token_ids": True})
        choice = response.choices[0]
        assert choice.token_ids == reference(prompt), f"prompt of {len(prompt)} tokens diverged"
        assert response.usage.prompt_tokens == len(prompt)
        assert response.usage.completion_tokens == NEW_TOKENS
        assert choice.finish_reason == "length"


def test_sixteen_concurrent_requests_with_shared_prefixes(tiny_server, reference):
    """16 in flight at once; half share a long prefix, so prefix caching serves some blocks twice."""
    prompts = random_prompts(8, seed=2) + random_prompts(8, seed=3, shared_prefix=2 * BATCHED_TOKENS)
    client = tiny_server.async_client()

    async def one(prompt):
        response = await client.completions.create(
            model="tiny", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True})
        return response.choices[0].token_ids

    async def all_at_once():
        return await asyncio.gather(*(one(p) for p in prompts))

    served = asyncio.run(all_at_once())
    for prompt, tokens in zip(prompts, served, strict=True):
        assert tokens == reference(prompt)


def test_repeated_prompt_hits_prefix_cache_and_stays_exact(tiny_server, reference):
    prompt = random_prompts(1, seed=4)[0]
    client = tiny_server.client()
    expected = reference(prompt)
    for _ in range(2):  # the second time the prompt's blocks come from the prefix cache
        response = client.completions.create(model="tiny", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
        assert response.choices[0].token_ids == expected


def test_text_prompt_and_chat_template(tiny_server, tiny_hf, reference):
    """Text is tokenized like transformers does it, and chat requests go through the model's template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf)
    client = tiny_server.client()
    text = "The quick brown fox jumps over the lazy dog. " * 8
    response = client.completions.create(model="tiny", prompt=text, max_tokens=NEW_TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True, "return_token_ids": True})
    prompt_ids = tokenizer(text).input_ids
    assert response.usage.prompt_tokens == len(prompt_ids)
    expected = reference(prompt_ids)
    assert response.choices[0].token_ids == expected
    assert response.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=NEW_TOKENS, temperature=0,
                                          extra_body={"ignore_eos": True, "return_token_ids": True})
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    chat_ids = chat_ids["input_ids"] if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys") else chat_ids
    assert chat.usage.prompt_tokens == len(chat_ids)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].token_ids == reference(list(chat_ids))
