"""Tool-call parsers (`--tool-call-parser NAME`): find the function calls in a model's output.

Names and formats are vLLM's (vllm/tool_parsers/hermes_tool_parser.py, llama_tool_parser.py and
mistral_tool_parser.py):

- hermes (Qwen2.5, Qwen3, Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any
  number of them, anywhere in the output, whitespace around the JSON allowed. As in vLLM, a last call
  whose `</tool_call>` never came (the output ended) still counts.
- llama3_json (Llama 3.1-3.3): the output is `{"name": ..., "parameters"|"arguments": {...}}`, or several
  separated by `;`, optionally after `<|python_tag|>`.
- mistral: `[TOOL_CALLS]` then a JSON array of {"name", "arguments"} objects (tokenizers before v11;
  missing arguments mean {}, as in vLLM), or `[TOOL_CALLS]name[ARGS]{...}` / `[TOOL_CALLS]name{...}`
  (v11 and later), one marker per call. Text before the marker is content.

Unlike vLLM, nothing that is not a valid call is ever returned as one: text whose JSON does not parse,
lacks a string `name`, or whose arguments are not an object stays in the content (vLLM's mistral v11 path
passes unparsed arguments through, and its hermes path drops every call when one is broken). Text around
and between calls is kept as content, where vLLM drops it.

llama3_json accepts calls only at the start of the output (after whitespace), which is vLLM's streaming
rule; its whole-output parser also finds JSON after prose (and then discards the prose), which a stream
cannot do without holding every `{` of an answer.

Whole-output and streamed parsing run the same scanner, so they agree however the output is cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object: json.dumps(arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ContentDelta:
    """Streamed text that is not part of any call."""

    text: str


@dataclass(frozen=True)
class CallDone:
    """A call, complete and parsed."""

    call: ToolCall


# A scanner step: how many characters of the text it decided on, the calls they hold (None: they are
# content), and the parser's state after them. None instead of a step: undecided until more text comes.
_Step = tuple[int, list[ToolCall] | None, str]


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _close(text: str, start: int) -> int | None:
    """The index just past the bracket closing the one at text[start], or None if the text ends first.

    Brackets inside JSON strings (an argument holding "}" or "</tool_call>") do not count. `{}` and `[]`
    share one depth: in valid JSON they nest properly, and json.loads rejects the span when they don't.
    """
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity would make the arguments invalid JSON


def _loads(text: str) -> object:
    """The JSON value of `text`, or None when it is not strict JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def _call(obj: object, arg_keys: tuple[str, ...], default: dict | None = None) -> ToolCall | None:
    """The call that `obj` describes: a non-empty string `name` and an object under the first of
    `arg_keys` present (`default` when none is); None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = next((obj[key] for key in arg_keys if key in obj), default)
    if not isinstance(arguments, dict):
        return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


class ToolStream:
    """Parses one output as it is generated.

    Text that cannot be part of a call goes out at once as ContentDelta; from a possible start of a call
    on, text is held until the call is complete and parsed (CallDone) or proven not to be one (then it
    goes out as content). finish() releases what is left: held text that is not a complete valid call is
    content.
    """

    def __init__(self, parser: ToolParser) -> None:
        self._parser = parser
        self._held = ""
        self._state = "start"

    def feed(self, delta: str) -> list[ContentDelta | CallDone]:
        self._held += delta
        return self._drain(final=False)

    def finish(self) -> list[ContentDelta | CallDone]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[ContentDelta | CallDone]:
        events: list[ContentDelta | CallDone] = []
        content = ""
        while self._held:
            step = self._parser._step(self._held, final, self._state)
            if step is None:
                break
            length, calls, self._state = step
            if calls is None:
                content += self._held[:length]
            else:
                if content:
                    events.append(ContentDelta(content))
                    content = ""
                events.extend(CallDone(call) for call in calls)
            self._held = self._held[length:]
        if content:
            events.append(ContentDelta(content))
        return events


class ToolParser:
    """One tool-call format: parsing (whole output or streamed) and the strings that frame a call."""

    name: ClassVar[str] = ""

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content outside the calls, stripped; the calls) of a whole output."""
        stream = self.stream()
        events = stream.feed(text) + stream.finish()
        content = "".join(event.text for event in events if isinstance(event, ContentDelta))
        return content.strip(), [event.call for event in events if isinstance(event, CallDone)]

    def stream(self) -> ToolStream:
        """A parser for one output that arrives in pieces."""
        return ToolStream(self)

    def tag(self, tool_name: str, parameters_schema: dict) -> tuple[str, str]:
        """(begin, end): what this format writes before and after a call's arguments JSON, for constraining
        generation with structural tags. The schema is not needed by these formats (it goes between)."""
        raise NotImplementedError

    def triggers(self) -> list[str]:
        """Prefixes that begin a call (each tag()'s begin starts with one)."""
        raise NotImplementedError

    def _step(self, text: str, final: bool, state: str) -> _Step | None:
        """Decide on the beginning of `text` (never 0 characters); None while more text could change the
        decision (never when `final`: the output has ended). `state` carries what earlier steps saw."""
        raise NotImplementedError


def _name(tool_name: str) -> str:
    return json.dumps(tool_name, ensure_ascii=False)[1:-1]


