"""The conversion of a Hugging Face model directory to OpenVINO IR: optimum-intel's export (model,
tokenizer and detokenizer through openvino-tokenizers, which carry the chat template), then NNCF
weight compression for int8 and int4.

This module imports torch, optimum-intel and NNCF: only the `convert` extra has them, and only a
conversion imports this module, so `ovllm serve` on IR runs with the `engine` extra alone.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from importlib.metadata import version
from pathlib import Path

import nncf
import openvino as ov
from optimum.exporters.openvino import main_export
from optimum.exporters.tasks import TasksManager
from optimum.intel import OVConfig
from optimum.intel.utils.import_utils import is_transformers_version
from transformers.utils import logging as transformers_logging

from ovllm_engine.onboard import architectures, from_gguf, tokenizer_check
from ovllm_engine.onboard.options import ConversionOptions
from ovllm_engine.onboard.progress import Steps, on_terminal
from ovllm_engine.onboard.source import IR_MODEL_FILE, ModelError

log = logging.getLogger("ovllm.onboard")

TASK = "text-generation-with-past"
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                      "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
COMPRESSION_MODES = {
    ("int8", False): nncf.CompressWeightsMode.INT8_ASYM,
    ("int8", True): nncf.CompressWeightsMode.INT8_SYM,
    ("int4", False): nncf.CompressWeightsMode.INT4_ASYM,
    ("int4", True): nncf.CompressWeightsMode.INT4_SYM,
}
# The element type of the weights each format must leave in the IR (checked after conversion).
EXPECTED_WEIGHT_TYPES = {
    ("fp32", False): "f32",
    ("fp16", False): "f16",
    ("int8", False): "u8",
    ("int8", True): "i8",
    ("int4", False): "u4",
    ("int4", True): "i4",
}


def check_exportable(hf_dir: Path) -> None:
    """Refuse, before loading anything, an architecture optimum-intel cannot export for generation, or not
    with the transformers installed (its per-architecture version limits)."""
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    try:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="openvino", model_type=model_type, task=TASK, library_name="transformers")
    except (KeyError, ValueError):
        raise ModelError(
            f"{hf_dir}: optimum-intel cannot export the architecture {model_type!r} for text generation: "
            "serve a supported architecture (README: Architectures), or convert it yourself to OpenVINO IR "
            "with a tokenizer and detokenizer and serve that directory"
        ) from None
    export_config = getattr(constructor, "func", constructor)
    lowest = getattr(export_config, "MIN_TRANSFORMERS_VERSION", None)
    highest = getattr(export_config, "MAX_TRANSFORMERS_VERSION", None)
    too_old = lowest and is_transformers_version("<", str(lowest))
    too_new = highest and is_transformers_version(">", str(highest))
    if too_old or too_new:
        bounds = " and ".join(part for part in (lowest and f">= {lowest}", highest and f"<= {highest}") if part)
        raise ModelError(
            f"{hf_dir}: optimum-intel {version('optimum-intel')} exports the architecture {model_type!r} only with "
            f"transformers {bounds}, and ovllm's converter has transformers {version('transformers')}: this "
            "architecture cannot be converted by this ovllm"
        )
    if model_type not in architectures.TESTED:
        log.warning("the architecture %r is not among those ovllm checks against transformers (README: "
                    "Architectures): compare the converted model's first answers with the original's", model_type)


def export_gguf(gguf: Path, out: Path, options: ConversionOptions, title: str) -> None:
    """Write the IR of a GGUF file's weights, dequantized by transformers' GGUF loader, in the
    requested weight format, with GenAI's tokenizer of the same file (transformers' own tokenizer from
    a GGUF can be wrong, see tokenizer_check.py)."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="ovllm-gguf-hf-", dir=out.parent) as scratch:
        with Steps(title, [f"dequantizing {gguf.name} with transformers"]) as progress, progress.step(
                f"dequantizing {gguf.name} with transformers"):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            model.save_pretrained(scratch)
            del model
        export_ir(Path(scratch), out, options, title, gguf=gguf)


