"""The figures of `ovllm bench serve`, with the definitions of vLLM's `bench serve`, all measured at
the client:

- TTFT: from sending a request to its first streamed chunk with a choice;
- ITL: the gaps between successive chunks of a request (all requests' gaps together);
- TPOT of a request: (latency - TTFT) / (output tokens - 1), for requests with more than one token;
- E2EL: from sending a request to its last byte;
- request, output-token and total-token throughput: over the whole run's duration;
- goodput: requests per second that met every SLO given (--slo ttft:MS tpot:MS e2el:MS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestOutput:
    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def parse_slo(items: list[str] | None) -> dict[str, float]:
    """`ttft:500 tpot:50` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos = {}
    for item in items or []:
        name, _, value = item.partition(":")
        if name not in SLO_METRICS:
            raise ValueError(f"--slo {item!r}: the metric must be one of {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--slo {item!r}: the limit must be a number of milliseconds, e.g. ttft:500") from None
        if slos[name] <= 0:
            raise ValueError(f"--slo {item!r}: the limit must be positive")
    return slos


def _summary(name: str, values_ms: list[float], result: dict) -> None:
    import numpy as np

    values = np.array(values_ms) if values_ms else np.zeros(1)
    result[f"mean_{name}_ms"] = float(values.mean())
    result[f"median_{name}_ms"] = float(np.median(values))
    result[f"std_{name}_ms"] = float(values.std())
    for percentile in PERCENTILES:
        result[f"p{percentile}_{name}_ms"] = float(np.percentile(values, percentile))


def compute(outputs: list[RequestOutput], duration: float, slos: dict[str, float] | None = None) -> dict:
    done = [o for o in outputs if o.success]
    output_tokens = sum(o.output_tokens for o in done)
    input_tokens = sum(o.prompt_len for o in done)
    result = {
        "duration": duration,
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
    }
    _summary("ttft", [o.ttft * 1000 for o in done], result)
    _summary("tpot", [o.tpot * 1000 for o in done if o.tpot is not None], result)
    _summary("itl", [gap * 1000 for o in done for gap in o.itl], result)
    _summary("e2el", [o.latency * 1000 for o in done], result)
    if slos:
        good = [o for o in done if _meets(o, slos)]
        result["slo"] = slos
        result["good_requests"] = len(good)
        result["request_goodput"] = len(good) / duration
    return result


def _meets(output: RequestOutput, slos: dict[str, float]) -> bool:
    measured = {"ttft": output.ttft, "tpot": output.tpot or 0.0, "e2el": output.latency}
    return all(measured[name] * 1000 <= limit for name, limit in slos.items())


def report(result: dict) -> str:
    """The result as vLLM's `bench serve` prints it."""
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label: str, value) -> None:
        lines.append(f"{label:<40} {value:<10.2f}" if isinstance(value, float) else f"{label:<40} {value:<10}")

    row("Successful requests:", result["completed"])
    if result["failed"]:
        row("Failed requests:", result["failed"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    if "request_goodput" in result:
        row("Request goodput (req/s):", result["request_goodput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total Token throughput (tok/s):", result["total_token_throughput"])
    for name, title, label in (("ttft", "Time to First Token", "TTFT"),
                               ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
                               ("itl", "Inter-token Latency", "ITL"),
                               ("e2el", "End-to-end Latency", "E2EL")):
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        row(f"Mean {label} (ms):", result[f"mean_{name}_ms"])
        row(f"Median {label} (ms):", result[f"median_{name}_ms"])
        row(f"P99 {label} (ms):", result[f"p99_{name}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)