class _MarkerToolParser(ToolParser):
    """A format whose calls start with a marker, anywhere in the output."""

    marker: ClassVar[str] = ""

    def triggers(self) -> list[str]:
        return [self.marker]

    def _step(self, text: str, final: bool, state: str) -> _Step | None:
        start = text.find(self.marker)
        if start < 0:
            length = len(text) if final else len(text) - _held_suffix(text, self.marker)
            return (length, None, state) if length else None
        if start > 0:
            return start, None, state
        found = self._at_marker(text, final)
        if found is None:
            if not final:
                return None
            found = 0, None
        length, calls = found
        if calls is None:  # not a call: the marker is ordinary text, and scanning goes on after it
            return len(self.marker), None, state
        return length, calls, state

    def _at_marker(self, text: str, final: bool) -> tuple[int, list[ToolCall] | None] | None:
        """For `text` starting with the marker: (its length, calls) when it starts with calls, (any,
        None) when it is not a call, None while undecided."""
        raise NotImplementedError


class HermesToolParser(_MarkerToolParser):
    name = "hermes"
    marker = "<tool_call>"
    close = "</tool_call>"

    def tag(self, tool_name: str, parameters_schema: dict) -> tuple[str, str]:
        return f'<tool_call>\n{{"name": "{_name(tool_name)}", "arguments": ', "}\n</tool_call>"

    def _at_marker(self, text: str, final: bool) -> tuple[int, list[ToolCall] | None] | None:
        start = _skip_ws(text, len(self.marker))
        if start == len(text):
            return None
        if text[start] != "{":
            return 0, None
        end = _close(text, start)
        if end is None:
            return None
        call = _call(_loads(text[start:end]), ("arguments",))
        if call is None:
            return 0, None
        after = _skip_ws(text, end)
        if text.startswith(self.close, after):
            return after + len(self.close), [call]
        if self.close.startswith(text[after:]):  # nothing more yet, or a partial `</tool_call>`
            # The output may end here: vLLM takes a call without its closing tag at the end of the output.
            return (len(text), [call]) if final else None
        return 0, None


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    python_tag = "<|python_tag|>"

    def tag(self, tool_name: str, parameters_schema: dict) -> tuple[str, str]:
        return f'{{"name": "{_name(tool_name)}", "parameters": ', "}"

    def triggers(self) -> list[str]:
        return ['{"name"']

    def _step(self, text: str, final: bool, state: str) -> _Step | None:
        # States: "start" (nothing decided yet), "call" (right after a call: `;` may bring another),
        # "content" (the rest of the output is content).
        if state == "content":
            return len(text), None, state
        pos = _skip_ws(text, 0)
        if state == "start":
            if text.startswith(self.python_tag, pos):
                pos = _skip_ws(text, pos + len(self.python_tag))
            elif pos < len(text) and self.python_tag.startswith(text[pos:]):  # a partial <|python_tag|>
                return self._undecided(text, final)
        elif pos < len(text) and text[pos] == ";":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text):
            return len(text), None, "content"
        if pos == len(text):
            return self._undecided(text, final)
        if text[pos] != "{":
            return len(text), None, "content"
        end = _close(text, pos)
        if end is None:
            return self._undecided(text, final)
        call = _call(_loads(text[pos:end]), ("arguments", "parameters"))
        if call is None:
            return len(text), None, "content"
        return end, [call], "call"

    @staticmethod
    def _undecided(text: str, final: bool) -> _Step | None:
        return (len(text), None, "content") if final else None


class MistralToolParser(_MarkerToolParser):
    name = "mistral"
    marker = "[TOOL_CALLS]"
    args_marker = "[ARGS]"
    # The function names the v11 form can carry (OpenAI allows letters, digits, `_` and `-`; some use `.`).
    function_name = re.compile(r"[A-Za-z0-9_.\-]+")

    def tag(self, tool_name: str, parameters_schema: dict) -> tuple[str, str]:
        return f'[TOOL_CALLS][{{"name": "{_name(tool_name)}", "arguments": ', "}]"

    def _at_marker(self, text: str, final: bool) -> tuple[int, list[ToolCall] | None] | None:
        start = _skip_ws(text, len(self.marker))
        if start == len(text):
            return None
        if text[start] == "[":  # before v11: a JSON array of calls
            end = _close(text, start)
            if end is None:
                return None
            items = _loads(text[start:end])
            found = [_call(item, ("arguments",), default={}) for item in items] if isinstance(items, list) else []
            calls = [call for call in found if call is not None]
            if not calls or len(calls) < len(found):  # all of the array must be calls, and at least one
                return 0, None
            return end, calls
        # v11 and later: NAME, optionally [ARGS], then the arguments object.
        name = self.function_name.match(text, start)
        if name is None:
            return 0, None
        pos = name.end()
        if pos == len(text):
            return None
        if text.startswith(self.args_marker, pos):
            pos += len(self.args_marker)
        elif self.args_marker.startswith(text[pos:]):
            return None
        pos = _skip_ws(text, pos)
        if pos == len(text):
            return None
        if text[pos] != "{":
            return 0, None
        end = _close(text, pos)
        if end is None:
            return None
        call = _call({"name": name.group(), "arguments": _loads(text[pos:end])}, ("arguments",))
        return (end, [call]) if call else (0, None)


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def detect(chat_template: str) -> str | None:
    """The tool parser that a chat template implies, or None."""
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<|python_tag|>" in chat_template or ("<|start_header_id|>" in chat_template and "tools" in chat_template):
        return "llama3_json"
    return None
