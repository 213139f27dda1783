"""The figures of `ovllm bench serve` from known timings (vLLM's definitions)."""

from __future__ import annotations

import pytest

from ovllm_engine.bench.serve_metrics import RequestOutput, compute, parse_slo, report


def test_definitions():
    outputs = [
        RequestOutput(success=True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4),
        RequestOutput(success=True, prompt_len=20, output_tokens=1, ttft=0.3, latency=0.3, itl=[]),
        RequestOutput(success=False, error="HTTP 500"),
    ]
    result = compute(outputs, duration=2.0, slos={"ttft": 200})
    assert (result["completed"], result["failed"]) == (2, 1)
    assert (result["total_input_tokens"], result["total_output_tokens"]) == (30, 6)
    assert result["request_throughput"] == 1.0
    assert result["output_throughput"] == 3.0 and result["total_token_throughput"] == 18.0
    assert result["mean_ttft_ms"] == pytest.approx(200) and result["median_ttft_ms"] == pytest.approx(200)
    # TPOT only for requests with more than one token: (0.5 - 0.1) / 4
    assert result["mean_tpot_ms"] == pytest.approx(100)
    assert result["mean_itl_ms"] == pytest.approx(100) and result["mean_e2el_ms"] == pytest.approx(400)
    assert result["good_requests"] == 1 and result["request_goodput"] == 0.5
    text = report(result)
    assert "Successful requests:                     2" in text and "Request goodput (req/s):" in text


def test_slo_parsing():
    assert parse_slo(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_slo(None) == {}
    for bad in ("ttft", "ttft:x", "ttft:-1", "foo:1"):
        with pytest.raises(ValueError):
            parse_slo([bad])
