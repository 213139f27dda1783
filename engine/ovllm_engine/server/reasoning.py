"""Reasoning parsers (`--reasoning-parser NAME`): split a model's output into its reasoning and its answer.

Names and rules are vLLM's (vllm/reasoning/basic_parsers.py, deepseek_r1_reasoning_parser.py and
qwen3_reasoning_parser.py), so that a client sees the same `reasoning_content` from either server:

- The reasoning ends at the first `</think>`; what follows is the content, whitespace included (vLLM
  strips nothing: "<think>\\nr\\n</think>\\n\\nanswer" gives "\\nr\\n" and "\\n\\nanswer").
- Without any `</think>` the whole output is reasoning: the chat template opened the think block
  (DeepSeek-R1, Qwen3-Thinking-2507, Qwen3.5), so an output that never closes it was cut off mid-thought.
- A `<think>` that opens the output is dropped (older Qwen3 templates let the model write it).
- qwen3 honours `enable_thinking=False` (a chat template kwarg): the template then closed an empty think
  block in the prompt, and the whole output is content. deepseek_r1 has no such switch, as in vLLM.

Where this differs from vLLM, on purpose, so that streaming and whole-output parsing always agree:

- vLLM drops any text before the first `<think>`, wherever it is; here only a `<think>` at the start
  (after whitespace) is dropped, and a later one is plain reasoning text. A stream cannot know whether a
  `<think>` will come later, and vLLM's own streaming sends that earlier text as reasoning anyway.
- With thinking off, vLLM's whole-output parser still splits at a `</think>` the model wrote; its
  streaming path routes everything to content. Here both give everything as content.
- vLLM's qwen3 also ends the reasoning at a `<tool_call>` followed by `<function=` (the XML tool-call
  format of Qwen3-Coder and Qwen3.5); the tool parsers here do not read that format, so neither does this.
- vLLM answers content None where it is empty; here it is "" (and reasoning None when there is none).
"""

from __future__ import annotations

from typing import ClassVar

THINK_START = "<think>"
THINK_END = "</think>"


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`: the part of a piece of
    streamed text that may still turn out to be the marker once the next piece arrives."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


class ReasoningStream:
    """Parses one output as it is generated.

    feed() returns (reasoning_delta, content_delta) for each new piece, holding back only what is still
    undecided: a possible `<think>` at the very start, or a possible `</think>` at the end of the piece.
    finish() releases what was held. The deltas concatenated equal ReasoningParser.split() of the whole
    output (reasoning None counting as ""), however the output was cut into pieces.
    """

    def __init__(self, active: bool) -> None:
        # "lead": before the first non-blank text, where a `<think>` may still open the output;
        # "reasoning": inside the think block; "content": after `</think>`, or parsing off altogether.
        self._state = "lead" if active else "content"
        self._held = ""

    def feed(self, delta: str) -> tuple[str, str]:
        text = self._held + delta
        self._held = ""
        if self._state == "lead":
            rest = text.lstrip()
            if rest.startswith(THINK_START):
                text = rest[len(THINK_START) :]
            elif THINK_START.startswith(rest):  # blank so far, or a partial `<think>`: undecided
                self._held = text
                return "", ""
            self._state = "reasoning"
        if self._state == "reasoning":
            end = text.find(THINK_END)
            if end >= 0:
                self._state = "content"
                return text[:end], text[end + len(THINK_END) :]
            keep = _held_suffix(text, THINK_END)
            self._held = text[len(text) - keep :]
            return text[: len(text) - keep], ""
        return "", text

    def finish(self) -> tuple[str, str]:
        """Release what was held back: the output ended without deciding it, so it is reasoning (the text
        after an unclosed think block, or a blank/partial-tag start)."""
        held, self._held = self._held, ""
        return ("", held) if self._state == "content" else (held, "")


class ReasoningParser:
    """Splits `<think>` ... `</think>` reasoning from the content of an output (see the module docstring)."""

    name: ClassVar[str] = ""
    # Whether enable_thinking=False turns the parser off (vLLM's qwen3 reads it from chat_template_kwargs).
    has_thinking_switch: ClassVar[bool] = False

    def __init__(self, *, enable_thinking: bool = True) -> None:
        self.active = enable_thinking or not self.has_thinking_switch

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a whole output."""
        if not self.active:
            return None, text
        rest = text.lstrip()
        if rest.startswith(THINK_START):
            text = rest[len(THINK_START) :]
        reasoning, _, content = text.partition(THINK_END)
        return reasoning or None, content

    def stream(self) -> ReasoningStream:
        """A parser for one output that arrives in pieces."""
        return ReasoningStream(self.active)


class Qwen3ReasoningParser(ReasoningParser):
    """Qwen3 and Qwen3.5 (vLLM's `qwen3`): the think block is written by the model (Qwen3) or opened by
    the template (Qwen3-Thinking-2507, Qwen3.5); enable_thinking=False makes the whole output content."""

    name = "qwen3"
    has_thinking_switch = True


class DeepSeekR1ReasoningParser(ReasoningParser):
    """DeepSeek-R1 and its distills (vLLM's `deepseek_r1`): the template opens `<think>`, so everything up
    to `</think>` is reasoning."""

    name = "deepseek_r1"


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (Qwen3ReasoningParser, DeepSeekR1ReasoningParser)
}
