"""Structured output beside plain requests: does constrained decoding slow the unconstrained requests batched with it?

One `ovllm serve` (the demo model SmolLM2-135M-Instruct unless --model, `--max-model-len 2048`) takes, in turn:

- phase A: `--plain` (32) streamed chat requests at once: varied short questions, temperature 0 and `ignore_eos`,
  so that each produces exactly `--max-tokens` (128) tokens;
- phase B: the same plain requests and, started at the same moment (spread among them), `--constrained` (8)
  streamed chat requests with `response_format` json_schema (an object of string fields, an enum and a boolean),
  temperature 0 and the same `max_tokens` but no `ignore_eos`: a JSON answer ends itself;
- phase C (with `--control`): the same plain requests beside the constrained requests' prompts without
  response_format, each held to the token count its constrained twin gave in the warm-up (`ignore_eos`): B's batch
  without a grammar. B against A mixes two costs, 8 more sequences in every step and the grammar; B against C
  isolates the grammar's.

The phases alternate A, B(, C), A, B(, C)... (`--rounds`) to spread the machine's noise over all. A warm-up first
sends every prompt once (so that the prefix cache holds every prompt in every phase alike) and every constrained
request (so that the grammar is compiled and cached before anything is measured).

Per phase: the plain requests' output tok/s (their tokens over the time from the start of the phase to the end of
the last plain answer), their TPOT p50 ((last token's time - first token's time) / (tokens - 1), vLLM's definition,
per request) and TTFT p50 (to the first chunk that carries text: the role chunk comes before any token); in B also
the constrained requests' TPOT and TTFT p50, their token counts, and how many of their answers parse as JSON and
validate (a strict pydantic model of the schema). Then the ratios B/A of plain tok/s and TPOT (all rounds pooled),
and within B the constrained TPOT over the plain TPOT (with C also B/C: plain tok/s and TPOT, and the constrained
TPOT over the control's). Prints markdown tables; writes JSON to --out. The client runs on the server's machine.
Exits 1 when a constrained answer that ended by itself does not validate. Run on an idle machine:

    python benchmarks/structured_output.py --control --out benchmarks/results/structured_output.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from compare import OVLLM, machine, require_free_port, stop, wait_ready  # this folder's helpers
from gguf_agreement import CHAT_SHORT
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HERE = Path(__file__).resolve().parent
CHAT = "/v1/chat/completions"

QUESTIONS = [
    *CHAT_SHORT,
    "Why do leaves change color in the fall?",
    "Suggest a title for a mystery novel set on a train.",
    "How does a bicycle stay upright?",
    "What is the difference between weather and climate?",
    "Give me three tips for a job interview.",
    "What does a bee do all day?",
    "Write two lines of a poem about the sea.",
    "How do I boil an egg?",
    "Name a famous painting and its painter.",
    "What is photosynthesis?",
    "Why is exercise good for you?",
    "What is a prime number? Give an example.",
    "Describe the taste of a lemon.",
    "How far away is the Moon, roughly?",
    "What is the tallest animal in the world?",
    "Tell me a fun fact about octopuses.",
    "What are the three states of water?",
    "How should I start learning to play the guitar?",
    "What is the main ingredient of guacamole?",
    "Why do we have seasons on Earth?",
    "Give me an idea for a rainy afternoon.",
    "What does a librarian do?",
]

CITIES = ["Paris", "Tokyo", "Cairo", "Oslo", "Lima", "Sydney", "Toronto", "Mumbai"]

# Strings, an enum and a boolean: no numbers, which this small model writes digit after digit until max_tokens. The
# strings are bounded: unbounded, the demo model's summary ran past 128 tokens for 3 of the 8 cities.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "summary": {"type": "string", "maxLength": 100},
        "climate": {"type": "string", "enum": ["cold", "temperate", "warm", "hot"]},
        "coastal": {"type": "boolean"},
    },
    "required": ["name", "country", "summary", "climate", "coastal"],
    "additionalProperties": False,
}


class City(BaseModel):
    """SCHEMA as a strict pydantic model: what a valid answer is (jsonschema is not a dependency)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    summary: str = Field(max_length=100)
    climate: Literal["cold", "temperate", "warm", "hot"]
    coastal: bool


assert set(City.model_fields) == set(SCHEMA["properties"]) == set(SCHEMA["required"])


