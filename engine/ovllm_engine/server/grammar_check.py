"""Every new schema, regex or grammar is compiled once, by GenAI itself, before it reaches the engine.

GenAI compiles a request's StructuredOutputConfig (with xgrammar) inside `pipeline.step()`, not in
`add_request()`; when it cannot, step() raises and the pipeline stays broken for every request in it
(measured with openvino-genai 2026.4: each later step raises "cannot be called when we are already in
scheduling phase"). One client's malformed schema would take the server down. So a helper process
holds a sacrificial ContinuousBatchingPipeline over a tiny model, generated here as a GGUF file (a
48 KB one-layer Llama with a 257-token byte-level vocabulary), and runs each constraint there
first: one step of one token. A constraint it cannot compile is the client's 400 with xgrammar's
message; the helper then rebuilds its pipeline (about 0.4 s). Parsing a schema, regex or grammar does
not depend on the vocabulary, so the tiny model's verdict is the engine's.

Verdicts are remembered (by the constraint's text), so a client that sends one schema again and
again pays the check once. The xgrammar Python package would be lighter, but it imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import signal
import struct
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from ovllm_engine.server.messages import Constraint, Sampling

log = logging.getLogger(__name__)

# How long one check may take: a grammar that takes longer to compile than this would stall every
# request batched with it in the engine for as long.
CHECK_TIMEOUT = 10.0
REMEMBERED = 512  # verdicts kept
# xgrammar's and GenAI's messages begin with a timestamp or "Exception from", and a source location:
# "[17:43:29] /path/x.cc:898: ", "Exception from /path/x.cpp:62:\n".
SOURCE_PREFIX = re.compile(r"^\s*(\[[\d:]+\]\s*|Exception from\s+)?\S*\.(cc|cpp|hpp|h):\d+:\s*")
MAX_MESSAGE_CHARS = 300


class GrammarChecker:
    """The server's side: `await check(constraint)` is None when it compiles, else xgrammar's message."""

    def __init__(self, timeout: float = CHECK_TIMEOUT):
        self.timeout = timeout
        self._verdicts: OrderedDict[Constraint, str | None] = OrderedDict()
        self._process = None
        self._conn = None
        self._lock = asyncio.Lock()  # one check at a time: the helper has one pipeline

    async def check(self, constraint: Constraint) -> str | None:
        if constraint in self._verdicts:
            self._verdicts.move_to_end(constraint)
            return self._verdicts[constraint]
        async with self._lock:
            verdict = await asyncio.get_running_loop().run_in_executor(None, self._check_blocking, constraint)
        self._verdicts[constraint] = verdict
        if len(self._verdicts) > REMEMBERED:
            self._verdicts.popitem(last=False)
        return verdict

    def _check_blocking(self, constraint: Constraint) -> str | None:
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            self._conn.send(constraint)
            if not self._conn.poll(self.timeout):
                self.close()  # still compiling: the helper is killed, a fresh one serves the next check
                return f"it did not compile within {self.timeout:g}s"
            return self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self.close()
            raise RuntimeError("the grammar checker process died") from None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_checker_main, args=(child,), name="ovllm-grammar-check", daemon=True)
        self._process.start()
        child.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def public_error(message: str) -> str:
    """xgrammar's message without timestamps and build paths, in one line of bounded length (it may
    quote the whole schema)."""
    lines = [SOURCE_PREFIX.sub("", line).strip() for line in message.splitlines()]
    text = " ".join(line for line in lines if line) or "it could not be compiled"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


# -- the helper process ---------------------------------------------------------------------------

def _checker_main(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when it stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with tempfile.TemporaryDirectory(prefix="ovllm-grammar-check-") as scratch:
        model = Path(scratch) / "check.gguf"
        write_check_model(model)
        checker = _SacrificialPipeline(model)
        while True:
            try:
                constraint = conn.recv()
            except (EOFError, OSError):
                return
            conn.send(checker.check(constraint))


class _SacrificialPipeline:
    def __init__(self, model: Path):
        self.model = model
        self.pipeline = None
        self.request_id = 0

    def _build(self):
        import openvino_genai as ov_genai

        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = 0
        scheduler.num_kv_blocks = 4
        scheduler.max_num_seqs = 1
        scheduler.max_num_batched_tokens = 32
        started = time.monotonic()
        self.pipeline = ov_genai.ContinuousBatchingPipeline(str(self.model), scheduler, "CPU",
                                                            {"INFERENCE_NUM_THREADS": 1})
        log.debug("grammar check pipeline built in %.2fs", time.monotonic() - started)

    def check(self, constraint: Constraint) -> str | None:
        import numpy as np
        import openvino as ov

        from ovllm_engine.server.engine_process import generation_config

        if self.pipeline is None:
            self._build()
        try:
            config = generation_config(Sampling(max_new_tokens=1, constraint=constraint), self.pipeline.get_config())
        except RuntimeError as exc:
            return public_error(str(exc))
        self.request_id += 1
        handle = self.pipeline.add_request(self.request_id, ov.Tensor(np.array([[97]], dtype=np.int64)), config)
        try:
            self.pipeline.step()
        except RuntimeError as exc:  # the pipeline is broken now: the next check gets a new one
            self.pipeline = None
            return public_error(str(exc))
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


def write_check_model(path: Path, hidden: int = 16, ffn: int = 32) -> None:
    """A one-layer Llama GGUF (version 3) that GenAI's GGUF reader builds: random F16 weights, a
    byte-level BPE vocabulary of 256 bytes and an end-of-text token."""
    import numpy as np

    tokens = [*_byte_symbols(), "<|endoftext|>"]
    eos = len(tokens) - 1
    metadata = [
        ("general.architecture", "str", "llama"), ("general.name", "str", "ovllm-grammar-check"),
        ("general.file_type", "u32", 1), ("llama.context_length", "u32", 64), ("llama.vocab_size", "u32", len(tokens)),
        ("llama.embedding_length", "u32", hidden), ("llama.block_count", "u32", 1),
        ("llama.feed_forward_length", "u32", ffn), ("llama.attention.head_count", "u32", 2),
        ("llama.attention.head_count_kv", "u32", 2), ("llama.rope.dimension_count", "u32", hidden // 2),
        ("llama.rope.freq_base", "f32", 10000.0), ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "default"),
        ("tokenizer.ggml.tokens", "[str]", tokens), ("tokenizer.ggml.token_type", "[i32]", [1] * eos + [3]),
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
