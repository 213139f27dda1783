"""`ovllm bench quality`: a model's perplexity on a text, computed the way llama.cpp's
`llama-perplexity` computes it so that the two numbers compare, and with --reference how far its
next-token distributions are from another model's (teacher-forced top-1 agreement and KL divergence).

    ovllm bench quality MODEL --text FILE [--reference MODEL2] [--ctx 512] [--max-chunks N] [--json OUT]

MODEL is an OpenVINO IR directory (openvino_model.xml and openvino_tokenizer.xml) or a GGUF file,
turned first into the IR that `ovllm serve` runs for it (onboard/from_gguf.py: GenAI's graph with
the file's exact zero points), in a temporary directory; both then run the same way, on
plain OpenVINO at f32 precision, so that the numbers measure the weights and not the serving engine.

llama.cpp's method (tools/perplexity/perplexity.cpp, `perplexity()`): tokenize the whole text once
with the special tokens the tokenizer adds by default (BOS for Llama 2, nothing for Qwen or SmolLM2);
cut the tokens into consecutive chunks of n_ctx (whole chunks only, at least two); run each chunk as
a fresh sequence, its first token replaced by BOS when the tokenizer adds one; score only the second
half, the logits at positions n_ctx/2 .. n_ctx-2 against the tokens that follow them (n_ctx/2 - 1
per chunk, 255 at 512), so every scored token has at least half a window of context. PPL is
exp(mean negative log-likelihood) over all scored tokens.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("ovllm.bench")

ROWS_PER_BLOCK = 64  # log-softmax in float64 over this many positions at a time: bounded memory


def add_arguments(parser) -> None:
    parser.add_argument("model", help="OpenVINO IR directory or GGUF file")
    parser.add_argument("--text", required=True, help="UTF-8 text file to score (benchmarks/texts/quality.txt)")
    parser.add_argument("--reference", help="a second model (same tokenizer) to compare with: top-1 agreement, KL")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk, as llama-perplexity's -c (512)")
    parser.add_argument("--max-chunks", type=int, help="score at most this many chunks (llama-perplexity's --chunks)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


def run(args) -> int:
    if args.ctx < 4 or args.ctx % 2:
        raise ValueError(f"--ctx {args.ctx} must be an even number of at least 4")
    if args.max_chunks is not None and args.max_chunks < 1:
        raise ValueError(f"--max-chunks {args.max_chunks} must be at least 1")
    text = Path(args.text).read_text(encoding="utf-8")
    started = time.perf_counter()
    with ExitStack() as stack:
        model = Model(args.model, stack)
        reference = Model(args.reference, stack) if args.reference else None
        tokens, add_bos = tokenize(model.tokenizer, text)
        if reference is not None:
            ref_tokens, _ = tokenize(reference.tokenizer, text)
            if not np.array_equal(tokens, ref_tokens):
                raise ValueError(f"{args.model} and {args.reference} tokenize the text differently "
                                 f"({_first_difference(tokens, ref_tokens)}); a reference must share the tokenizer")
        bos = model.tokenizer.get_bos_token_id() if add_bos else None
        n_chunks = chunk_count(len(tokens), args.ctx, args.max_chunks)
        loaded = time.perf_counter()
        log.info("%d tokens (BOS %s), %d chunks of %d, %d scored per chunk", len(tokens),
                 "added" if add_bos else "not added", n_chunks, args.ctx, args.ctx - args.ctx // 2 - 1)
        scores = Scores()
        for index, chunk in enumerate(chunks(tokens, args.ctx, n_chunks, bos)):
            logits = model.logits(chunk)
            ref_logits = reference.logits(chunk) if reference is not None else None
            scores.add(logits, chunk, ref_logits)
            log.info("[%d/%d] ppl %.4f", index + 1, n_chunks, scores.ppl)
        seconds = time.perf_counter() - loaded
    result = {
        "model": str(args.model),
        "reference": str(args.reference) if args.reference else None,
        "n_ctx": args.ctx,
        "chunks": n_chunks,
        "scored_tokens": scores.count,
        "ppl": scores.ppl,
        "ref_ppl": scores.ref_ppl if reference is not None else None,
        "top1_agreement": scores.top1_agreement if reference is not None else None,
        "kl": scores.kl if reference is not None else None,
        "seconds": seconds,
        "load_seconds": loaded - started,
    }
    print(table(result), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def table(result: dict) -> str:
    rows = [("model", result["model"]), ("n_ctx", result["n_ctx"]),
            ("chunks", result["chunks"]), ("scored tokens", result["scored_tokens"]),
            ("PPL", f"{result['ppl']:.4f}")]
    if result["reference"]:
        rows += [("reference", result["reference"]), ("reference PPL", f"{result['ref_ppl']:.4f}"),
                 ("top-1 agreement", f"{result['top1_agreement']:.4f}"),
                 ("KL(ref || model)", f"{result['kl']:.6f} nats/token")]
    rows.append(("seconds", f"{result['seconds']:.1f} (+{result['load_seconds']:.1f} loading)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# -- the arithmetic: llama.cpp's chunking and scoring -------------------------------------------


def chunk_count(n_tokens: int, n_ctx: int, max_chunks: int | None) -> int:
    """Whole chunks only, and at least two of them, as llama-perplexity demands (2*n_ctx tokens)."""
    if n_tokens < 2 * n_ctx:
        raise ValueError(f"the text is {n_tokens} tokens; perplexity at --ctx {n_ctx} needs at least {2 * n_ctx}")
    return n_tokens // n_ctx if max_chunks is None else min(max_chunks, n_tokens // n_ctx)


def chunks(tokens: np.ndarray, n_ctx: int, n_chunks: int, bos: int | None) -> Iterator[np.ndarray]:
    """Consecutive chunks of n_ctx tokens, the first of each replaced by BOS when there is one."""
    for index in range(n_chunks):
        chunk = tokens[index * n_ctx:(index + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        yield chunk


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (the sums over a 150k vocabulary lose digits in float32)."""
    rows = logits.astype(np.float64)
    rows -= rows.max(axis=-1, keepdims=True)
    rows -= np.log(np.exp(rows).sum(axis=-1, keepdims=True))
    return rows


