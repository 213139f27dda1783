"""Benchmark prompts with known token lengths, as vLLM's benchmarks make them.

- random: `input_len` random token ids per prompt (fresh per seed, so the prefix cache cannot serve
  one run from another's prompts);
- ShareGPT-format JSON: the first human turn of each conversation, with the length of the reply as
  the output length (or a fixed --output-len), filtered as vLLM filters it;
- shared prefix: a long common prefix (a system prompt) followed by a short unique suffix, the case
  prefix caching and prefix-aware routing are for.

Prompts carry both their token ids and their text: in-process runs and servers that accept token
ids get exact lengths; others get the text (its length re-tokenized may differ by a token or two).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Random ids come from the BPE vocabulary below the first special token, as Qwen-family models
# number them; for other tokenizers the range is the tokenizer's ordinary vocabulary.
DEFAULT_VOCAB = 151643


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    prompt_ids: list[int]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


class Tokens:
    """encode/decode with the model's OpenVINO tokenizer (engine extra only)."""

    def __init__(self, model_dir: str | Path):
        import openvino_genai as ov_genai

        self._tokenizer = ov_genai.Tokenizer(str(model_dir), {"INFERENCE_NUM_THREADS": 1})

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def _round_trip(tokens: Tokens, ids: list[int], rng: random.Random, vocab: int) -> BenchRequest:
    """Text whose tokenization has len(ids) tokens: random ids rarely survive decode and encode
    unchanged (bytes merge into other tokens), so re-encode and top up until the length holds."""
    length = len(ids)
    for _ in range(8):
        text = tokens.decode(ids)
        again = tokens.encode(text)
        if len(again) == length:
            return again, text
        ids = again[:length] + [rng.randrange(vocab) for _ in range(length - len(again))]
    return again, text  # within a token or two: good enough, and prompt_len says the truth


def random_requests(tokens: Tokens, num: int, input_len: int, output_len: int, seed: int,
                    vocab: int = DEFAULT_VOCAB, range_ratio: float = 0.0) -> list[BenchRequest]:
    """range_ratio r: each length drawn uniformly from [len * (1 - r), len * (1 + r)], as vLLM's
    --random-range-ratio; 0 gives every request the same lengths."""
    rng = random.Random(seed)

    def length(mean: int) -> int:
        return max(1, rng.randint(round(mean * (1 - range_ratio)), round(mean * (1 + range_ratio))))

    requests = []
    for _ in range(num):
        ids, text = _round_trip(tokens, [rng.randrange(vocab) for _ in range(length(input_len))], rng, vocab)
        requests.append(BenchRequest(text, ids, length(output_len)))
    return requests


def shared_prefix_requests(tokens: Tokens, num: int, prefix_len: int, suffix_len: int, output_len: int,
                           seed: int, num_prefixes: int = 1, vocab: int = DEFAULT_VOCAB) -> list[BenchRequest]:
    """num requests over num_prefixes common prefixes of prefix_len tokens, each with its own suffix."""
    rng = random.Random(seed)
    prefixes = [_round_trip(tokens, [rng.randrange(vocab) for _ in range(prefix_len)], rng, vocab)
                for _ in range(num_prefixes)]
    requests = []
    for index in range(num):
        prefix_ids, prefix_text = prefixes[index % num_prefixes]
        suffix_ids, suffix_text = _round_trip(tokens, [rng.randrange(vocab) for _ in range(suffix_len)], rng, vocab)
        requests.append(BenchRequest(prefix_text + suffix_text, prefix_ids + suffix_ids, output_len))
    rng.shuffle(requests)
    return requests


def sharegpt_requests(path: str | Path, tokens: Tokens, num: int, seed: int,
                      output_len: int | None = None) -> list[BenchRequest]:
    """The first human turn and the reply's length from a ShareGPT-format file (a JSON list of
    {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]})."""
    try:
        conversations = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--dataset {path}: cannot read a ShareGPT JSON file ({exc})") from None
    rng = random.Random(seed)
    rng.shuffle(conversations)
    requests = []
    for entry in conversations:
        turns = entry.get("conversations") or entry.get("conversation") or []
        if len(turns) < 2:
            continue
        prompt = turns[0].get("value", "")
        ids = tokens.encode(prompt)
        wanted = output_len or len(tokens.encode(turns[1].get("value", "")))
        # vLLM's filter: drop tiny sequences and those too long for its default context.
        if len(ids) < 4 or (output_len is None and wanted < 4) or len(ids) > 1024 or len(ids) + wanted > 2048:
            continue
        requests.append(BenchRequest(prompt, ids, wanted))
        if len(requests) == num:
            break
    if len(requests) < num:
        raise ValueError(f"--dataset {path} holds {len(requests)} usable conversations, fewer than {num}")
    return requests


def add_arguments(parser) -> None:
    """Dataset flags with vLLM's names."""
    choices = ["random", "sharegpt", "shared-prefix"]
    parser.add_argument("--dataset-name", choices=choices, default="random",
                        help="random token prompts, ShareGPT-format conversations (--dataset), or a shared prefix")
    parser.add_argument("--dataset", "--dataset-path", dest="dataset",
                        help="a ShareGPT-format JSON file (implies --dataset-name sharegpt)")
    parser.add_argument("--num-prompts", type=int, default=1000, help="requests to send")
    parser.add_argument("--input-len", "--random-input-len", dest="input_len", type=int, default=128,
                        help="random: prompt tokens")
    parser.add_argument("--output-len", "--random-output-len", dest="output_len", type=int, default=None,
                        help="output tokens per request (default 128; ShareGPT: the reply's length)")
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="random: draw each length from [len * (1 - r), len * (1 + r)] (default 0: fixed)")
    parser.add_argument("--shared-prefix-len", type=int, default=512, help="shared-prefix: tokens of each prefix")
    parser.add_argument("--suffix-len", type=int, default=32, help="shared-prefix: unique tokens after the prefix")
    parser.add_argument("--num-prefixes", type=int, default=1, help="shared-prefix: distinct prefixes")
    parser.add_argument("--seed", type=int, default=0)


def load(args, tokens: Tokens) -> list[BenchRequest]:
    name = "sharegpt" if args.dataset else args.dataset_name
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts {args.num_prompts} must be at least 1")
    if name == "sharegpt":
        if not args.dataset:
            raise ValueError("--dataset-name sharegpt needs --dataset FILE")
        return sharegpt_requests(args.dataset, tokens, args.num_prompts, args.seed, args.output_len)
    output_len = args.output_len or 128
    if name == "shared-prefix":
        return shared_prefix_requests(tokens, args.num_prompts, args.shared_prefix_len, args.suffix_len, output_len,
                                      args.seed, args.num_prefixes)
    if not 0 <= args.random_range_ratio < 1:
        raise ValueError(f"--random-range-ratio {args.random_range_ratio} must be in [0, 1)")
    return random_requests(tokens, args.num_prompts, args.input_len, output_len, args.seed,
                           range_ratio=args.random_range_ratio)
