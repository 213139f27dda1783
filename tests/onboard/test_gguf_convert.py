"""`ovllm convert FILE.gguf` on the real SmolLM2-135M-Instruct GGUF: as it is (GenAI's own graph and
tokenizer), and dequantized to fp32 by transformers, which must then serve exactly what transformers
computes on the same weights; and the tokenizer check that refuses to publish a model whose
tokenizer does not give back its text (transformers' tokenizer from this GGUF turns spaces into
<|endoftext|>)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server, require_module, transformers_greedy
from ovllm_engine.config import EXACT_OV_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXACT = ("--ov-config", json.dumps(EXACT_OV_CONFIG))
EXACT_ENV = {"VLLM_OPENVINO_KV_CACHE_PRECISION": "f32"}  # CPU pipelines default to a u8 KV cache
NEW_TOKENS = 24
BATCHED_TOKENS = 32
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain in one sentence what a CPU does, then say why caches help. " * 4,  # past one prefill chunk
]


@pytest.fixture(autouse=True)
def _needs_converter():
    require_module("optimum.intel", "convert")
    require_module("gguf", "convert")


def convert(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovllm_cli", "convert", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def chat_prompts(tokenizer) -> list[list[int]]:
    """The questions in the model's own chat template, as token ids."""
    prompts = []
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        prompts.append([int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]])
    return prompts


def served_ids(server: Server, prompts: list[list[int]]) -> list[list[int]]:
    client = server.client()
    model = client.models.list().data[0].id
    return [client.completions.create(model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True}).choices[0].token_ids
            for prompt in prompts]


def assert_serves_what_transformers_computes(ir: Path, prompts, reference, tokenizer, tmp_path) -> list[list[int]]:
    """Serve `ir` at f32 (inference and KV cache) in small prefill chunks; every prompt's greedy ids must
    equal transformers'. Returns the served ids."""
    server = Server(ir, "--max-num-batched-tokens", str(BATCHED_TOKENS), *EXACT, env=EXACT_ENV,
                    log_path=tmp_path / "server.log")
    try:
        served = served_ids(server.wait_ready(timeout=300), prompts)
    finally:
        server.stop()
    for prompt, tokens in zip(prompts, served, strict=True):
        assert tokens == reference(prompt), tokenizer.decode(prompt)
    return served


@pytest.fixture(scope="module")
def gguf_tokenizer(smollm2_gguf):
    import openvino_genai as ov_genai

    return ov_genai.Tokenizer(str(smollm2_gguf))


