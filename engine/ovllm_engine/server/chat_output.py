"""A chat choice's text read back as OpenAI's message: reasoning (--reasoning-parser), content and
tool calls, for a whole answer and as stream deltas.

A tool call is released only once it is complete and parses: the first delta of a call carries its
index, id, type and name, the next its arguments. Streamed calls therefore never hold invalid JSON,
and the SDKs reassemble them as they do OpenAI's.
"""

from __future__ import annotations

import json
import uuid

from ovllm_engine.server.protocol import (
    ChatDelta,
    ChatMessageOut,
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
)
from ovllm_engine.server.reasoning import ReasoningParser
from ovllm_engine.server.structured import ToolMode
from ovllm_engine.server.tool_parsers import CallDone, ContentDelta, ToolCall


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def constrained_calls(text: str, mode: ToolMode) -> list[ToolCall] | None:
    """The calls of a 'required' or named answer (constrained JSON); None when the text does not
    parse (cut short by max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if mode.kind == "named":
        if not isinstance(value, dict):
            return None
        return [ToolCall(mode.function, json.dumps(value, ensure_ascii=False))]
    if not isinstance(value, list) or not value:
        return None
    calls = []
    for item in value:
        valid = isinstance(item, dict) and isinstance(item.get("name"), str)
        valid = valid and isinstance(item.get("parameters"), dict)
        if not valid:
            return None
        calls.append(ToolCall(item["name"], json.dumps(item["parameters"], ensure_ascii=False)))
    return calls


def finish_reason(mode: ToolMode, calls: list, reason: str | None) -> str | None:
    """'tool_calls' when the model chose to call (auto, required); a named function is forced, and
    OpenAI answers those with 'stop'."""
    if calls and mode.kind in ("auto", "required") and reason == "stop":
        return "tool_calls"
    return reason


class ChoiceReader:
    """One choice's text as OpenAI's message or deltas."""

    def __init__(self, mode: ToolMode, reasoning: ReasoningParser | None):
        self.mode = mode
        # constrained answers are JSON from the first token: no reasoning to take out
        self.reasoning = reasoning if mode.kind in ("none", "auto") else None
        self._reasoning_stream = self.reasoning.stream() if self.reasoning else None
        self._tool_stream = mode.parser.stream() if mode.kind == "auto" else None
        self._held = ""  # required and named: the whole JSON answer
        self.calls: list[ToolCall] = []

    # -- a whole answer -------------------------------------------------------------------------
    def message(self, text: str, reason: str | None) -> tuple[ChatMessageOut, str | None]:
        reasoning = None
        if self.reasoning is not None:
            reasoning, text = self.reasoning.split(text)
        calls: list[ToolCall] = []
        if self.mode.kind == "auto":
            text, calls = self.mode.parser.extract(text)
        elif self.mode.kind in ("required", "named"):
            calls = constrained_calls(text, self.mode) or []
            text = "" if calls else text
        tool_calls = [ToolCallOut(id=call_id(), function=FunctionCallOut(name=c.name, arguments=c.arguments))
                      for c in calls]
        content = text if text or not tool_calls else None
        return (ChatMessageOut(content=content, reasoning_content=reasoning, tool_calls=tool_calls),
                finish_reason(self.mode, calls, reason))

    # -- streamed -------------------------------------------------------------------------------
    def deltas(self, piece: str) -> list[ChatDelta]:
        """Deltas for the next piece of text (none while it is held)."""
        return self._route(*self._split_reasoning(piece, final=False))

    def finish(self, reason: str | None) -> tuple[list[ChatDelta], str | None]:
        """The held text's deltas once the choice ended, and its finish reason."""
        deltas = self._route(*self._split_reasoning("", final=True), final=True)
        if self.mode.kind in ("required", "named"):
            calls = constrained_calls(self._held, self.mode)
            if calls is None and self._held:
                deltas.append(ChatDelta(content=self._held))
            elif calls is not None:
                deltas += self._call_deltas(calls)
        return deltas, finish_reason(self.mode, self.calls, reason)

    def _split_reasoning(self, piece: str, final: bool) -> tuple[str, str]:
        if self._reasoning_stream is None:
            return "", piece
        thought, content = self._reasoning_stream.feed(piece) if piece else ("", "")
        if final:
            more_thought, more_content = self._reasoning_stream.finish()
            thought, content = thought + more_thought, content + more_content
        return thought, content

    def _route(self, thought: str, content: str, final: bool = False) -> list[ChatDelta]:
        deltas = [ChatDelta(reasoning_content=thought)] if thought else []
        if self.mode.kind in ("required", "named"):
            self._held += content
            return deltas
        if self._tool_stream is None:
            return deltas + ([ChatDelta(content=content)] if content else [])
        events = self._tool_stream.feed(content) if content else []
        if final:
            events += self._tool_stream.finish()
        for event in events:
            if isinstance(event, ContentDelta):
                if event.text:
                    deltas.append(ChatDelta(content=event.text))
            elif isinstance(event, CallDone):
                deltas += self._call_deltas([event.call])
        return deltas

    def _call_deltas(self, calls: list[ToolCall]) -> list[ChatDelta]:
        deltas = []
        for call in calls:
            index = len(self.calls)
            self.calls.append(call)
            named = ToolCallDelta(index=index, id=call_id(), type="function",
                                  function=FunctionCallDelta(name=call.name, arguments=""))
            arguments = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=call.arguments))
            deltas += [ChatDelta(tool_calls=[named]), ChatDelta(tool_calls=[arguments])]
        return deltas