def plain_bodies(count: int, max_tokens: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": max_tokens,
             "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            for i in range(count)]


def constrained_bodies(count: int, max_tokens: int) -> list[dict]:
    question = ("Describe the city of {} as JSON: its name, its country, a one-sentence summary, its climate "
                "(cold, temperate, warm or hot) and whether it is on the coast.")
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    return [{"messages": [{"role": "user", "content": question.format(CITIES[i % len(CITIES)])}],
             "max_tokens": max_tokens, "temperature": 0, "response_format": response_format, "stream": True,
             "stream_options": {"include_usage": True}} for i in range(count)]


def control_bodies(constrained: list[dict], token_counts: list[int]) -> list[dict]:
    """The constrained requests without their response_format, each held to the token count its constrained twin
    gave (`ignore_eos`): the same prompts and the same batch as phase B, with no grammar."""
    return [{k: v for k, v in body.items() if k != "response_format"} | {"max_tokens": max(2, count),
                                                                         "ignore_eos": True}
            for body, count in zip(constrained, token_counts, strict=True)]


@dataclass
class Answer:
    tokens: int  # usage.completion_tokens
    ttft_s: float  # from sending the request to the first chunk with text
    tpot_s: float | None  # (last token's chunk - first token's chunk) / (tokens - 1)
    end_s: float  # from the start of the phase to the last chunk
    finish_reason: str | None
    text: str


async def stream_chat(client: httpx.AsyncClient, body: dict, phase_start: float) -> Answer:
    sent = time.perf_counter()
    first = last = None
    usage, reason, parts = None, None, []
    async with client.stream("POST", CHAT, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{CHAT} answered {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the stream ended with an error: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    first = first or now
                if text or choice.get("finish_reason"):
                    last = now
                reason = choice.get("finish_reason") or reason
    if usage is None or first is None:
        raise RuntimeError(f"a stream without usage or text: usage {usage}, text {''.join(parts)!r}")
    return Answer(tokens=usage, ttft_s=first - sent, tpot_s=(last - first) / (usage - 1) if usage > 1 else None,
                  end_s=last - phase_start, finish_reason=reason, text="".join(parts))


async def run_phase(base_url: str, plain: list[dict], beside: list[dict]) -> tuple[list[Answer], list[Answer]]:
    """Every request at once, those `beside` the plain ones spread evenly among them (the server admits requests in
    the order they arrive); the plain answers and the others."""
    order: list[tuple[bool, dict]] = [(True, body) for body in plain]
    for i in reversed(range(len(beside))):  # evenly spaced, from the back so that the places stay valid
        order.insert(i * len(plain) // len(beside), (False, beside[i]))
    async with httpx.AsyncClient(base_url=base_url, timeout=1800, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        answers = await asyncio.gather(*(stream_chat(client, body, start) for _, body in order))
    kinds = [is_plain for is_plain, _ in order]
    return ([a for k, a in zip(kinds, answers, strict=True) if k],
            [a for k, a in zip(kinds, answers, strict=True) if not k])


def validate(text: str) -> str:
    """'valid', 'not JSON' or 'invalid' (parses, but not to the schema)."""
    try:
        json.loads(text)
    except ValueError:
        return "not JSON"
    try:
        City.model_validate_json(text)
    except ValidationError:
        return "invalid"
    return "valid"


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def p50(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# The phases; B's and C's requests beside the plain ones are recorded under these names.
PHASES = {"A": "plain alone", "B": "plain + constrained", "C": "plain + unconstrained control"}
BESIDE = {"B": "constrained", "C": "control"}


def figures(phase: str, plain: list[Answer], beside: list[Answer]) -> dict:
    """One phase's figures: the plain requests', and those of the requests beside them."""
    tokens, wall = sum(a.tokens for a in plain), max(a.end_s for a in plain)
    out = {"plain": {"requests": len(plain), "tokens": tokens, "wall_s": round(wall, 3),
                     "tok_s": round(tokens / wall, 2), "tpot_ms_p50": ms(p50([a.tpot_s for a in plain])),
                     "ttft_ms_p50": ms(p50([a.ttft_s for a in plain]))}}
    if phase in BESIDE:
        everything = plain + beside
        extra = {"requests": len(beside), "tokens": [a.tokens for a in beside],
                 "tpot_ms_p50": ms(p50([a.tpot_s for a in beside])), "ttft_ms_p50": ms(p50([a.ttft_s for a in beside])),
                 "finish_reasons": dict(collections.Counter(str(a.finish_reason) for a in beside))}
        if phase == "B":
            verdicts = [validate(a.text) for a in beside]
            extra |= {"parsed": sum(v != "not JSON" for v in verdicts), "valid": verdicts.count("valid"),
                      "failures": [{"verdict": v, "finish_reason": a.finish_reason, "tokens": a.tokens, "text": a.text}
                                   for v, a in zip(verdicts, beside, strict=True) if v != "valid"]}
        out |= {BESIDE[phase]: extra, "all_tokens": sum(a.tokens for a in everything),
                "all_wall_s": round(max(a.end_s for a in everything), 3)}
    return out


def pooled(runs: list[tuple[str, list[Answer], list[Answer], dict]], phase: str) -> dict | None:
    """A phase's figures over all its rounds: tok/s from the summed tokens and walls, p50s over every request."""
    mine = [(plain, beside, record) for name, plain, beside, record in runs if name == phase]
    if not mine:
        return None
    plain = [a for p, _, _ in mine for a in p]
    wall = sum(max(a.end_s for a in p) for p, _, _ in mine)
    out = {"rounds": len(mine), "plain_tok_s": round(sum(a.tokens for a in plain) / wall, 2),
           "plain_tpot_ms_p50": ms(p50([a.tpot_s for a in plain])),
           "plain_ttft_ms_p50": ms(p50([a.ttft_s for a in plain]))}
    if phase in BESIDE:
        beside = [a for _, b, _ in mine for a in b]
        all_wall = sum(max(a.end_s for a in p + b) for p, b, _ in mine)
        out |= {"beside_tpot_ms_p50": ms(p50([a.tpot_s for a in beside])),
                "beside_ttft_ms_p50": ms(p50([a.ttft_s for a in beside])),
                "all_tok_s": round(sum(a.tokens for a in plain + beside) / all_wall, 2)}
    if phase == "B":
        out |= {"constrained_requests": len(mine[0][1]) * len(mine),
                "constrained_parsed": sum(r["constrained"]["parsed"] for _, _, r in mine),
                "constrained_valid": sum(r["constrained"]["valid"] for _, _, r in mine)}
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(runs: list[tuple[str, list[Answer], list[Answer], dict]]) -> dict:
    summary = {phase: pooled(runs, phase) for phase in PHASES}
    a, b, c = summary["A"], summary["B"], summary["C"]
    summary |= {"plain_tok_s_B_over_A": ratio(b["plain_tok_s"], a["plain_tok_s"]),
                "plain_tpot_B_over_A": ratio(b["plain_tpot_ms_p50"], a["plain_tpot_ms_p50"]),
                "plain_ttft_B_over_A": ratio(b["plain_ttft_ms_p50"], a["plain_ttft_ms_p50"]),
                "constrained_over_plain_tpot_in_B": ratio(b["beside_tpot_ms_p50"], b["plain_tpot_ms_p50"])}
    if c:
        summary |= {"plain_tok_s_B_over_C": ratio(b["plain_tok_s"], c["plain_tok_s"]),
                    "plain_tpot_B_over_C": ratio(b["plain_tpot_ms_p50"], c["plain_tpot_ms_p50"]),
                    "constrained_over_control_tpot": ratio(b["beside_tpot_ms_p50"], c["beside_tpot_ms_p50"]),
                    "all_tok_s_B_over_C": ratio(b["all_tok_s"], c["all_tok_s"])}
    return summary


def cell(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def tables(runs: list[tuple[str, list[Answer], list[Answer], dict]], summary: dict) -> str:
    lines = ["| phase | round | plain tok/s | plain TPOT p50 (ms) | plain TTFT p50 (ms) | beside: TPOT p50 (ms) "
             "| beside: TTFT p50 (ms) | beside: tokens min/median/max | valid JSON |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase, _, _, record in runs:
        plain, extra = record["plain"], record.get(BESIDE.get(phase, ""))
        row = [f"{phase} ({PHASES[phase]})", record["round"], plain["tok_s"], plain["tpot_ms_p50"],
               plain["ttft_ms_p50"]]
        if extra:
            counts = extra["tokens"]
            row += [extra["tpot_ms_p50"], extra["ttft_ms_p50"],
                    f"{min(counts)}/{statistics.median(counts):g}/{max(counts)}",
                    f"{extra['valid']}/{extra['requests']}" if phase == "B" else None]
        else:
            row += [None] * 4
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    phases = [p for p in PHASES if summary[p]]
    pairs = [("B", "A")] + ([("B", "C")] if summary["C"] else [])
    lines += ["", "| all rounds | " + " | ".join(f"{p}: {PHASES[p]}" for p in phases) + " | "
              + " | ".join(f"{x}/{y}" for x, y in pairs) + " |", "| --- " * (1 + len(phases) + len(pairs)) + "|"]
    for label, key in (("plain output tok/s", "plain_tok_s"), ("plain TPOT p50 (ms)", "plain_tpot_ms_p50"),
                       ("plain TTFT p50 (ms)", "plain_ttft_ms_p50"),
                       ("beside (constrained in B, control in C): TPOT p50 (ms)", "beside_tpot_ms_p50"),
                       ("beside: TTFT p50 (ms)", "beside_ttft_ms_p50"),
                       ("all output tok/s (plain + beside)", "all_tok_s")):
        values = {p: summary[p].get(key, summary[p]["plain_tok_s"] if key == "all_tok_s" else None) for p in phases}
        row = [values[p] for p in phases] + [ratio(values[x], values[y]) for x, y in pairs]
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in row) + " |")
    b = summary["B"]
    lines += ["", "Within B, constrained TPOT / plain TPOT (p50s): "
              f"{cell(summary['constrained_over_plain_tpot_in_B'])}; constrained answers valid: "
              f"{b['constrained_valid']} of {b['constrained_requests']} ({b['constrained_parsed']} parse as JSON)."]
    return "\n".join(lines)


@contextlib.contextmanager
def ovllm_serve(port: int, model: str | None, log: Path, *flags: str) -> Iterator[subprocess.Popen]:
    """`ovllm serve` (no MODEL: the demo model) on 127.0.0.1:port until the block ends, its output in `log`.
    served.serving always names a model, which would not run the demo as the demo (its exact arithmetic)."""
    require_free_port(port)
    command = [*OVLLM, "serve", *([model] if model else []), "--host", "127.0.0.1", "--port", str(port), *flags]
    print("+", " ".join(command), f"> {log}", file=sys.stderr, flush=True)
    with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield process
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="what `ovllm serve` serves (default: its demo model)")
    parser.add_argument("--plain", type=int, default=32, help="concurrent plain requests per phase")
    parser.add_argument("--constrained", type=int, default=8, help="concurrent json_schema requests in phase B")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the phases A, B (and C)")
    parser.add_argument("--control", action="store_true",
                        help="also phase C: the plain requests beside the constrained ones' prompts unconstrained, "
                        "each held to its constrained twin's token count (the same batch as B without a grammar)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8942)
    parser.add_argument("--log", type=Path, default=Path("/tmp/ovllm-structured-output-serve.log"),
                        help="the server's output")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "structured_output.json")
    args = parser.parse_args()
    if args.plain < 1 or args.constrained < 1 or args.rounds < 1 or args.max_tokens < 2:
        parser.error("--plain, --constrained and --rounds must be at least 1, --max-tokens at least 2")

    import openvino_genai

    base = f"http://127.0.0.1:{args.port}"
    plain = plain_bodies(args.plain, args.max_tokens)
    constrained = constrained_bodies(args.constrained, args.max_tokens)
    flags = ["--max-model-len", str(args.max_model_len)]
    phases = ["A", "B", "C"] if args.control else ["A", "B"]
    runs: list[tuple[str, list[Answer], list[Answer], dict]] = []
    with ovllm_serve(args.port, args.model, args.log, *flags) as server:
        # Warm-up: every prompt's prefix cached, the grammar compiled, before anything is measured.
        _, warm = asyncio.run(run_phase(base, [{**body, "max_tokens": 4} for body in plain], constrained))
        print(f"warm-up: constrained answers {[validate(a.text) for a in warm]}, tokens {[a.tokens for a in warm]}",
              file=sys.stderr, flush=True)
        beside = {"A": [], "B": constrained, "C": control_bodies(constrained, [a.tokens for a in warm])}
        for number in range(1, args.rounds + 1):
            for phase in phases:
                plain_answers, beside_answers = asyncio.run(run_phase(base, plain, beside[phase]))
                wrong = [a.tokens for a in plain_answers if a.tokens != args.max_tokens]
                if wrong:
                    raise RuntimeError(f"plain requests with ignore_eos produced {wrong} tokens, not {args.max_tokens}")
                record = {"phase": phase, "round": number} | figures(phase, plain_answers, beside_answers)
                runs.append((phase, plain_answers, beside_answers, record))
                brief = {k: ({n: x for n, x in v.items() if n != "failures"} if isinstance(v, dict) else v)
                         for k, v in record.items()}
                print(f"round {number} phase {phase}: {json.dumps(brief)}", flush=True)
        assert server.poll() is None, "ovllm serve died during the benchmark"
    summary = summarize(runs)
    report = tables(runs, summary)
    print(report)
    # machine(): lscpu's model name, the CPU's ISA flags, cores, memory, OpenVINO's version (its llama.cpp build
    # options are not about this benchmark).
    host = {k: v for k, v in machine().items() if not k.startswith("cmake_") and k != "build_key"}
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "server": {"model": args.model or "demo (SmolLM2-135M-Instruct Q4_1 GGUF)", "flags": flags},
               "machine": host | {"openvino_genai": openvino_genai.__version__},
               "schema": SCHEMA, "control_max_tokens": [b["max_tokens"] for b in beside["C"]] if args.control else None,
               "summary": summary, "rounds": [record for *_, record in runs], "markdown": report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    # An answer that ended by itself must be valid; one cut at max_tokens may not be (it is counted, not failed).
    broken = [f for *_, r in runs for f in r.get("constrained", {}).get("failures", [])
              if f["finish_reason"] != "length"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
