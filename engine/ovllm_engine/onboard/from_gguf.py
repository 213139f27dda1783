"""OpenVINO IR from a GGUF file, made by OpenVINO GenAI's own GGUF reader: the model graph with the
weights quantized as the file quantizes them, and the tokenizer and detokenizer with the chat
template, exactly as `ovllm serve FILE.gguf` runs them. Engine extra only (no torch).

GenAI writes these files next to the GGUF it reads when asked (`enable_save_ov_model`), so it reads a
link to the file inside a scratch directory: the GGUF's own directory may be read-only (a volume).
And GenAI's GGUF reader (gguflib's gguf_open) opens the file for writing, so a file this process
cannot write (a read-only volume, as engine pods mount theirs, or another user's file) is read from
a copy in that scratch directory instead: "Failed to open ... with gguf_open" otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ovllm_engine import gguf_file

log = logging.getLogger("ovllm.onboard")

TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin",
                   "openvino_detokenizer.xml", "openvino_detokenizer.bin")
MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")


@contextlib.contextmanager
def openable(gguf: Path, scratch_parent: Path | None = None):
    """A path to the GGUF in a scratch directory (under scratch_parent) that GenAI can open: a link
    to the file, or a copy of it when this process cannot write the file."""
    with tempfile.TemporaryDirectory(prefix="ovllm-gguf-", dir=scratch_parent) as scratch:
        path = Path(scratch) / "model.gguf"
        if os.access(gguf, os.W_OK):
            path.symlink_to(gguf.resolve())
        else:
            log.info("copying %s to read it (GenAI opens GGUF files for writing, and this one is read-only)",
                     gguf.name)
            shutil.copyfile(gguf, path)
        yield path


def _saved_by_genai(gguf: Path, build, files: tuple[str, ...], out: Path) -> None:
    with openable(gguf, out) as link:
        build(str(link))
        for name in files:
            shutil.move(link.parent / name, out / name)


def write_tokenizer(gguf: Path, out: Path) -> None:
    """GenAI's tokenizer and detokenizer of the GGUF (chat template included) into `out`."""
    import openvino_genai as ov_genai

    _saved_by_genai(gguf, lambda link: ov_genai.Tokenizer(link, enable_save_ov_model=True), TOKENIZER_FILES, out)


def write_model(gguf: Path, out: Path) -> None:
    """GenAI's model graph of the GGUF (weights as quantized in the file) and its tokenizer into `out`,
    with a config.json of its shape facts (context length, vocabulary, heads) for the server's checks."""
    import openvino_genai as ov_genai

    info = gguf_file.check_servable(gguf)
    # LLMPipeline builds and saves the graph and the tokenizer (and compiles the graph once: seconds).
    _saved_by_genai(gguf, lambda link: ov_genai.LLMPipeline(link, "CPU", enable_save_ov_model=True),
                    MODEL_FILES + TOKENIZER_FILES, out)
    (out / "config.json").write_text(json.dumps(info.as_config(), indent=2) + "\n")


def write_ir(gguf: Path, out: Path) -> int:
    """GenAI's graph with exact zero points, and its tokenizer; the number of weights corrected."""
    write_model(gguf, out)
    try:
        corrected = exact_zero_points(out, gguf)
    except PatchError as exc:  # a GenAI whose graph differs: its own approximation, said once
        log.warning("GenAI's graph of %s is served with its rounded zero points: %s", gguf.name, exc)
        corrected = 0
    return corrected


# --- exact zero points ---------------------------------------------------------------------------
# A Q4_1 block holds 32 four-bit codes q, a scale d and a minimum m (both f16): w = d*q + m, that is
# d*(q - z) with z = -m/d. GenAI 2026.4 (gguf_utils/building_blocks.cpp, make_int4_weights) stores z
# rounded to a 4-bit integer, shifting every block by up to half a step: 8-9% RMS error on each of
# SmolLM2's matrices, greedy answers that part from the file's within a few tokens, perplexity 32.7
# instead of 27.1. The codes and scales it stores are the file's, so replacing its zero points with
# the exact -m/d (f32) makes its graph compute the file's weights.
Q4_1_BLOCK_BYTES = 20  # f16 d, f16 m, 16 bytes of codes (low nibbles: weights 0-15, high: 16-31)
Q4_1_BLOCK_WEIGHTS = 32
ROUNDED_MINIMUM_TYPES = ("Q4_1", "Q4_K")  # asymmetric 4-bit types whose minimum GenAI rounds


class PatchError(RuntimeError):
    """GenAI's graph is not shaped as expected: its zero points cannot be replaced safely."""


def _q4_1_blocks(gguf: Path, tensor: gguf_file.TensorInfo):
    import numpy as np

    cols, rows = tensor.shape[0], tensor.shape[1]
    count = rows * cols // Q4_1_BLOCK_WEIGHTS
    raw = np.memmap(gguf, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(count, Q4_1_BLOCK_BYTES))
    return raw, rows, cols


