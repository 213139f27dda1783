"""Every new schema, regex or grammar is compiled once, by GenAI itself, before it reaches the engine.

GenAI compiles a request's StructuredOutputConfig (with xgrammar) inside `pipeline.step()`, not in
`add_request()`; when it cannot, step() raises and the pipeline stays broken for every request in it
(measured with openvino-genai 2026.4; tests/engine/test_grammar_check.py shows it). One client's
malformed schema would take the server down. So a helper process holds a sacrificial
ContinuousBatchingPipeline over a tiny model generated here as a GGUF file (one layer, hidden size
16, as many logits as the served model has) with the served model's own tokenizer, and runs each
constraint there first: one step of one token. A constraint it cannot compile is the client's 400
with xgrammar's message; the helper then rebuilds its pipeline (under a second). With the served
model's tokenizer, xgrammar compiles against the same vocabulary as in the engine, so the verdict and
the time it takes are the engine's; one that takes longer than CHECK_TIMEOUT is refused, since the
engine would stall every batched request as long to compile it.

Verdicts are remembered (by the constraint), so a client that sends one schema again and again pays
the check once; identical constraints checked at once share one check. The xgrammar Python package
would be lighter, but it imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import shutil
import signal
import struct
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from ovllm_engine.server.messages import Constraint, Sampling

log = logging.getLogger(__name__)

# How long one compile may take: the engine would stall every request batched with it as long.
CHECK_TIMEOUT = 5.0
STARTUP_TIMEOUT = 300.0  # building the helper's pipeline (the served model's tokenizer) is not counted
REMEMBERED = 512  # verdicts kept
# xgrammar's and GenAI's messages begin with a timestamp or "Exception from", and a source location:
# "[17:43:29] /path/x.cc:898: ", "Exception from /path/x.cpp:62:\n".
SOURCE_PREFIX = re.compile(r"^\s*(\[[\d:]+\]\s*|Exception from\s+)?\S*\.(cc|cpp|hpp|h):\d+:\s*")
MAX_MESSAGE_CHARS = 300


class GrammarChecker:
    """The server's side: `await check(constraint)` is None when it compiles, else why not."""

    def __init__(self, model_path: str | None = None, vocab_size: int | None = None, timeout: float = CHECK_TIMEOUT):
        self.model_path, self.vocab_size = model_path, vocab_size
        self.timeout = timeout
        self._verdicts: OrderedDict[Constraint, str | None] = OrderedDict()
        self._pending: dict[Constraint, asyncio.Future] = {}
        self._process = None
        self._conn = None
        self._scratch: str | None = None  # the helper's directory (its one-layer GGUF)
        self._ready = False
        self._lock = asyncio.Lock()  # one check at a time: the helper has one pipeline

    def start(self) -> None:
        """Start the helper now (it builds its pipeline while the server starts serving)."""
        if self._process is None:
            self._start()

    async def check(self, constraint: Constraint) -> str | None:
        if constraint in self._verdicts:
            self._verdicts.move_to_end(constraint)
            return self._verdicts[constraint]
        task = self._pending.get(constraint)
        if task is None:
            task = self._pending[constraint] = asyncio.ensure_future(self._check_in_turn(constraint))
            task.add_done_callback(lambda _: self._pending.pop(constraint, None))
        # shielded: a client that goes away must not release the helper while its check still runs
        return await asyncio.shield(task)

    async def _check_in_turn(self, constraint: Constraint) -> str | None:
        async with self._lock:
            verdict, lasting = await asyncio.get_running_loop().run_in_executor(None, self._check_blocking,
                                                                                constraint)
        if lasting:  # a timeout may be the machine's load, not the constraint: it is not remembered
            self._verdicts[constraint] = verdict
            if len(self._verdicts) > REMEMBERED:
                self._verdicts.popitem(last=False)
        return verdict

    def _check_blocking(self, constraint: Constraint) -> tuple[str | None, bool]:
        if self._process is None or not self._process.is_alive():
            self._start()
        conn = self._conn
        try:
            if not self._ready:
                if not conn.poll(STARTUP_TIMEOUT):
                    self.close()
                    raise RuntimeError("the grammar checker did not start")
                conn.recv()  # "ready"
                self._ready = True
            conn.send(constraint)
            if not conn.poll(self.timeout):
                self.close()  # still compiling: the helper is killed, a fresh one serves the next check
                return f"it did not compile within {self.timeout:g}s", False
            return conn.recv(), True
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError, AttributeError):
            self.close()  # the helper died on it (a crash in the compiler), or the server is stopping
            return "it could not be compiled (the compiler failed on it)", True

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._ready = False
        # made and removed here: close() kills the helper, which could never clean up after itself
        self._scratch = tempfile.mkdtemp(prefix="ovllm-grammar-check-")
        self._process = context.Process(target=_checker_main,
                                        args=(child, self._scratch, self.model_path, self.vocab_size),
                                        name="ovllm-grammar-check", daemon=True)
        self._process.start()
        child.close()

    def close(self) -> None:
        process, conn, scratch = self._process, self._conn, self._scratch
        self._process = self._conn = self._scratch = None
        if process is not None:
            process.kill()
            process.join(5)
        if conn is not None:
            conn.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def public_error(message: str) -> str:
    """xgrammar's message without timestamps and build paths, in one line of bounded length (it may
    quote the whole schema)."""
    lines = [SOURCE_PREFIX.sub("", line).strip() for line in message.splitlines()]
    text = " ".join(line for line in lines if line) or "it could not be compiled"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


