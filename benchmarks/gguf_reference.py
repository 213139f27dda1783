"""Which server computes what the GGUF file says? transformers as the referee of gguf_agreement.py's run.

transformers' GGUF loader dequantizes the file's weights exactly (checked against the `gguf` package's own
dequantization, max difference 0.0). This script runs its greedy generation at f32 on every prompt of an
agreement report, with the prompt token ids of OpenVINO GenAI's tokenizer of the file (transformers' own
tokenizer of this GGUF is wrong), and reports for each server how many outputs equal transformers', and,
where one departs, transformers' top-1 minus top-2 logit gap at that token (a small gap is a near-tie that
any difference in arithmetic can flip: llama.cpp quantizes activations to 8 bits for its Q4_1 matmuls).

    python benchmarks/gguf_reference.py agreement.json MODEL.gguf --out reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf_agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="gguf_agreement.py's JSON")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-tokens", type=int, default=32, help="as the agreement run's")
    args = parser.parse_args(argv)

    import openvino_genai as ov_genai
    import torch
    from transformers import AutoModelForCausalLM

    report = json.loads(args.report.read_text())
    tokenizer = ov_genai.Tokenizer(str(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32).eval()
    eos = tokenizer.get_eos_token_id()
    cases = {case["name"]: case for case in gguf_agreement.prompts()}

    def ids_of(text: str, special: bool) -> list[int]:
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=special).input_ids.data[0]]

    def greedy(prompt: list[int], count: int) -> tuple[list[int], list[float]]:
        """Greedy ids, and the top-1 minus top-2 logit gap at each step."""
        ids, gaps, past, step_input = [], [], None, torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(count):
                out = model(step_input, past_key_values=past, use_cache=True)
                past, logits = out.past_key_values, out.logits[0, -1]
                top = torch.topk(logits, 2)
                ids.append(int(top.indices[0]))
                gaps.append(float(top.values[0] - top.values[1]))
                if ids[-1] == eos:
                    break
                step_input = torch.tensor([[ids[-1]]])
        return ids, gaps

    rows, tally = [], {"ovllm": 0, "llamacpp": 0}
    for result in report["prompts"]:
        case = cases[result["name"]]
        if case["kind"] == "chat":
            prompt = ids_of(tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True), False)
        else:
            prompt = ids_of(case["prompt"], True)
        ids, gaps = greedy(prompt, report.get("max_tokens", args.max_tokens))
        text = tokenizer.decode([i for i in ids if i != eos], skip_special_tokens=True)
        row = {"name": result["name"], "prompt_tokens": len(prompt)}
        for side in tally:
            served = result[side]["text"]
            equal = served == text
            tally[side] += equal
            row[side] = {"equal_to_transformers": equal}
            if not equal:  # the token where the served output leaves transformers', and how close a call it was
                # The served ids (completions return them), else the served text encoded again.
                served_ids = result[side].get("token_ids") or ids_of(served, False)
                at = next((n for n, (mine, theirs) in enumerate(zip(ids, served_ids, strict=False)) if mine != theirs),
                          min(len(ids), len(served_ids)) - 1)
                row[side].update(departs_at_token=at, transformers_top2_gap=round(gaps[min(at, len(gaps) - 1)], 4))
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"total": len(rows), **{f"{side}_equal_to_transformers": count for side, count in tally.items()}}
    print(json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
