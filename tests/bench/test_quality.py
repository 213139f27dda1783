"""`ovllm bench quality`: llama-perplexity's chunking and scoring on hand-made logits, the tokenizing
around GenAI's baked-in truncation on a fake tokenizer, and the command on the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from ovllm_engine.bench import quality

TEXT = ROOT / "benchmarks" / "texts" / "quality.txt"


def test_uniform_logits_give_the_vocabulary_size():
    chunk = np.arange(16) % 7
    scores = quality.Scores()
    scores.add(np.zeros((16, 50), dtype=np.float32), chunk)
    assert scores.count == 16 // 2 - 1  # positions 8..14 predict tokens 9..15
    assert scores.ppl == pytest.approx(50)


def test_only_the_second_half_is_scored_against_the_next_token():
    n_ctx, vocab = 8, 10
    chunk = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    logits = np.full((n_ctx, vocab), 100.0)  # far from uniform: any scored row left like this would show
    logits[:, 0] = 0.0
    p = {4: 0.5, 5: 0.25, 6: 0.125}  # the probability given to the next token at each scored position
    for position, prob in p.items():
        row = np.full(vocab, math.log((1 - prob) / (vocab - 1)))
        row[chunk[position + 1]] = math.log(prob)
        logits[position] = row
    scores = quality.Scores()
    scores.add(logits, chunk)
    assert scores.count == 3
    assert scores.nll == pytest.approx(-sum(math.log(prob) for prob in p.values()))
    assert scores.ppl == pytest.approx(math.exp(scores.nll / 3))


def test_reference_against_itself_and_against_another():
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 20, 32)
    logits = rng.normal(size=(32, 20)).astype(np.float32)
    same = quality.Scores()
    same.add(logits, chunk, logits.copy())
    assert same.top1_agreement == 1.0 and same.kl == pytest.approx(0, abs=1e-12) and same.ref_ppl == same.ppl
    other = rng.normal(size=(32, 20)).astype(np.float32)
    scores = quality.Scores()
    scores.add(logits, chunk, other)
    rows = slice(16, 31)
    logp, ref_logp = quality.log_softmax(logits[rows]), quality.log_softmax(other[rows])
    assert scores.kl == pytest.approx(float((np.exp(ref_logp) * (ref_logp - logp)).sum(-1).mean()))
    assert scores.top1_agreement == pytest.approx(float((logits[rows].argmax(-1) == other[rows].argmax(-1)).mean()))
    assert scores.ref_ppl == pytest.approx(math.exp(-ref_logp[np.arange(15), chunk[17:32]].mean()))


def test_chunks_are_whole_and_start_with_bos():
    tokens = np.arange(10, 47)  # 37 tokens: 4 whole chunks of 8
    assert quality.chunk_count(len(tokens), 8, None) == 4
    assert quality.chunk_count(len(tokens), 8, 2) == 2
    with pytest.raises(ValueError, match="the text is 37 tokens; perplexity at --ctx 32 needs at least 64"):
        quality.chunk_count(len(tokens), 32, None)
    with_bos = list(quality.chunks(tokens, 8, 4, bos=1))
    assert [c.tolist() for c in with_bos][1] == [1, 19, 20, 21, 22, 23, 24, 25]
    assert list(quality.chunks(tokens, 8, 4, bos=None))[3].tolist() == list(range(34, 42))
    assert tokens[8] == 18, "the text's own tokens are left alone"


class FakeTokenizer:
    """Characters as ids, BOS 1 added by default or not, truncating at `cap` whatever it is asked, as
    GenAI's GGUF tokenizers do (they keep the last tokens: `left`)."""

    def __init__(self, add_bos: bool, cap: int = 10**9, left: bool = False):
        self.add_bos, self.cap, self.left = add_bos, cap, left

    def get_bos_token_id(self) -> int:
        return 1

    def encode(self, text: str, add_special_tokens: bool = True):
        ids = ([1] if add_special_tokens and self.add_bos else []) + [ord(c) for c in text]
        ids = ids[-self.cap:] if self.left else ids[:self.cap]
        return SimpleNamespace(input_ids=SimpleNamespace(data=np.array([ids])))


@pytest.mark.parametrize("add_bos", [True, False])
def test_tokenize_adds_bos_as_the_tokenizer_does_and_works_around_truncation(add_bos):
    text = "".join(f"Line {i} of the text.\n" for i in range(200))
    expected = [1] * add_bos + [ord(c) for c in text]
    for cap, left in ((10**9, False), (500, False), (500, True)):
        ids, bos = quality.tokenize(FakeTokenizer(add_bos, cap, left), text)
        assert bos is add_bos and ids.tolist() == expected


def ovllm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovllm_cli", "bench", "quality", *args], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


@pytest.mark.slow
def test_quality_on_the_tiny_model_and_against_itself(tiny_ov_fp32, tmp_path):
    out = tmp_path / "q.json"
    result = ovllm(str(tiny_ov_fp32), "--text", str(TEXT), "--ctx", "64", "--max-chunks", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert (saved["n_ctx"], saved["chunks"], saved["scored_tokens"]) == (64, 3, 3 * 31)
    assert math.isfinite(saved["ppl"]) and saved["ppl"] > 1 and saved["reference"] is None
    assert f"PPL            {saved['ppl']:.4f}" in result.stdout
    result = ovllm(str(tiny_ov_fp32), "--text", str(TEXT), "--ctx", "64", "--max-chunks", "2",
                   "--reference", str(tiny_ov_fp32), "--json", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["top1_agreement"] == 1.0 and saved["kl"] == pytest.approx(0, abs=1e-9)
    assert saved["ref_ppl"] == pytest.approx(saved["ppl"])


@pytest.mark.slow
def test_too_short_a_text_is_one_line(tiny_ov_fp32, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    result = ovllm(str(tiny_ov_fp32), "--text", str(short), "--ctx", "64")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "needs at least 128" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
