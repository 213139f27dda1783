"""The conversion flags that `ovllm serve` and `ovllm convert` share, with optimum-cli's names
(`--weight-format`, `--group-size`, `--ratio`, `--sym`) and vLLM's (`--revision`, `--download-dir`,
`--trust-remote-code`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from ovllm_engine.config import QUANTIZED_WEIGHTS, ConfigError, EnvSettings

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
# optimum-intel's default int4 settings (its _DEFAULT_4BIT_WQ_CONFIG).
DEFAULT_GROUP_SIZE = 128
DEFAULT_RATIO = 1.0


@dataclass(frozen=True)
class ConversionOptions:
    """How a Hugging Face model becomes IR. weight_format None: the source's own precision."""

    weight_format: str | None = None
    group_size: int | None = None  # int4 only
    ratio: float | None = None  # int4 only: share of weights in int4, the rest in int8
    sym: bool = False
    trust_remote_code: bool = False

    def label(self) -> str:
        """A short name for logs and cache directories: `int4-g128-r1.0-asym`, `int8-asym`, `source`."""
        if self.weight_format is None:
            return "source"
        if self.weight_format == "int4":
            return f"int4-g{self.group_size}-r{self.ratio:g}-{'sym' if self.sym else 'asym'}"
        if self.weight_format == "int8":
            return f"int8-{'sym' if self.sym else 'asym'}"
        return self.weight_format


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model source and conversion",
        "MODEL may be a directory with OpenVINO IR (served as it is), a Hugging Face model directory, "
        "a GGUF file or a directory holding one (served as it is by OpenVINO GenAI's GGUF reader), "
        "or a Hugging Face hub id (downloaded with huggingface_hub, which honours HF_TOKEN, HF_HOME, "
        "HF_ENDPOINT and HF_HUB_OFFLINE). Hugging Face models are converted to OpenVINO IR once and cached.",
    )
    group.add_argument("--gguf-file", metavar="NAME",
                       help="the GGUF file to take from a hub repo or a directory that holds several")
    group.add_argument("--revision", help="hub revision: branch, tag or commit (default: main)")
    group.add_argument(
        "--download-dir",
        help="where hub downloads and converted models are cached (default: $HF_HOME, ~/.cache/huggingface)",
    )
    group.add_argument(
        "--weight-format", choices=WEIGHT_FORMATS,
        help=f"weights of the converted model (default: int8 when {QUANTIZED_WEIGHTS}=ON, else the source's "
        "own precision)",
    )
    group.add_argument(
        "--group-size", type=int, help=f"int4: weights per quantization group (default {DEFAULT_GROUP_SIZE})"
    )
    group.add_argument(
        "--ratio", type=float,
        help=f"int4: share of the layers in int4, the rest in int8 (default {DEFAULT_RATIO:g})",
    )
    group.add_argument("--sym", action="store_true", help="int8/int4: symmetric quantization (default asymmetric)")
    group.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow the model's own Python code (auto_map in config.json) to run during conversion",
    )


def conversion_flags_given(args) -> list[str]:
    """The conversion flags set on this command line (an IR model ignores them, with a warning)."""
    names = ("weight_format", "group_size", "ratio", "sym", "trust_remote_code")
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name, None) not in (None, False)]


def resolve_for_gguf(args, settings: EnvSettings) -> ConversionOptions:
    """resolve() for a GGUF source, which is quantized already: only an explicit --weight-format
    converts it (VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS, set by the operator for int8, does not)."""
    return resolve(args, replace(settings, quantized_weights=None))


def resolve(args, settings: EnvSettings) -> ConversionOptions:
    """The options that apply: explicit flags, else the environment contract; raise ConfigError."""
    weight_format = args.weight_format
    if weight_format is None and settings.quantized_weights:
        weight_format = "int8"
    if weight_format != "int4":
        for flag in ("group_size", "ratio"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} applies to --weight-format int4 only")
    if args.sym and weight_format not in ("int8", "int4"):
        raise ConfigError("--sym applies to --weight-format int8 or int4 only")
    group_size = ratio = None
    if weight_format == "int4":
        group_size = DEFAULT_GROUP_SIZE if args.group_size is None else args.group_size
        ratio = DEFAULT_RATIO if args.ratio is None else args.ratio
        if group_size != -1 and group_size < 1:
            raise ConfigError(f"--group-size {group_size} must be positive (or -1 for one group per channel)")
        if not 0 < ratio <= 1:
            raise ConfigError(f"--ratio {ratio:g} must be in (0, 1]")
    return ConversionOptions(weight_format, group_size, ratio, args.sym, args.trust_remote_code)