@dataclass
class Scores:
    """Running sums over the scored positions of every chunk."""

    nll: float = 0.0
    ref_nll: float = 0.0
    count: int = 0
    top1_same: int = 0
    kl_sum: float = 0.0

    def add(self, logits: np.ndarray, chunk: np.ndarray, ref_logits: np.ndarray | None = None) -> None:
        """Score one chunk: logits [n_ctx, vocab] of the sequence `chunk`; the position at i predicts
        chunk[i + 1], and positions n_ctx/2 .. n_ctx-2 count."""
        n_ctx = len(chunk)
        first = n_ctx // 2
        for start in range(first, n_ctx - 1, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, n_ctx - 1)
            targets = chunk[start + 1:stop + 1]
            logp = log_softmax(logits[start:stop])
            token_nll = -logp[np.arange(len(targets)), targets]
            self.nll += float(token_nll.sum())
            self.count += len(targets)
            if ref_logits is None:
                continue
            ref_logp = log_softmax(ref_logits[start:stop])
            self.ref_nll -= float(ref_logp[np.arange(len(targets)), targets].sum())
            self.top1_same += int((logits[start:stop].argmax(-1) == ref_logits[start:stop].argmax(-1)).sum())
            self.kl_sum += float((np.exp(ref_logp) * (ref_logp - logp)).sum())

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def ref_ppl(self) -> float:
        return math.exp(self.ref_nll / self.count)

    @property
    def top1_agreement(self) -> float:
        return self.top1_same / self.count

    @property
    def kl(self) -> float:
        """Mean KL(reference || model) per scored token, in nats (llama-perplexity's KLD)."""
        return self.kl_sum / self.count


# -- tokenizing as llama.cpp does ----------------------------------------------------------------


