"""Which model architectures (transformers' `model_type`) ovllm converts and serves, as measured.

TESTED: each one is built as a tiny random model by `ovllm_engine.testmodels`, converted as `ovllm
convert` converts, served, and its greedy tokens compared with transformers' token for token by
tests/engine/test_architectures.py (README: Architectures).

UNSERVABLE: architectures optimum-intel exports for text generation but OpenVINO GenAI's continuous
batching cannot serve; `ovllm convert` refuses them before loading anything. Anything else that
optimum-intel exports is converted with a warning that ovllm has not checked its output.

Standard library only: `ovllm serve` checks a Hugging Face directory with the engine extra alone.
"""

from __future__ import annotations

TESTED = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi", "phi3", "granite", "granitemoe", "olmo2", "starcoder2", "gpt_bigcode", "stablelm", "smollm3",
    "cohere2", "glm4", "gpt_oss", "lfm2", "falcon", "opt", "gpt2", "gpt_neox",
)

# Measured with optimum-intel 2.2 and OpenVINO GenAI 2026.4 on tiny random models built as the coverage
# test builds them: the export succeeds, but the pipeline serves other tokens than transformers' (phimoe,
# mpt) or refuses the graph (mamba: "No ScaledDotProductAttention"; falcon_mamba is the same kind).
DIVERGES = ("OpenVINO GenAI serves it with greedy tokens that differ from transformers' from the first one "
            "(measured on a tiny random model)")
STATE_SPACE = "a state-space model: OpenVINO GenAI's continuous batching pages attention KV caches, and it has none"
UNSERVABLE = {
    "phimoe": DIVERGES,
    "mpt": DIVERGES,
    "mamba": STATE_SPACE,
    "falcon_mamba": STATE_SPACE,
}

