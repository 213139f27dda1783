"""The engine's configuration: command-line flags with vLLM's names plus the environment contract of
vLLM's OpenVINO backend, checked once at startup.

This module imports nothing but the standard library: the operator's contract test feeds the pod
environment the operator writes into `parse_env` without installing OpenVINO.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ovllm_engine.speculative import SpeculativeConfig

log = logging.getLogger(__name__)

KVCACHE_SPACE = "VLLM_OPENVINO_KVCACHE_SPACE"
KV_CACHE_PRECISION = "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION"
KV_CACHE_PRECISION_NEW = "VLLM_OPENVINO_KV_CACHE_PRECISION"  # the later vLLM OpenVINO plugin's name
QUANTIZED_WEIGHTS = "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS"
INFERENCE_THREADS = "OVLLM_INFERENCE_THREADS"
API_KEY = "VLLM_API_KEY"

KV_PRECISIONS = ("u8", "f16", "bf16", "f32")
DEFAULT_KVCACHE_SPACE_GB = 4
_TRUE = ("on", "1", "true", "yes")
_FALSE = ("off", "0", "false", "no")


class ConfigError(ValueError):
    """A wrong setting. Its message is the one line startup prints before exiting."""


@dataclass(frozen=True)
class EnvSettings:
    """What the VLLM_OPENVINO_* environment contract asks for."""

    kv_cache_space_gb: int = DEFAULT_KVCACHE_SPACE_GB
    kv_cache_precision: str | None = None  # None: the plugin's default for this CPU
    quantized_weights: bool | None = None  # None: not set
    inference_threads: int | None = None  # None: OpenVINO's default (every core the process may use)


def parse_env(environ: Mapping[str, str] | None = None) -> EnvSettings:
    """Read the environment contract; raise ConfigError naming the variable, value and what is accepted."""
    env = os.environ if environ is None else environ
    space = DEFAULT_KVCACHE_SPACE_GB
    raw = env.get(KVCACHE_SPACE, "").strip()
    if raw:
        # Whole GB, as in vLLM's OpenVINO backend; GenAI's cache_size takes whole GB too.
        try:
            space = int(raw)
        except ValueError:
            raise ConfigError(
                f"{KVCACHE_SPACE}={raw!r} is not a whole number: give the KV cache size in GB, e.g. 8"
            ) from None
        if space < 0:
            raise ConfigError(f"{KVCACHE_SPACE}={raw!r} must be a whole number >= 0 (GB of KV cache; 0 means 4)")
        if space == 0:
            log.warning("%s=0: using the default of %g GB of KV cache", KVCACHE_SPACE, DEFAULT_KVCACHE_SPACE_GB)
            space = DEFAULT_KVCACHE_SPACE_GB

    precision = None
    for name in (KV_CACHE_PRECISION, KV_CACHE_PRECISION_NEW):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if raw.lower() not in KV_PRECISIONS:
            raise ConfigError(f"{name}={raw!r} is not a KV cache precision: use one of {', '.join(KV_PRECISIONS)}")
        if precision is not None and precision != raw.lower():
            raise ConfigError(f"{KV_CACHE_PRECISION}={precision!r} and {KV_CACHE_PRECISION_NEW}={raw!r} disagree")
        precision = raw.lower()

    quantized = None
    raw = env.get(QUANTIZED_WEIGHTS, "").strip()
    if raw:
        if raw.lower() in _TRUE:
            quantized = True
        elif raw.lower() in _FALSE:
            quantized = False
        else:
            raise ConfigError(f"{QUANTIZED_WEIGHTS}={raw!r} is not a switch: use ON, OFF, 1, 0, true or false")

    threads = None
    raw = env.get(INFERENCE_THREADS, "").strip()
    if raw:
        try:
            threads = int(raw)
        except ValueError:
            threads = -1
        if threads < 0:
            raise ConfigError(f"{INFERENCE_THREADS}={raw!r} must be a whole number >= 0 (0: every available core)")
        threads = threads or None
    return EnvSettings(space, precision, quantized, threads)


@dataclass
class EngineConfig:
    """Everything the engine process needs to build its pipeline, and the server to check requests."""

    model_path: str  # an OpenVINO IR directory, or a GGUF file read by GenAI itself
    served_model_name: str
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 256
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    kv_cache_space_gb: int = DEFAULT_KVCACHE_SPACE_GB
    kv_cache_precision: str | None = None
    inference_threads: int | None = None
    ov_config: dict = field(default_factory=dict)
    device: str = "CPU"
    vocab_size: int | None = None  # rows of the embedding table; None (not in config.json): ids below 2^31
    speculative: SpeculativeConfig | None = None  # --speculative-config, its draft resolved to IR

    def ov_properties(self) -> dict:
        """OpenVINO properties for the pipeline: the env contract first, --ov-config on top."""
        properties = {}
        if self.kv_cache_precision:
            properties["KV_CACHE_PRECISION"] = self.kv_cache_precision
        if self.inference_threads:
            properties["INFERENCE_NUM_THREADS"] = self.inference_threads
        properties.update(self.ov_config)
        return properties

    def summary(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# OpenVINO properties for exact arithmetic on every CPU: f32 inference, and no dynamic quantization of
# activations to int8 (on by default for compressed weights on CPUs with AVX-512 VNNI). On CPUs with
# AVX-512 BF16 or AMX the defaults are bf16 and int8 activations, which flip near-ties.
EXACT_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


def parse_ov_config(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        example = '{"INFERENCE_PRECISION_HINT": "f32"}'
        raise ConfigError(f"--ov-config {raw!r} is not JSON ({exc.msg}): e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--ov-config {raw!r} must be a JSON object of OpenVINO properties")
    return value


def model_config(model_path: Path) -> dict:
    """The model's shape facts in transformers' config.json names: from config.json in an IR directory,
    or from the header of a GGUF file. {} when neither says."""
    from ovllm_engine import gguf_file  # standard library only, like this module

    if gguf_file.is_gguf(model_path):
        try:
            return gguf_file.read_info(model_path).as_config()
        except gguf_file.GGUFError:
            return {}
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def model_max_len(model_path: Path) -> int | None:
    """The model's context length, if it says."""
    config = model_config(model_path)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def model_vocab_size(model_path: Path) -> int | None:
    """Rows of the model's embedding table, if it says: a token id at or past it must never reach the model."""
    config = model_config(model_path)
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("vocab_size"), int) and section["vocab_size"] > 0:
            return section["vocab_size"]
    return None