@pytest.fixture(scope="module")
def transformers_reference(smollm2_gguf):
    """transformers' greedy generation on the GGUF's weights, dequantized by its GGUF loader, at f32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32).eval()
    return transformers_greedy(model, NEW_TOKENS)


def test_as_it_is_genais_graph_with_exact_zero_points_computes_the_files_weights(
        smollm2_gguf, gguf_tokenizer, transformers_reference, tmp_path):
    """GenAI's own graph of the GGUF rounds each Q4_1 block's minimum; ovllm writes the file's exact
    zero points into it, and the result serves, token for token, what transformers computes on the
    file's dequantized weights (GenAI's graph as built parts from it within a few tokens)."""
    result = convert(str(smollm2_gguf), "--output", str(tmp_path / "ir"))
    assert result.returncode == 0, result.stderr
    ir = Path(result.stdout.strip())
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):
        assert (ir / name).is_file(), name
    assert json.loads((ir / "config.json").read_text())["max_position_embeddings"] == 8192
    prompts = chat_prompts(gguf_tokenizer)
    assert_serves_what_transformers_computes(ir, prompts, transformers_reference, gguf_tokenizer, tmp_path)


def test_fp32_from_the_gguf_serves_what_transformers_computes(smollm2_gguf, gguf_tokenizer, transformers_reference,
                                                             tmp_path):
    result = convert(str(smollm2_gguf), "--weight-format", "fp32", "--output", str(tmp_path / "fp32"))
    assert result.returncode == 0, result.stderr
    ir = Path(result.stdout.strip())
    # Only GenAI's tokenizer of the file goes with the model, not transformers' wrong one.
    assert not (ir / "tokenizer.json").exists() and not (ir / "tokenizer_config.json").exists()
    prompts = chat_prompts(gguf_tokenizer)
    assert len(prompts[-1]) > 2 * BATCHED_TOKENS  # the last one is prefilled in several chunks
    served = assert_serves_what_transformers_computes(ir, prompts, transformers_reference, gguf_tokenizer, tmp_path)
    # The answers are real: the first names Paris.
    assert "Paris" in gguf_tokenizer.decode(served[0])


def test_a_wrong_tokenizer_is_never_published(smollm2_gguf, tiny_hf, tmp_path):
    """transformers' tokenizer from this GGUF is wrong (spaces become <|endoftext|>); a model converted
    with it would answer garbage. Saved beside the tiny model's weights (cheap to export) and
    converted, nothing is published and one line says why; and the tokenizer check itself, given that
    tokenizer as the source and GenAI's tokenizer of the file as the converted one, refuses in one line
    that names the text and both token lists."""
    from transformers import AutoTokenizer

    from ovllm_engine.onboard import from_gguf, tokenizer_check
    from ovllm_engine.onboard.source import ModelError

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_hf.iterdir():
        if item.suffix in (".json", ".safetensors") and not item.name.startswith("tokenizer"):
            (broken / item.name).symlink_to(item)
    AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).save_pretrained(broken)
    output = tmp_path / "out"
    result = convert(str(broken), "--weight-format", "fp32", "--output", str(output))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "tokenizer" in errors[0], errors[0]
    assert not output.exists() or not any(output.iterdir())

    genai = tmp_path / "genai-tokenizer"
    genai.mkdir()
    from_gguf.write_tokenizer(smollm2_gguf, genai)
    tokenizer_check.check(tokenizer_check.gguf_encoder(smollm2_gguf), genai, "GenAI")  # the right one passes
    # Saved and read back, transformers' tokenizer of the GGUF encodes "The capital" as [0, 504, 0, 29721]:
    # <|endoftext|> where the spaces were.
    saved = tmp_path / "saved-tokenizer"
    AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).save_pretrained(saved)
    with pytest.raises(ModelError) as refused:
        tokenizer_check.check(tokenizer_check.transformers_encoder(saved, False), genai, "the transformers tokenizer")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the converted tokenizer encodes 'The capital of France is Paris.")
    assert "but the transformers tokenizer encodes it as [" in message


def test_a_gguf_on_a_read_only_volume_is_read(smollm2_gguf, tmp_path):
    """Engine pods mount their volumes read-only, and GenAI's GGUF reader opens the file for writing
    (found on the real node: the engine pod crashed with "Failed to open ... with gguf_open"). A
    read-only bind mount, as the kubelet makes one, holds the file here."""
    from conftest import require
    from ovllm_engine.onboard import from_gguf, tokenizer_check

    require(os.geteuid() == 0, "root, to bind-mount a read-only volume")
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(smollm2_gguf.parent), str(volume)], check=True)
    try:
        assert not os.access(volume / smollm2_gguf.name, os.W_OK)
        out = tmp_path / "tokenizer"
        out.mkdir()
        from_gguf.write_tokenizer(volume / smollm2_gguf.name, out)
        assert sorted(path.name for path in out.iterdir()) == sorted(from_gguf.TOKENIZER_FILES)
        encode = tokenizer_check.gguf_encoder(volume / smollm2_gguf.name, tmp_path)  # serving checks with it
        assert encode("The capital of France") == tokenizer_check.gguf_encoder(smollm2_gguf)("The capital of France")
        assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer", "volume"]  # no copy left
    finally:
        subprocess.run(["umount", str(volume)], check=True)