def export_ir(hf_dir: Path, out: Path, options: ConversionOptions, title: str, gguf: Path | None = None) -> None:
    """Write the IR of `hf_dir` into the empty directory `out`. gguf: the file hf_dir's weights came
    from, whose tokenizer (read by GenAI) is the one to write."""
    check_exportable(hf_dir)
    compress = options.weight_format in ("int8", "int4")
    steps = ["exporting with optimum-intel"]
    if compress:
        steps.append(f"compressing weights to {options.label()} with NNCF")
    steps.append("checking the result")
    if not on_terminal():  # transformers' own weight-loading bar would print carriage returns into logs
        transformers_logging.disable_progress_bar()
    with Steps(title, steps) as progress:
        with progress.step(steps[0]), warnings.catch_warnings():
            # torch's tracer warns about every data-dependent branch it freezes: noise to a user,
            # kept with --log-level DEBUG.
            if not log.isEnabledFor(logging.DEBUG):
                warnings.simplefilter("ignore")
            # An explicit OVConfig stops optimum's own int8 default for models over 1B parameters:
            # dtype None keeps the source's precision, fp32 and fp16 ask for that one.
            dtype = options.weight_format if options.weight_format in ("fp32", "fp16") else None
            main_export(
                model_name_or_path=str(hf_dir),
                output=out,
                task=TASK,
                ov_config=OVConfig(dtype=dtype),
                convert_tokenizer=gguf is None,
                local_files_only=True,
                trust_remote_code=options.trust_remote_code,
            )
        if compress:
            with progress.step(steps[1]):
                _compress_weights(out, options)
        with progress.step(steps[-1]):
            if gguf is not None:
                # optimum copies transformers' tokenizer files, which for a GGUF may be wrong (see
                # tokenizer_check.py): only GenAI's tokenizer of the file goes with the model.
                for name in HF_TOKENIZER_FILES:
                    (out / name).unlink(missing_ok=True)
                from_gguf.write_tokenizer(gguf, out)
                source_encode, source_name = tokenizer_check.gguf_encoder(gguf, out), f"GenAI's reader of {gguf.name}"
            else:
                source_encode = tokenizer_check.transformers_encoder(hf_dir, options.trust_remote_code)
                source_name = "the transformers tokenizer"
            _check_result(out, options)
            tokenizer_check.check(source_encode, out, source_name)


def _compress_weights(out: Path, options: ConversionOptions) -> None:
    # Data-free weight compression, as `optimum-cli export openvino --weight-format int8|int4` does
    # without a dataset. main_export leaves a model uncompressed whatever its ov_config asks for, so
    # NNCF runs here directly.
    kwargs = {"mode": COMPRESSION_MODES[(options.weight_format, options.sym)]}
    if options.weight_format == "int4":
        kwargs.update(group_size=options.group_size, ratio=options.ratio)
    xml = out / IR_MODEL_FILE
    model = nncf.compress_weights(ov.Core().read_model(xml), **kwargs)
    ov.save_model(model, out / "openvino_model.compressed.xml", compress_to_fp16=False)
    del model
    (out / "openvino_model.compressed.xml").replace(xml)
    (out / "openvino_model.compressed.bin").replace(xml.with_suffix(".bin"))


def weight_types(xml: Path) -> set[str]:
    """Element types of the model's large constants (its weights)."""
    model = ov.Core().read_model(xml)
    types = set()
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and math.prod(op.get_output_shape(0)) >= 1024:
            types.add(op.get_output_element_type(0).get_type_name())
    return types


def _check_result(out: Path, options: ConversionOptions) -> None:
    for name in (IR_MODEL_FILE, *TOKENIZER_FILES):
        if not (out / name).is_file():
            raise ModelError(f"the export produced no {name}: the model's tokenizer may not be convertible by "
                             "openvino-tokenizers; convert it yourself and serve the IR directory")
    expected = EXPECTED_WEIGHT_TYPES.get((options.weight_format, options.sym))
    if expected is not None:
        found = weight_types(out / IR_MODEL_FILE)
        if expected not in found:
            raise ModelError(f"the export to {options.label()} holds weights of types {sorted(found)}, "
                             f"none {expected}: report this with the model's config.json")
    if not ov.Core().read_model(out / TOKENIZER_FILES[0]).has_rt_info("chat_template"):
        log.warning("the converted tokenizer carries no chat template: /v1/chat/completions will refuse requests")
