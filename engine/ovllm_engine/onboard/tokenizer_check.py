"""Before a conversion is published: the converted OpenVINO tokenizer must encode sample texts into the
same ids as the source tokenizer, and its detokenizer must give each text back.

A tokenizer that loads but is wrong makes a model that answers garbage while every file looks right:
transformers' GGUF loader (5.0 and 5.5), for one, turns SmolLM2's tokenizer into one that encodes every space
as <|endoftext|>. Texts cover prose, numbers, code indentation, runs of spaces and non-ASCII scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ovllm_engine.onboard.source import ModelError

SAMPLE_TEXTS = (
    "The capital of France is Paris. It had 2,102,650 inhabitants in 2023.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Multiple   spaces,\ttabs\tand\n\nparagraphs; punctuation: (yes!) [no?] {maybe...}",
    "Größe, naïve café, Ærø; Ελληνικά; Русский; 東京タワー; emoji 🙂👍.",
)

Encode = Callable[[str], list[int]]


def _shown(ids: list[int], limit: int = 24) -> str:
    return str(ids) if len(ids) <= limit else f"{ids[:limit]}... ({len(ids)} ids)"


def check(source_encode: Encode, converted_dir: Path, source_name: str) -> None:
    """Raise ModelError naming the first sample text on which the tokenizers disagree, or which the
    converted tokenizer does not give back."""
    import openvino_genai as ov_genai

    converted = ov_genai.Tokenizer(str(converted_dir))
    for text in SAMPLE_TEXTS:
        expected = source_encode(text)
        ids = [int(i) for i in converted.encode(text, add_special_tokens=False).input_ids.data[0]]
        if ids != expected:
            raise ModelError(f"the converted tokenizer encodes {text!r} as {_shown(ids)}, but {source_name} "
                             f"encodes it as {_shown(expected)}: not publishing a model that would be fed wrong ids")
        decoded = converted.decode(ids, skip_special_tokens=True)
        if decoded != text:
            raise ModelError(f"the tokenizer does not give back what it encoded: {text!r} -> {_shown(ids)} -> "
                             f"{decoded!r}; the source tokenizer ({source_name}) is wrong or was converted "
                             "wrongly: not publishing a model that would answer garbage")


def transformers_encoder(hf_dir: Path, trust_remote_code: bool) -> Encode:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
    return lambda text: list(tokenizer(text, add_special_tokens=False).input_ids)


def gguf_encoder(gguf: Path, scratch_parent: Path | None = None) -> Encode:
    """GenAI's tokenizer read from the GGUF itself: what `ovllm serve FILE.gguf` uses. A read-only
    file is read from a copy under scratch_parent (see from_gguf.openable)."""
    import openvino_genai as ov_genai

    from ovllm_engine.onboard import from_gguf

    with from_gguf.openable(gguf, scratch_parent) as path:
        tokenizer = ov_genai.Tokenizer(str(path))
    return lambda text: [int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