def _row0_codes_in_file(raw, cols: int) -> bytes:
    import numpy as np

    qs = np.asarray(raw[:cols // Q4_1_BLOCK_WEIGHTS, 4:])
    return np.concatenate([np.concatenate([block & 15, block >> 4]) for block in qs]).astype(np.uint8).tobytes()


def _row0_codes_in_graph(codes, cols: int) -> bytes:
    import numpy as np

    packed = codes.get_data().view(np.uint8).ravel()[:cols // 2]  # u4 pairs: even index in the low nibble
    return np.stack([packed & 15, packed >> 4], axis=1).ravel().astype(np.uint8).tobytes()


def _unpermute_rows(values, heads: int):
    """llama.cpp stores Q and K rows permuted for its rope layout; GenAI un-permutes them (as transformers
    does), so the zero points must follow."""
    return values.reshape(heads, values.shape[0] // heads // 2, 2, *values.shape[1:]).swapaxes(1, 2).reshape(
        values.shape)


def exact_zero_points(model_dir: Path, gguf: Path) -> int:
    """Replace the rounded zero points of every Q4_1 weight in GenAI's graph of `gguf` (saved in
    model_dir) with the file's exact ones; return how many weights were changed."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    info = gguf_file.read_info(gguf)
    wanted = {}
    for name, tensor in info.tensors.items():
        if tensor.type_name == "Q4_1" and len(tensor.shape) == 2:
            raw, rows, cols = _q4_1_blocks(gguf, tensor)
            wanted.setdefault((rows, cols, _row0_codes_in_file(raw, cols)), []).append(name)
    if not wanted:
        return 0
    xml = model_dir / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    patched = set()
    for subtract in [op for op in model.get_ordered_ops() if op.get_type_name() == "Subtract"]:
        codes_convert = subtract.input(0).get_source_output().get_node()
        codes = codes_convert.input(0).get_source_output().get_node() if codes_convert.get_input_size() else None
        if codes is None or codes.get_type_name() != "Constant" or codes.get_output_element_type(0) != ov.Type.u4:
            continue
        shape = list(codes.get_output_shape(0))  # [rows, groups, 32]
        if len(shape) != 3 or shape[2] != Q4_1_BLOCK_WEIGHTS:
            continue
        rows, cols = shape[0], shape[1] * shape[2]
        names = wanted.get((rows, cols, _row0_codes_in_graph(codes, cols)), [])
        if len(names) != 1:
            continue  # not a Q4_1 weight of the file (Q4_0, Q4_K), or two alike: left as GenAI built it
        name = names[0]
        (multiply,) = [target.get_node() for target in subtract.output(0).get_target_inputs()]
        raw, _, _ = _q4_1_blocks(gguf, info.tensors[name])
        scale = np.asarray(raw[:, 0:2]).copy().view(np.float16).astype(np.float32)
        minimum = np.asarray(raw[:, 2:4]).copy().view(np.float16).astype(np.float32)
        zero = (-minimum / scale).reshape(rows, shape[1])
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        heads = {"attn_q": info.head_count, "attn_k": info.head_count_kv}.get(kind)
        if heads:
            zero = _unpermute_rows(zero, heads)
        exact = ops.multiply(ops.subtract(ops.convert(codes, "f32"), ops.constant(zero[..., None])),
                             ops.convert(multiply.input(1).get_source_output(), "f32"))
        # GenAI's chain goes on Multiply -> [Reshape] -> Convert(f32): the exact f32 weights replace that
        # Convert, so they are never rounded to f16 on the way.
        node = multiply
        reshape = None
        while True:
            (follower,) = [target.get_node() for target in node.output(0).get_target_inputs()]
            if follower.get_type_name() == "Reshape":
                reshape, node = follower, follower
                continue
            break
        if follower.get_type_name() != "Convert":
            raise PatchError(f"{name}: GenAI's weight ends in {follower.get_type_name()}, not Convert")
        value = exact.output(0)
        if reshape is not None:
            value = ops.reshape(value, reshape.input(1).get_source_output(), False).output(0)
        follower.output(0).replace(value)
        patched.add(name)
    missing = sorted(set(name for names in wanted.values() for name in names) - patched)
    if missing:
        raise PatchError(f"{len(missing)} Q4_1 weights not found in GenAI's graph (e.g. {missing[0]})")
    ov.save_model(model, model_dir / "openvino_model.exact.xml", compress_to_fp16=False)
    del model
    (model_dir / "openvino_model.exact.xml").replace(xml)
    (model_dir / "openvino_model.exact.bin").replace(xml.with_suffix(".bin"))
    return len(patched)
