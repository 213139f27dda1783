"""Every architecture ovllm tests (onboard/architectures.py) serves what transformers computes.

For each one, a tiny random model (testmodels: `tiny-MODEL_TYPE`) is converted as `ovllm convert`
converts it (built once per recipe and library versions, then cached), served by a real `ovllm
serve` at f32 (inference and KV cache) with prefix caching and chunked prefill on (32-token chunks),
and its greedy token ids compared with transformers' `generate` on the same weights: a short prompt,
one of several chunks (past the 32-token sliding window of the architectures that have one), the
same again (its blocks come from the prefix cache), and one sharing its first two chunks.

A divergence fails the test with the position and transformers' top-2 logit gap there, so that a
near-tie can be told from a real difference.
"""

from __future__ import annotations

import json
import random

import pytest

from conftest import Server, require_module, transformers_greedy
from ovllm_engine.onboard.architectures import TESTED

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NEW_TOKENS = 16
BATCHED_TOKENS = 32
EXACT = ("--ov-config", json.dumps({"INFERENCE_PRECISION_HINT": "f32"}))
EXACT_ENV = {"VLLM_OPENVINO_KV_CACHE_PRECISION": "f32", "VLLM_OPENVINO_KVCACHE_SPACE": "1"}
# Fewer distinct ids than this in a reference answer: the random weights repeat themselves, and the
# comparison could not tell one model from another.
MIN_DISTINCT = 6


@pytest.fixture(scope="module")
def built(request):
    """{model_type: (hf_dir, ir_dir)} for the architectures selected in this session, built (or found in
    the cache) two at a time."""
    require_module("optimum.intel", "convert")
    from ovllm_engine import testmodels

    selected = [item.callspec.params["model_type"] for item in request.session.items if item.module is request.module
                and "model_type" in getattr(getattr(item, "callspec", None), "params", {})]
    pairs = testmodels.build_many([f"tiny-{model_type}" for model_type in selected])
    return {model_type: pairs[f"tiny-{model_type}"] for model_type in selected}


def prompts() -> list[list[int]]:
    rng = random.Random(7)
    short = [rng.randrange(151643) for _ in range(6)]
    long = [rng.randrange(151643) for _ in range(3 * BATCHED_TOKENS + 17)]
    sibling = long[:2 * BATCHED_TOKENS] + [rng.randrange(151643) for _ in range(BATCHED_TOKENS + 5)]
    return [short, long, long, sibling]


def divergence(model, prompt: list[int], expected: list[int], served: list[int]) -> str:
    """Where `served` leaves transformers' `expected`, and transformers' top-2 logit gap there."""
    import torch

    position = next(i for i, (a, b) in enumerate(zip(expected, served, strict=False)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + expected[:position]])).logits[0, -1]
    top = torch.topk(logits, 2)
    return (f"prompt of {len(prompt)} ids: token {position} is {served[position]}, transformers' is "
            f"{expected[position]}; transformers' top-2 there: {top.indices.tolist()} with a gap of "
            f"{float(top.values[0] - top.values[1]):.6f}; served {served}, expected {expected}")


@pytest.mark.parametrize("model_type", TESTED)
def test_greedy_ids_equal_transformers(model_type, built, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir, ir_dir = built[model_type]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    reference = transformers_greedy(model, NEW_TOKENS)
    cases = prompts()
    server = Server(ir_dir, "--max-num-batched-tokens", str(BATCHED_TOKENS), "--served-model-name", model_type,
                    *EXACT, env=EXACT_ENV, log_path=tmp_path / "server.log")
    try:
        client = server.wait_ready().client()
        served = []
        for prompt in cases:
            reply = client.completions.create(model=model_type, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                              extra_body={"ignore_eos": True, "return_token_ids": True})
            served.append(reply.choices[0].token_ids)
    finally:
        server.stop()
    for prompt, tokens in zip(cases, served, strict=True):
        expected = reference(prompt)
        assert len(set(expected)) >= MIN_DISTINCT, f"{model_type}'s random weights repeat themselves: {expected}"
        assert tokens == expected, divergence(model, prompt, expected, tokens)
