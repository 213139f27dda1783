"""Do ovllm and llama.cpp, serving the same GGUF file, generate the same text greedily?

Both servers must already run on one GGUF (see compare.py --gguf, or by hand):

    python benchmarks/llamacpp.py serve MODEL.gguf --port 8932 --parallel 1 --ctx-size 4096
    ovllm serve MODEL.gguf --port 8931
    python benchmarks/gguf_agreement.py --ovllm http://127.0.0.1:8931 --llamacpp http://127.0.0.1:8932 \\
        --out agreement.json

It sends the same prompts to both, one at a time: chat turns (/v1/chat/completions) and plain completions
(/v1/completions), short ones and some over 1024 tokens (natural paragraphs on different subjects, several times
over in different orders). Decoding is greedy everywhere: temperature 0, and for llama.cpp also top_k 1,
top_p 1, min_p 0, no repetition penalty and `cache_prompt: false` (its defaults sample and reuse prefixes).
max_tokens 32 by default; EOS ends a generation as usual.

Per prompt it reports whether the texts are equal, else the first differing character and word, the prompt
token counts on both sides (a difference there means tokenization or chat template differ, not the model),
finish reasons, and for completions the generated token ids (ovllm's `return_token_ids`, llama.cpp's `n_probs`
log-probabilities, which carry each token's id). The summary: equal / total, and the mean common-prefix length
(characters, and as a fraction of the longer output). JSON goes to --out; a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# Greedy decoding spelled out for llama.cpp, whose defaults are temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
# and which would reuse the previous prompt's KV prefix.
LLAMACPP_GREEDY = {"top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
                   "frequency_penalty": 0.0, "cache_prompt": False, "seed": 0}

CHAT_SHORT = [
    "What is the capital of France?",
    "Write a haiku about autumn rain.",
    "Explain in two sentences why the sky is blue.",
    "List three fruits that are red.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
    "Give me a name for a friendly robot.",
    "What is 12 times 7?",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend hiking trip?",
]

COMPLETION_SHORT = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    "In 1969, the first humans to walk on the Moon",
    "Here is a recipe for pancakes. Ingredients:",
    "Water boils at 100 degrees Celsius because",
    "Dear Sir or Madam, I am writing to",
]

# Paragraphs on unrelated subjects, about 100 to 130 tokens each: long prompts repeat them in varied orders, so
# that they read as natural text rather than one sentence many times.
PARAGRAPHS = [
    "The old lighthouse stood on a rocky point at the mouth of the harbor. For more than a century its keepers "
    "climbed the spiral stairs every evening to light the lamp, trimming wicks and polishing the great lens until "
    "it gleamed. Ships coming home in fog listened for its horn and watched for the slow sweep of its beam, and "
    "many sailors said they owed their lives to the patient people who lived in the little white cottage below.",
    "Bread is one of the oldest prepared foods. Flour, water, salt and yeast are mixed into a dough, which is "
    "kneaded to develop gluten, the network of proteins that traps the gas the yeast releases. After rising, the "
    "dough is shaped, left to rise again, and baked in a hot oven, where the crust browns through the Maillard "
    "reaction while the inside sets into a soft, open crumb.",
    "Honeybees live in colonies of tens of thousands of workers, a few hundred drones and a single queen. Workers "
    "change jobs as they age: young bees clean cells and feed larvae, middle-aged bees build comb and guard the "
    "entrance, and the oldest fly out to gather nectar and pollen. A forager that finds a rich patch of flowers "
    "returns to the hive and dances to tell her sisters its direction and distance.",
    "The train left the city just after dawn. At first the tracks ran between warehouses and rows of brick houses, "
    "then through suburbs with small gardens, and finally into open farmland where mist still lay in the hollows. "
    "Passengers unfolded newspapers, opened laptops or simply watched the fields go by, while the conductor walked "
    "slowly down the aisle checking tickets and answering questions about connections.",
    "A good night's sleep does more than make us feel rested. During deep sleep the brain consolidates memories, "
    "moving what was learned during the day into longer-term storage, and the body repairs tissue and regulates "
    "hormones that control appetite and growth. Adults who regularly sleep less than seven hours tend to have "
    "slower reactions, worse moods and a higher risk of several chronic illnesses.",
    "The violin has four strings tuned in fifths, and its body is carved from spruce and maple. When the bow is "
    "drawn across a string, rosin on the horsehair makes the string grip and slip many times per second, and the "
    "vibration passes through the bridge into the hollow body, which amplifies it. Players change the pitch by "
    "pressing the strings against the fingerboard, which has no frets to guide them.",
    "Glaciers form where more snow falls in winter than melts in summer. Year after year the snow is compressed "
    "into dense ice, which eventually becomes so heavy that it begins to flow downhill under its own weight. As a "
    "glacier moves it scrapes the rock beneath it, carving deep valleys and carrying boulders for many kilometers "
    "before leaving them stranded when the ice finally retreats.",
    "Every small business needs to keep track of its money. A simple ledger records each sale and each expense "
    "with the date, the amount and a short description. At the end of the month the owner adds up the columns to "
    "see whether the business made a profit, sets aside money for taxes, and compares the results with previous "
    "months to notice trends before they become problems.",
    "The market opened at six, long before most of the town was awake. Farmers backed their trucks up to the "
    "stalls and unloaded crates of tomatoes, peppers, peaches and corn. A baker arranged loaves in neat rows, a "
    "cheesemaker cut samples for early customers, and a man with a guitar found his usual spot by the fountain, "
    "where he played old folk songs until the last stall was packed away at noon.",
    "Learning a new language takes patience. Beginners often start with greetings, numbers and everyday phrases, "
    "then build vocabulary by reading simple stories and listening to native speakers. Grammar becomes easier "
    "once a learner has heard many examples, and speaking with real people, even with mistakes, is usually the "
    "fastest way to gain confidence and to start thinking in the new language.",
    "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some, like those in Hawaii, "
    "erupt gently, sending rivers of runny lava down their slopes. Others build up pressure over centuries and "
    "then explode violently, throwing ash high into the atmosphere, where it can drift around the world and "
    "cool the climate for a year or more.",
    "The library on the corner was small but always busy. Children came after school to borrow picture books and "
    "do their homework at the long wooden tables, retired neighbors read the newspapers by the window, and "
    "students studied quietly in the back room. The librarian knew most visitors by name and always seemed to "
    "have exactly the right book to recommend.",
]


def long_text(seed: int, paragraphs: int = 16) -> str:
    """`paragraphs` of PARAGRAPHS (about 1,250 tokens for 16: every one, then four again), in an order that
    depends on `seed`."""
    order = [(seed * 5 + i * (7 if seed % 2 else 5)) % len(PARAGRAPHS) for i in range(paragraphs)]
    return "\n\n".join(PARAGRAPHS[i] for i in order)


def prompts() -> list[dict]:
    """Every prompt: kind (chat or completion), a name, and the messages or the prompt text."""
    cases = [{"name": f"chat-{i}", "kind": "chat", "messages": [{"role": "user", "content": text}]}
             for i, text in enumerate(CHAT_SHORT)]
    cases.append({"name": "chat-system", "kind": "chat", "messages": [
        {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
        {"role": "user", "content": "Why do leaves change color in autumn?"}]})
    cases.append({"name": "chat-multiturn", "kind": "chat", "messages": [
        {"role": "user", "content": "My name is Ada. Remember it."},
        {"role": "assistant", "content": "Nice to meet you, Ada! I will remember your name."},
        {"role": "user", "content": "What is my name, and what is a good book for me?"}]})
    cases += [{"name": f"completion-{i}", "kind": "completion", "prompt": text}
              for i, text in enumerate(COMPLETION_SHORT)]
    for seed, question in enumerate(["Summarize the text above in one sentence.",
                                     "Which animal is mentioned in the text above, and what does it do?",
                                     "List the places described in the text above."]):
        cases.append({"name": f"chat-long-{seed}", "kind": "chat", "messages": [
            {"role": "user", "content": f"{long_text(seed)}\n\n{question}"}]})
    for seed in range(3, 6):
        cases.append({"name": f"completion-long-{seed}", "kind": "completion",
                      "prompt": f"{long_text(seed)}\n\nIn short, all of these stories show that"})
    return cases


def model_name(client: httpx.Client, base_url: str) -> str:
    response = client.get(f"{base_url}/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def generate(client: httpx.Client, base_url: str, model: str, case: dict, max_tokens: int, llamacpp: bool) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "stream": False}
    if llamacpp:
        body.update(LLAMACPP_GREEDY)
    if case["kind"] == "chat":
        url, body["messages"] = f"{base_url}/v1/chat/completions", case["messages"]
    else:
        url, body["prompt"] = f"{base_url}/v1/completions", case["prompt"]
        if llamacpp:
            body["n_probs"] = 1  # each generated token's id comes back in choices[0].logprobs.content[].id
        else:
            body["return_token_ids"] = True
    started = time.perf_counter()
    response = client.post(url, json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        return {"error": f"HTTP {response.status_code}: {response.text[:500]}", "seconds": elapsed}
    answer = response.json()
    choice = answer["choices"][0]
    text = choice["message"]["content"] if case["kind"] == "chat" else choice["text"]
    usage = answer.get("usage") or {}
    out = {"text": text or "", "finish_reason": choice.get("finish_reason"),
           "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
           "seconds": elapsed}
    ids = choice.get("token_ids")  # ovllm's return_token_ids
    if ids is None and isinstance(choice.get("logprobs"), dict):  # llama.cpp's n_probs
        ids = [entry.get("id") for entry in choice["logprobs"].get("content") or []]
    if isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids):
        out["token_ids"] = ids
    return out


def first_difference(a: Sequence, b: Sequence) -> int:
    """The length of the common prefix of `a` and `b` (= the index of the first difference)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def compare(ovllm: dict, llamacpp: dict) -> dict:
    a, b = ovllm.get("text"), llamacpp.get("text")
    if a is None or b is None:
        return {"equal": False, "error": True}
    prefix = first_difference(a, b)
    out = {"equal": a == b, "common_prefix_chars": prefix,
           "common_prefix_fraction": prefix / max(len(a), len(b)) if max(len(a), len(b)) else 1.0,
           "same_prompt_tokens": ovllm.get("prompt_tokens") == llamacpp.get("prompt_tokens")}
    if a != b:
        words_a, words_b = a.split(), b.split()
        out["first_diff_char"] = prefix
        out["first_diff_word"] = first_difference(words_a, words_b)
        out["ovllm_from_diff"] = a[prefix:prefix + 40]
        out["llamacpp_from_diff"] = b[prefix:prefix + 40]
    if "token_ids" in ovllm and "token_ids" in llamacpp:
        ids_a, ids_b = ovllm["token_ids"], llamacpp["token_ids"]
        out["tokens_equal"] = ids_a == ids_b
        out["first_diff_token"] = first_difference(ids_a, ids_b)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ovllm", required=True, help="ovllm's base URL, e.g. http://127.0.0.1:8931")
    parser.add_argument("--llamacpp", required=True, help="llama.cpp server's base URL, e.g. http://127.0.0.1:8932")
    parser.add_argument("--ovllm-model", default=None, help="model name to ask ovllm for (default: its first)")
    parser.add_argument("--llamacpp-model", default=None, help="model name to ask llama.cpp for (default: its first)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--only", nargs="+", default=None, help="run only these prompt names")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)

    cases = [c for c in prompts() if args.only is None or c["name"] in args.only]
    rows = []
    with httpx.Client(timeout=args.timeout) as client:
        ovllm_model = args.ovllm_model or model_name(client, args.ovllm)
        llamacpp_model = args.llamacpp_model or model_name(client, args.llamacpp)
        for case in cases:
            ours = generate(client, args.ovllm, ovllm_model, case, args.max_tokens, llamacpp=False)
            theirs = generate(client, args.llamacpp, llamacpp_model, case, args.max_tokens, llamacpp=True)
            verdict = compare(ours, theirs)
            rows.append({"name": case["name"], "kind": case["kind"], **verdict, "ovllm": ours, "llamacpp": theirs})
            tokens = f"{ours.get('prompt_tokens')}/{theirs.get('prompt_tokens')}"
            where = "" if verdict.get("equal") else f" differ at char {verdict.get('first_diff_char')}"
            print(f"{case['name']:<20} prompt tokens {tokens:>11}  {'EQUAL' if verdict.get('equal') else 'DIFF '}"
                  f"{where}", flush=True)
            if not verdict.get("equal"):
                print(f"    ovllm:     {ours.get('text', ours.get('error'))!r}\n"
                      f"    llama.cpp: {theirs.get('text', theirs.get('error'))!r}", flush=True)

    scored = [r for r in rows if not r.get("error")]
    summary = {
        "total": len(rows),
        "equal": sum(bool(r.get("equal")) for r in rows),
        "errors": len(rows) - len(scored),
        "same_prompt_tokens": sum(bool(r.get("same_prompt_tokens")) for r in scored),
        "mean_common_prefix_chars": statistics.mean(r["common_prefix_chars"] for r in scored) if scored else None,
        "mean_common_prefix_fraction": (statistics.mean(r["common_prefix_fraction"] for r in scored)
                                        if scored else None),
        "by_kind": {kind: f"{sum(bool(r.get('equal')) for r in rows if r['kind'] == kind)}/"
                          f"{sum(r['kind'] == kind for r in rows)}" for kind in ("chat", "completion")},
        "long_prompts_over_1024_tokens": sum(1 for r in scored if (r["llamacpp"].get("prompt_tokens") or 0) > 1024),
    }
    report = {"summary": summary, "max_tokens": args.max_tokens,
              "servers": {"ovllm": {"base_url": args.ovllm, "model": ovllm_model},
                          "llama.cpp": {"base_url": args.llamacpp, "model": llamacpp_model}},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "prompts": rows}
    try:
        import llamacpp as helpers  # this folder's helpers, when run as a script

        report["machine"] = helpers.cpu_info()
    except ImportError:
        pass
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
