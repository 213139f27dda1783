"""`--speculative-config`: vLLM's JSON for speculative decoding, read into what OpenVINO GenAI's
continuous batching can do.

Two methods, with vLLM's keys:

    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
        prompt lookup: the next tokens are guessed from the prompt and the text so far (GenAI's
        `prompt_lookup` pipeline; `max_ngram_size` is prompt_lookup_max).
    {"method": "draft_model", "model": "SOURCE", "num_speculative_tokens": 4}
        a smaller model of the same tokenizer guesses them (GenAI's `draft_model`). SOURCE is anything
        `ovllm serve` takes; "revision" picks a hub revision and "quantization" its weight format when
        it is converted (int4, int8, fp16 or fp32; default the source's own).

In both the main model checks all K guesses in one step and keeps the ones it would have chosen
itself, so greedy output is the same token for token; a step yields 1 to K+1 tokens.

"disable_by_batch_size": N (vLLM's key; default DEFAULT_DISABLE_BY_BATCH_SIZE) sends new requests
to a second, plain pipeline of the same model once N requests are in the engine, and back to the
speculating one once fewer than N/2 are: a full batch computes instead of waiting on memory, and
checking guesses then costs more than it saves. The second pipeline costs one more copy of the
model's weights in memory; N at or above --max-num-seqs builds none.

Standard library only, like config.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ovllm_engine.config import ConfigError

NGRAM = "ngram"
DRAFT_MODEL = "draft_model"
METHODS = (NGRAM, DRAFT_MODEL)
DRAFT_WEIGHT_FORMATS = ("int4", "int8", "fp16", "fp32")
MAX_SPECULATIVE_TOKENS = 16  # GenAI verifies K+1 tokens per sequence and step: more is never worth it on CPUs
MAX_NGRAM = 8
# vLLM's default n-gram size is 5; GenAI's own samples use 3, which finds more matches in short prompts.
DEFAULT_PROMPT_LOOKUP_MAX = 3
# Speculation pays while a step is bound by reading the weights, not by computing on K+1 tokens per
# sequence: on 2 cores, with SmolLM2 in fp16 under a steady load, prompt lookup forced on every
# request paid 1.5x at 4 in flight and cost 8 percent at 16; with 4 here the whole run cost 2-3
# percent at 16 and 64 (BENCHMARKS.md). From this many requests in the engine, new ones go to a
# plain pipeline (vLLM's disable_by_batch_size).
DEFAULT_DISABLE_BY_BATCH_SIZE = 4
COMMON_KEYS = {"method", "num_speculative_tokens", "disable_by_batch_size"}
KEYS = {
    NGRAM: COMMON_KEYS | {"prompt_lookup_max", "prompt_lookup_min"},
    DRAFT_MODEL: COMMON_KEYS | {"model", "revision", "quantization"},
}
FLAG = "--speculative-config"


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # NGRAM or DRAFT_MODEL
    num_speculative_tokens: int  # K: guesses checked per sequence and step
    prompt_lookup_max: int = 0  # NGRAM: the longest n-gram looked up
    model: str | None = None  # DRAFT_MODEL: the source as given
    revision: str | None = None
    quantization: str | None = None  # DRAFT_MODEL: weight format when converted
    model_path: str | None = None  # DRAFT_MODEL: the IR directory it resolved to (set at startup)
    # from this many requests in the engine new ones are not speculated (>= --max-num-seqs: never)
    disable_by_batch_size: int = DEFAULT_DISABLE_BY_BATCH_SIZE

    def describe(self) -> str:
        if self.method == NGRAM:
            what = f"prompt lookup ({self.num_speculative_tokens} tokens, n-grams up to {self.prompt_lookup_max})"
        else:
            what = f"draft model {self.model} ({self.num_speculative_tokens} tokens)"
        return f"{what}; new requests go to a plain pipeline from {self.disable_by_batch_size} in the engine"


def parse(raw: str | None) -> SpeculativeConfig | None:
    """The --speculative-config JSON as a SpeculativeConfig (None when not given); ConfigError in one line."""
    if raw is None or not raw.strip():
        return None
    example = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}'
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{FLAG} is not JSON ({exc.msg}): e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{FLAG} must be a JSON object, e.g. '{example}'")
    method = value.get("method")
    if method is None:  # vLLM infers a draft model from "model"
        method = DRAFT_MODEL if "model" in value else None
    if method not in METHODS:
        raise ConfigError(f"{FLAG}: method {method!r} is not supported: use \"ngram\" (prompt lookup) or "
                          "\"draft_model\" (with \"model\"); OpenVINO GenAI's EAGLE3 heads are not served yet")
    unknown = sorted(set(value) - KEYS[method])
    if unknown:
        raise ConfigError(f"{FLAG}: {', '.join(map(repr, unknown))} not supported with method {method!r} "
                          f"(keys: {', '.join(sorted(KEYS[method]))})")
    tokens = _whole(value, "num_speculative_tokens", 1, MAX_SPECULATIVE_TOKENS, required=True)
    disable_by = _whole(value, "disable_by_batch_size", 1, 1 << 20) or DEFAULT_DISABLE_BY_BATCH_SIZE
    if method == NGRAM:
        lookup_max = _whole(value, "prompt_lookup_max", 1, MAX_NGRAM) or DEFAULT_PROMPT_LOOKUP_MAX
        lookup_min = _whole(value, "prompt_lookup_min", 1, MAX_NGRAM)
        if lookup_min not in (None, 1):
            # GenAI tries every n-gram size from the longest down to 1: a floor cannot be honoured
            raise ConfigError(f"{FLAG}: prompt_lookup_min {lookup_min} is not supported: OpenVINO GenAI looks up "
                              "n-grams down to one token (leave it out, or give 1)")
        return SpeculativeConfig(NGRAM, tokens, prompt_lookup_max=lookup_max, disable_by_batch_size=disable_by)
    model = value.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{FLAG}: method \"draft_model\" needs \"model\": the draft's IR directory, GGUF file, "
                          "Hugging Face directory or hub id")
    quantization = value.get("quantization")
    if quantization is not None and quantization not in DRAFT_WEIGHT_FORMATS:
        raise ConfigError(f"{FLAG}: quantization {quantization!r} is not a weight format to convert the draft to: "
                          f"use one of {', '.join(DRAFT_WEIGHT_FORMATS)}")
    revision = value.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ConfigError(f"{FLAG}: revision must be a hub branch, tag or commit")
    return SpeculativeConfig(DRAFT_MODEL, tokens, model=model, revision=revision, quantization=quantization,
                             disable_by_batch_size=disable_by)


def _whole(value: dict, key: str, low: int, high: int, required: bool = False) -> int | None:
    number = value.get(key)
    if number is None:
        if required:
            raise ConfigError(f"{FLAG}: \"{key}\" is required (the tokens guessed per step, 1 to {high}; 4 is a "
                              "good start)")
        return None
    if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
        raise ConfigError(f"{FLAG}: {key} {number!r} must be a whole number from {low} to {high}")
    return number
