"""OpenVINO IR from a GGUF file, made by OpenVINO GenAI's own GGUF reader: the model graph with the
weights quantized as the file quantizes them, and the tokenizer and detokenizer with the chat
template, exactly as `ovllm serve FILE.gguf` runs them. Engine extra only (no torch).

GenAI writes these files next to the GGUF it reads when asked (`enable_save_ov_model`), so it reads a
link to the file inside a scratch directory: the GGUF's own directory may be read-only (a volume).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ovllm_engine import gguf_file

TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin",
                   "openvino_detokenizer.xml", "openvino_detokenizer.bin")
MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")


def _saved_by_genai(gguf: Path, build, files: tuple[str, ...], out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ovllm-gguf-", dir=out) as scratch:
        link = Path(scratch) / "model.gguf"
        link.symlink_to(gguf.resolve())
        build(str(link))
        for name in files:
            shutil.move(Path(scratch) / name, out / name)


def write_tokenizer(gguf: Path, out: Path) -> None:
    """GenAI's tokenizer and detokenizer of the GGUF (chat template included) into `out`."""
    import openvino_genai as ov_genai

    _saved_by_genai(gguf, lambda link: ov_genai.Tokenizer(link, enable_save_ov_model=True), TOKENIZER_FILES, out)


def write_model(gguf: Path, out: Path) -> None:
    """GenAI's model graph of the GGUF (weights as quantized in the file) into `out`, with a config.json
    of its shape facts (context length, vocabulary, heads) for the server's checks."""
    import openvino_genai as ov_genai

    info = gguf_file.check_servable(gguf)
    # LLMPipeline builds and saves the graph (and compiles it once: seconds for a small model).
    _saved_by_genai(gguf, lambda link: ov_genai.LLMPipeline(link, "CPU", enable_save_ov_model=True), MODEL_FILES, out)
    (out / "config.json").write_text(json.dumps(info.as_config(), indent=2) + "\n")


def write_ir(gguf: Path, out: Path) -> None:
    write_model(gguf, out)
    write_tokenizer(gguf, out)
