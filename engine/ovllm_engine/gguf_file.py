"""What a GGUF file (llama.cpp's format) holds, read from its header: the architecture, the shape
facts the server needs (context length, vocabulary, KV heads) and the types of its tensors.

Standard library only, so that config.py may use it. The `gguf` package (llama.cpp's own reader)
parses every metadata array into numpy objects first: 6.6 s for SmolLM2's 49152-token vocabulary on
these cores, at every server start. This reader skips arrays without decoding them (milliseconds) and
follows the format as specified in ggml's docs/gguf.md (versions 2 and 3).

OpenVINO GenAI's GGUF reader (src/cpp/src/gguf_utils in openvino.genai 2026.4) builds the model
itself; SUPPORTED_* below are the architectures and tensor types it reads, so that anything else is
refused in one line before GenAI fails deep in a model build.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
SUFFIX = ".gguf"
# general.architecture values GenAI's create_from_gguf builds (gguf_modeling.cpp).
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# Tensor types GenAI's loader reads (gguf_quants.cpp: F32/F16 as they are, Q4_0, Q4_1, Q4_K, Q6_K, Q8_0 unpacked).
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q8_0")
# ggml_type numbers (ggml.h) to names, for messages.
TENSOR_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
                11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
                18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
                25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
                39: "MXFP4"}

# Metadata value types (gguf_type): struct formats of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file GenAI can read. The message is one line."""


@dataclass(frozen=True)
class TensorInfo:
    type_name: str  # F32, Q4_1, ...
    shape: tuple[int, ...]  # GGUF order: the innermost (contiguous) dimension first
    offset: int  # of its data, from the start of the file


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    name: str | None  # general.name
    context_length: int | None
    vocab_size: int | None  # {arch}.vocab_size, else the length of tokenizer.ggml.tokens
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None  # head dimension of K, when it is not embedding_length / head_count
    embedding_length: int | None
    feed_forward_length: int | None
    tensor_types: dict[str, int]  # type name -> tensors of that type
    has_tokenizer: bool  # tokenizer.ggml.tokens is there
    tensors: dict[str, TensorInfo]  # by name, e.g. blk.0.attn_q.weight

    def as_config(self) -> dict:
        """The facts in the names of a transformers config.json, as config.py reads them."""
        config = {"model_type": self.architecture, "max_position_embeddings": self.context_length,
                  "vocab_size": self.vocab_size, "num_hidden_layers": self.block_count,
                  "num_attention_heads": self.head_count, "num_key_value_heads": self.head_count_kv,
                  "hidden_size": self.embedding_length, "head_dim": self.key_length,
                  "intermediate_size": self.feed_forward_length}
        return {key: value for key, value in config.items() if value is not None}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.take("<Q")
        raw = self.data[self.at:self.at + size]
        if len(raw) != size:
            raise struct.error("string past the end of the header")
        self.at += size
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int):
        """A scalar or string; an array as its element count (its items are skipped, not decoded)."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.take("<I"), self.take("<Q")
            if item_kind in _SCALARS:
                self.at += struct.calcsize(_SCALARS[item_kind]) * count
            else:
                for _ in range(count):
                    self.value(item_kind)
            return count
        raise GGUFError(f"unknown metadata value type {kind}")


def is_gguf(path: Path) -> bool:
    """A file whose name ends in .gguf (its content is checked by read_info)."""
    return path.suffix.lower() == SUFFIX and path.is_file()


def read_info(path: Path) -> GGUFInfo:
    """The file's metadata and tensor types, or GGUFError naming what is wrong."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(path, data)  # mapped: only the header's pages are read
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        if isinstance(exc, GGUFError):
            raise
        raise GGUFError(f"{path} cannot be read as GGUF ({getattr(exc, 'strerror', None) or exc})") from None


def _parse(path: Path, data) -> GGUFInfo:
    if data[:4] != MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    reader = _Reader(data)
    reader.at = 4
    try:
        version = reader.take("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
        tensor_count, kv_count = reader.take("<Q"), reader.take("<Q")
        metadata = {}
        for _ in range(kv_count):
            key = reader.string()
            metadata[key] = reader.value(reader.take("<I"))
        tensor_types: dict[str, int] = {}
        placed = []
        for _ in range(tensor_count):
            name = reader.string()
            shape = tuple(reader.take("<Q") for _ in range(reader.take("<I")))
            kind = TENSOR_TYPES.get(reader.take("<I"), "unknown")
            placed.append((name, kind, shape, reader.take("<Q")))
            tensor_types[kind] = tensor_types.get(kind, 0) + 1
        alignment = metadata.get("general.alignment", 32)
        data_start = -(-reader.at // alignment) * alignment  # tensor data begins at the next aligned offset
        tensors = {name: TensorInfo(kind, shape, data_start + offset) for name, kind, shape, offset in placed}
    except struct.error:
        raise GGUFError(f"{path} is truncated or damaged: its header ends early") from None
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{path} names no general.architecture: it is not a model GGUF file")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return value if isinstance(value, int) and value > 0 else None

    tokens = metadata.get("tokenizer.ggml.tokens")
    return GGUFInfo(
        architecture=arch,
        name=metadata.get("general.name") if isinstance(metadata.get("general.name"), str) else None,
        context_length=number("context_length"),
        vocab_size=number("vocab_size") or (tokens if isinstance(tokens, int) and tokens > 0 else None),
        block_count=number("block_count"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        key_length=number("attention.key_length"),
        embedding_length=number("embedding_length"),
        feed_forward_length=number("feed_forward_length"),
        tensor_types=tensor_types,
        has_tokenizer=isinstance(tokens, int) and tokens > 0,
        tensors=tensors,
    )


def check_servable(path: Path) -> GGUFInfo:
    """read_info, then refuse what GenAI's GGUF reader cannot build, naming what it can."""
    info = read_info(path)
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: OpenVINO GenAI cannot read GGUF models of the architecture {info.architecture!r}; "
                        f"it reads {', '.join(SUPPORTED_ARCHITECTURES)} (convert other models from their "
                        "Hugging Face checkpoint instead)")
    unreadable = sorted(kind for kind in info.tensor_types if kind not in SUPPORTED_TENSOR_TYPES)
    if unreadable:
        raise GGUFError(f"{path} holds tensors of type {', '.join(unreadable)}, which OpenVINO GenAI cannot read; "
                        f"it reads {', '.join(SUPPORTED_TENSOR_TYPES)} (e.g. Q4_K_M, Q4_0, Q8_0 or F16 files)")
    if not info.has_tokenizer:
        raise GGUFError(f"{path} carries no tokenizer (tokenizer.ggml.tokens): ovllm serves a GGUF with the "
                        "tokenizer inside it")
    return info