def _first_count(config: dict, *names: str) -> int | None:
    """The first of `names` that config.json gives as a positive whole number (architectures name their
    shape differently: GPT-2's n_layer is Llama's num_hidden_layers)."""
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def kv_bytes_per_token(model_path: Path, precision: str | None) -> int | None:
    """Bytes of KV cache one token takes across all layers (None if unknown)."""
    config = model_config(model_path)
    layers = _first_count(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first_count(config, "num_attention_heads", "n_head", "num_heads")
    hidden = _first_count(config, "hidden_size", "n_embd", "d_model")
    if not (layers and heads):
        return None
    if isinstance(config.get("layer_types"), list):  # hybrids (LFM2's convolutions) keep no KV in some layers
        layers = sum("attention" in str(kind) for kind in config["layer_types"]) or layers
    if config.get("multi_query") and not config.get("new_decoder_architecture"):
        kv_heads = 1  # Falcon-7B, StarCoder: one KV head
    else:
        kv_heads = _first_count(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first_count(config, "head_dim") or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    element = {"u8": 1, "f16": 2, "bf16": 2, "f32": 4}.get(precision or "f16", 2)
    return layers * 2 * kv_heads * head_dim * element


def check_kv_space(config: EngineConfig) -> None:
    """Refuse to start when the KV cache cannot hold one sequence of max_model_len tokens."""
    per_token = kv_bytes_per_token(Path(config.model_path), config.kv_cache_precision)
    if per_token is None:
        return
    draft = config.speculative.model_path if config.speculative else None
    if draft:  # the draft keeps a KV cache of its own in the same space
        per_token += kv_bytes_per_token(Path(draft), config.kv_cache_precision) or 0
    needed = per_token * config.max_model_len
    have = config.kv_cache_space_gb * 1024**3
    if needed > have:
        raise ConfigError(
            f"{KVCACHE_SPACE}={config.kv_cache_space_gb} GB holds {int(have // per_token)} tokens of KV cache, "
            f"fewer than --max-model-len {config.max_model_len}: raise the space or lower --max-model-len"
        )