# -- the helper process ---------------------------------------------------------------------------

def _checker_main(conn, scratch: str, model_path: str | None, vocab_size: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when it stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    checker = _SacrificialPipeline(Path(scratch), model_path, vocab_size)
    checker.build()
    conn.send("ready")
    while True:
        try:
            constraint = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(checker.check(constraint))


class _SacrificialPipeline:
    def __init__(self, scratch: Path, model_path: str | None, vocab_size: int | None):
        self.scratch, self.model_path, self.vocab_size = scratch, model_path, vocab_size
        self.pipeline = None
        self.request_id = 0
        self._model: Path | None = None
        self._tokenizer = None

    def _scheduler(self):
        import openvino_genai as ov_genai

        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = 0
        scheduler.num_kv_blocks = 4
        scheduler.max_num_seqs = 1
        scheduler.max_num_batched_tokens = 32
        return scheduler

    def build(self) -> None:
        """With the served model's tokenizer when its vocabulary size is known; else (or when that
        fails) with the tiny model's own byte-level one: the same verdicts, less telling timings."""
        import openvino_genai as ov_genai

        started = time.monotonic()
        if self._model is None and self.model_path and self.vocab_size:
            try:
                self._model = self.scratch / "check.gguf"
                write_check_model(self._model, self.vocab_size)
                self._tokenizer = ov_genai.Tokenizer(self.model_path)
                self._new_pipeline()
                failed = self.check(Constraint(regex="[a-z]+"))  # a vocabulary that does not fit the logits fails
                if failed is not None:
                    raise RuntimeError(failed)
            except Exception as exc:  # noqa: BLE001 (any failure: the self-contained model below)
                log.warning("the grammar checker could not use the served model's tokenizer (%s); it uses its own",
                            public_error(str(exc)))
                self._model = self._tokenizer = self.pipeline = None
        if self._model is None:
            self._model = self.scratch / "check-own.gguf"
            write_check_model(self._model)
        if self.pipeline is None:
            self._new_pipeline()
        log.debug("grammar check pipeline built in %.2fs", time.monotonic() - started)

    def _new_pipeline(self) -> None:
        import openvino_genai as ov_genai

        properties = {"INFERENCE_NUM_THREADS": 1}
        if self._tokenizer is not None:
            self.pipeline = ov_genai.ContinuousBatchingPipeline(str(self._model), self._tokenizer, self._scheduler(),
                                                                "CPU", **properties)
        else:
            self.pipeline = ov_genai.ContinuousBatchingPipeline(str(self._model), self._scheduler(), "CPU",
                                                                properties)

    def check(self, constraint: Constraint) -> str | None:
        import numpy as np
        import openvino as ov

        from ovllm_engine.server.engine_process import generation_config

        if self.pipeline is None:
            self._new_pipeline()
        try:
            config = generation_config(Sampling(max_new_tokens=1, constraint=constraint), self.pipeline.get_config())
            self.request_id += 1
            handle = self.pipeline.add_request(self.request_id, ov.Tensor(np.array([[97]], dtype=np.int64)), config)
            self.pipeline.step()
        except Exception as exc:  # noqa: BLE001 (whatever GenAI raises: the pipeline is broken now, rebuilt next)
            self.pipeline = None
            return public_error(str(exc)) if str(exc).strip() else f"it could not be compiled ({type(exc).__name__})"
        handle.cancel()
        while handle.can_read():
            handle.read()
        return None


# -- the tiny model ------------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: the printable stand-in character of each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_check_model(path: Path, vocab_size: int = 257, hidden: int = 16, ffn: int = 32) -> None:
    """A one-layer Llama GGUF (version 3) that GenAI's GGUF reader builds: random F16 weights, a
    byte-level BPE vocabulary of the 256 bytes, placeholders up to vocab_size (so that its logits
    have the served model's size), and an end-of-text token."""
    import numpy as np

    tokens = [*_byte_symbols(), *(f"<|unused{i}|>" for i in range(max(0, vocab_size - 257))), "<|endoftext|>"]
    eos = len(tokens) - 1
    metadata = [
        ("general.architecture", "str", "llama"), ("general.name", "str", "ovllm-grammar-check"),
        ("general.file_type", "u32", 1), ("llama.context_length", "u32", 64), ("llama.vocab_size", "u32", len(tokens)),
        ("llama.embedding_length", "u32", hidden), ("llama.block_count", "u32", 1),
        ("llama.feed_forward_length", "u32", ffn), ("llama.attention.head_count", "u32", 2),
        ("llama.attention.head_count_kv", "u32", 2), ("llama.rope.dimension_count", "u32", hidden // 2),
        ("llama.rope.freq_base", "f32", 10000.0), ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "default"),
        ("tokenizer.ggml.tokens", "[str]", tokens),
        ("tokenizer.ggml.token_type", "[i32]", [1] * 256 + [4] * (eos - 256) + [3]),
        ("tokenizer.ggml.merges", "[str]", [f"{tokens[ord('a')]} {tokens[ord('b')]}"]),
        ("tokenizer.ggml.bos_token_id", "u32", eos), ("tokenizer.ggml.eos_token_id", "u32", eos),
        ("tokenizer.ggml.unknown_token_id", "u32", eos), ("tokenizer.ggml.padding_token_id", "u32", eos),
        ("tokenizer.ggml.add_bos_token", "bool", False), ("tokenizer.ggml.add_space_prefix", "bool", False),
    ]
    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    ones = np.ones(hidden, dtype=np.float32)
    tensors = [("token_embd.weight", weight(len(tokens), hidden)), ("output_norm.weight", ones),
               ("output.weight", weight(len(tokens), hidden)), ("blk.0.attn_norm.weight", ones),
               ("blk.0.ffn_norm.weight", ones)]
    attention = ("attn_q", "attn_k", "attn_v", "attn_output")
    tensors += [(f"blk.0.{name}.weight", weight(hidden, hidden)) for name in attention]
    tensors += [("blk.0.ffn_gate.weight", weight(ffn, hidden)), ("blk.0.ffn_up.weight", weight(ffn, hidden)),
                ("blk.0.ffn_down.weight", weight(hidden, ffn))]
    path.write_bytes(_gguf_bytes(metadata, tensors))


_ALIGNMENT = 32
_VALUE_TYPES = {"u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?")}
_STRING, _ARRAY = 8, 9


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _gguf_value(kind: str, value) -> bytes:
    if kind == "str":
        return struct.pack("<I", _STRING) + _gguf_string(value)
    if kind.startswith("["):
        item = kind[1:-1]
        if item == "str":
            return struct.pack("<IIQ", _ARRAY, _STRING, len(value)) + b"".join(_gguf_string(v) for v in value)
        code, fmt = _VALUE_TYPES[item]
        return struct.pack("<IIQ", _ARRAY, code, len(value)) + b"".join(struct.pack(fmt, v) for v in value)
    code, fmt = _VALUE_TYPES[kind]
    return struct.pack("<I", code) + struct.pack(fmt, value)


def _gguf_bytes(metadata: list[tuple[str, str, object]], tensors: list) -> bytes:
    """GGUF as ggml's docs/gguf.md specifies it: header, metadata, tensor infos (dimensions
    innermost first), then the data, each tensor aligned to 32 bytes."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, kind, value in metadata:
        out += _gguf_string(key) + _gguf_value(kind, value)
    data, offsets = bytearray(), []
    for _, array in tensors:
        data += b"\0" * (-len(data) % _ALIGNMENT)
        offsets.append(len(data))
        data += array.tobytes()
    for (name, array), offset in zip(tensors, offsets, strict=True):
        ggml_type = 1 if array.dtype.itemsize == 2 else 0  # F16 or F32
        out += _gguf_string(name) + struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}Q", *array.shape[::-1])
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % _ALIGNMENT)
    return bytes(out + data)
