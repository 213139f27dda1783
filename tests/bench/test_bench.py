"""`ovllm bench throughput` and `ovllm bench serve` on the tiny model: they run, and their numbers
are consistent (tokens counted equal tokens requested, throughputs equal counts over durations)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, require_module

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def ovllm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovllm_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OVLLM_PROGRESS_INTERVAL": "0.5"})


@pytest.fixture(scope="module")
def sharegpt_file(tmp_path_factory, tiny_ov_fp32):
    """A ShareGPT-format file, and the reply lengths the benchmark must ask for."""
    from ovllm_engine.bench.datasets import Tokens

    conversations = [{"id": str(i), "conversations": [
        {"from": "human", "value": f"Question {i}: " + "tell me about the weather in spring " * (1 + i % 3)},
        {"from": "gpt", "value": "It is mild and often rainy. " * (1 + i % 4)},
        {"from": "human", "value": "thanks"}]} for i in range(12)]
    conversations.append({"id": "short", "conversations": [{"from": "human", "value": "hi"}]})  # one turn: skipped
    path = tmp_path_factory.mktemp("sharegpt") / "sharegpt.json"
    path.write_text(json.dumps(conversations))
    tokens = Tokens(tiny_ov_fp32)
    reply_lengths = {c["conversations"][0]["value"]: len(tokens.encode(c["conversations"][1]["value"]))
                     for c in conversations if len(c["conversations"]) > 1}
    return path, reply_lengths


def test_throughput_random(tiny_ov_fp32, tmp_path):
    result = ovllm("bench", "throughput", "--model", str(tiny_ov_fp32), "--num-prompts", "8", "--input-len", "32",
                   "--output-len", "16", "--max-num-batched-tokens", "64", "--output-json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    match = re.search(r"^Throughput: ([\d.]+) requests/s, ([\d.]+) total tokens/s, ([\d.]+) output tokens/s$",
                      result.stdout, re.MULTILINE)
    assert match, result.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert (saved["num_requests"], saved["total_prompt_tokens"], saved["total_output_tokens"]) == (8, 256, 128)
    elapsed = saved["elapsed_time"]
    assert saved["requests_per_second"] == pytest.approx(8 / elapsed)
    assert saved["tokens_per_second"] == pytest.approx(384 / elapsed)
    assert saved["output_tokens_per_second"] == pytest.approx(128 / elapsed)
    assert float(match.group(3)) == pytest.approx(saved["output_tokens_per_second"], abs=0.01)


def test_throughput_sharegpt_asks_for_each_reply_length(tiny_ov_fp32, sharegpt_file, tmp_path):
    path, reply_lengths = sharegpt_file
    result = ovllm("bench", "throughput", "--model", str(tiny_ov_fp32), "--dataset", str(path), "--num-prompts", "12",
                   "--output-json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["total_output_tokens"] == sum(reply_lengths.values())
    too_many = ovllm("bench", "throughput", "--model", str(tiny_ov_fp32), "--dataset", str(path), "--num-prompts", "50")
    assert too_many.returncode == 1 and "12 usable conversations, fewer than 50" in too_many.stderr


def serve_bench(server, model_dir, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"serve-{len(list(tmp_path.iterdir()))}.json"
    result = ovllm("bench", "serve", "--base-url", server.base_url, "--tokenizer", str(model_dir),
                   "--save-result", str(out), *args)
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


def test_serve_counts_and_throughputs_agree(tiny_server, tiny_ov_fp32, tmp_path):
    result, saved = serve_bench(tiny_server, tiny_ov_fp32, tmp_path, "--num-prompts", "12", "--input-len", "48",
                                "--output-len", "20", "--ignore-eos", "--max-concurrency", "4")
    assert "Serving Benchmark Result" in result.stdout and "Median TTFT (ms):" in result.stdout
    assert (saved["completed"], saved["failed"]) == (12, 0)
    assert saved["total_output_tokens"] == saved["requested_output_tokens"] == 12 * 20
    assert saved["output_lens"] == [20] * 12
    assert saved["total_input_tokens"] == 12 * 48  # server-side counts of the round-tripped prompts
    duration = saved["duration"]
    assert saved["request_throughput"] == pytest.approx(12 / duration)
    assert saved["output_throughput"] == pytest.approx(240 / duration)
    assert saved["total_token_throughput"] == pytest.approx((240 + 576) / duration)
    for ttft, itl, e2el in zip(saved["ttfts"], saved["itls"], saved["e2els"], strict=True):
        # chunks, not tokens: a chunk may carry several tokens (a character split across tokens)
        assert 1 <= len(itl) <= 20 and ttft + sum(itl) <= e2el
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < saved[f"median_{name}_ms"] <= saved[f"p99_{name}_ms"], name
    assert saved["p99_ttft_ms"] < saved["p99_e2el_ms"]
    # with 4 at a time, the 12 requests take at least 3 rounds of one request's latency
    assert duration >= 3 * min(saved["ttfts"])


def test_serve_shared_prefix_at_a_poisson_rate_with_token_ids(tiny_server, tiny_ov_fp32, tmp_path):
    _, saved = serve_bench(tiny_server, tiny_ov_fp32, tmp_path, "--dataset-name", "shared-prefix",
                           "--shared-prefix-len", "96", "--suffix-len", "8", "--num-prefixes", "2",
                           "--num-prompts", "20", "--output-len", "8", "--ignore-eos", "--request-rate", "20",
                           "--prompt-format", "token-ids")
    assert saved["completed"] == 20 and saved["total_output_tokens"] == 160
    assert saved["total_input_tokens"] == 20 * 104
    # 19 exponential gaps at 20/s span about a second (under 0.3 s with probability far below 1e-4)
    assert saved["duration"] > 0.3


def test_serve_goodput_follows_the_slo(tiny_server, tiny_ov_fp32, tmp_path):
    common = ("--num-prompts", "6", "--input-len", "16", "--output-len", "8", "--ignore-eos")
    _, loose = serve_bench(tiny_server, tiny_ov_fp32, tmp_path, *common, "--slo", "ttft:600000", "e2el:600000")
    assert loose["good_requests"] == 6 and loose["request_goodput"] == pytest.approx(loose["request_throughput"])
    _, tight = serve_bench(tiny_server, tiny_ov_fp32, tmp_path, *common, "--slo", "ttft:0.001")
    assert tight["good_requests"] == 0 and tight["request_goodput"] == 0


def test_serve_sharegpt(tiny_server, tiny_ov_fp32, sharegpt_file, tmp_path):
    path, reply_lengths = sharegpt_file
    _, saved = serve_bench(tiny_server, tiny_ov_fp32, tmp_path, "--dataset", str(path), "--num-prompts", "12",
                           "--ignore-eos", "--max-concurrency", "3")
    assert saved["total_output_tokens"] == sum(reply_lengths.values())


@pytest.mark.parametrize("args, message", [
    (("--slo", "speed:5"), "the metric must be one of ttft, tpot, e2el"),
    (("--max-concurrency", "0"), "--max-concurrency 0 must be at least 1"),
    (("--base-url", "http://127.0.0.1:9"), "Cannot connect|Connect call failed|refused"),
])
def test_serve_bad_arguments_are_one_line(tiny_server, tiny_ov_fp32, args, message):
    require_module("aiohttp", "engine")
    result = ovllm("bench", "serve", "--base-url", tiny_server.base_url, "--tokenizer", str(tiny_ov_fp32),
                   "--num-prompts", "2", *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
    assert "Traceback" not in result.stderr


def test_comparison_script_runs_on_the_tiny_model(tmp_path):
    """benchmarks/compare.py without llama.cpp (its build takes minutes): every other side and the plots."""
    require_module("matplotlib", "bench")
    require_module("optimum.intel", "convert")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--model", "tiny", "--out", str(tmp_path),
         "--sides", "ovllm", "in-process", "optimum", "roofline", "--concurrency", "1", "2", "--rates", "2", "8",
         "--rate-prompts", "4", "--input-len", "16", "--output-len", "8", "--rate-output-len", "4"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "compare.json").read_text())
    sweep = saved["concurrency_sweep"]["ovllm"]
    assert [sweep[level]["total_output_tokens"] for level in ("1", "2")] == [4 * 8, 4 * 8]
    assert [saved["rate_sweep"]["ovllm"][rate]["completed"] for rate in ("2", "8")] == [4, 4]
    assert saved["in_process"]["total_output_tokens"] == 2 * 8
    assert saved["optimum_static"]["output_tokens_per_second"] > 0
    roofline = saved["roofline"]
    assert roofline["bandwidth_bytes_per_s"] > 1e9
    assert roofline["batch_1"]["decode_steps"] == 7 and roofline["saturation"]["batch"] == 2
    assert roofline["batch_1"]["step_over_floor"] > 1, "no step can beat the memory floor"
    assert (tmp_path / "throughput_vs_concurrency.png").stat().st_size > 1000
    assert (tmp_path / "ttft_vs_rate.png").stat().st_size > 1000