def tokenize(tokenizer, text: str) -> tuple[np.ndarray, bool]:
    """The text's ids with the special tokens the tokenizer adds by default (llama.cpp tokenizes with
    add_special=true, which adds BOS where the model's vocabulary says so), and whether that is BOS.

    GenAI's GGUF tokenizers truncate at a length baked into the graph (8192 for SmolLM2, keeping the
    last tokens) whatever `truncation` says; a longer text is then tokenized in pieces cut after a
    newline, which is a pre-token boundary for byte-level BPE, and accepted only if the pieces
    reproduce the truncated whole exactly."""
    probe = "The quick brown fox."
    with_special = _ids(tokenizer, probe, True)
    plain = _ids(tokenizer, probe, False)
    n_prefix = len(with_special) - len(plain)
    if n_prefix < 0 or not np.array_equal(with_special[n_prefix:], plain):
        raise ValueError("the tokenizer adds special tokens after the text; llama.cpp's perplexity refuses "
                         "such vocabularies (add_eos)")
    prefix = with_special[:n_prefix]
    bos = tokenizer.get_bos_token_id()
    add_bos = n_prefix == 1 and int(prefix[0]) == bos
    if n_prefix and not add_bos:
        raise ValueError(f"the tokenizer adds special tokens {prefix.tolist()} other than BOS ({bos})")
    whole = _ids(tokenizer, text, True)
    if len(_ids(tokenizer, text + "\nend", True)) > len(whole):
        return whole, add_bos
    pieces = [prefix] + [_ids(tokenizer, piece, False) for piece in _pieces(text, max(len(whole) // 4, 1))]
    joined = np.concatenate(pieces)
    n = len(whole)  # the truncated whole is the text's first n tokens, or its last n (truncation side left)
    if len(joined) <= n or not (np.array_equal(joined[:n], whole) or np.array_equal(joined[-n:], whole)):
        raise ValueError(f"the tokenizer truncates at {len(whole)} tokens and the text does not tokenize the "
                         f"same in pieces; use a shorter text")
    return joined, add_bos


def _ids(tokenizer, text: str, add_special_tokens: bool) -> np.ndarray:
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids.data
    return np.asarray(ids[0], dtype=np.int64)


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """The text in pieces of about max_chars, each cut after a newline that a non-space follows."""
    piece: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if piece and size + len(line) > max_chars and line[:1].strip() and piece[-1].endswith("\n"):
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece:
        yield "".join(piece)


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    n = min(len(a), len(b))
    unequal = np.flatnonzero(a[:n] != b[:n])
    if len(unequal):
        return f"first at token {int(unequal[0])}: {int(a[unequal[0]])} vs {int(b[unequal[0]])}"
    return f"{len(a)} vs {len(b)} tokens"


# -- the model: a stateful LLM IR on plain OpenVINO -----------------------------------------------


class Model:
    """A stateful LLM IR compiled for CPU at f32, run one fresh sequence at a time for its logits at
    every position, with its GenAI tokenizer."""

    def __init__(self, source: str, stack: ExitStack):
        import openvino as ov
        import openvino_genai as ov_genai

        path = Path(source)
        if path.is_file() and path.suffix == ".gguf":
            # The IR ovllm serves for this file (GenAI's graph, exact zero points: onboard/from_gguf.py).
            from ovllm_engine.onboard import from_gguf

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ovllm-gguf-")))
            log.info("building the OpenVINO IR that ovllm serves for %s", path)
            from_gguf.write_ir(path, workdir)
            path = workdir
        elif not path.is_dir():
            raise ValueError(f"{source} is neither an OpenVINO IR directory nor a .gguf file")
        for name in ("openvino_model.xml", "openvino_tokenizer.xml"):
            if not (path / name).is_file():
                raise ValueError(f"{source} lacks {name}")
        self.tokenizer = ov_genai.Tokenizer(str(path))
        compiled = ov.Core().compile_model(str(path / "openvino_model.xml"), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        self._inputs = {port.get_any_name() for port in compiled.inputs}
        if "input_ids" not in self._inputs:
            raise ValueError(f"{source}: the model has no input_ids input; it is not an LLM IR")
        self._output = compiled.output("logits") if "logits" in compiled.output(0).get_names() else compiled.output(0)
        self._request = compiled.create_infer_request()
        self._stateful = bool(self._request.query_state())

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [len(ids), vocab] of `ids` run as a new sequence (the KV state reset first)."""
        if self._stateful:
            self._request.reset_state()
        n = len(ids)
        feeds = {"input_ids": ids[None].astype(np.int64), "attention_mask": np.ones((1, n), dtype=np.int64),
                 "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, dtype=np.int32)}
        self._request.infer({name: value for name, value in feeds.items() if name in self._inputs})
        logits = self._request.get_tensor(self._output).data
        if logits.shape[-2] != n:
            raise RuntimeError(f"the model gave logits for {logits.shape[-2]} positions of {n}; perplexity needs all")
        return logits[0]
