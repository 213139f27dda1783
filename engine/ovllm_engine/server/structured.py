"""What a request's structured output and tools ask of the decoder: one Constraint (or none), and
how its choices' text is to be read back (ToolMode).

- response_format / structured_outputs / guided_*: the schema, regex or grammar itself.
- tool_choice "required" and a named function: constrained to JSON as vLLM does it (a list of
  {name, parameters} objects, or the named function's arguments), so every call parses and its
  arguments validate, with any model, parser or not.
- tool_choice "auto": the model writes free text or calls in its own format (the tool parser's);
  once it writes the parser's trigger the call is constrained with structural tags, so a call
  that has begun always parses and its arguments validate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from ovllm_engine.server.messages import Constraint, TaggedSchema, TriggeredTags
from ovllm_engine.server.protocol import ChatCompletionRequest, NamedToolChoice, SamplingFields
from ovllm_engine.server.tool_parsers import ToolParser


class Refused(ValueError):
    """The request asks for something that cannot be constrained: (field, message)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True)
class ToolMode:
    kind: Literal["none", "auto", "required", "named"]
    function: str | None = None  # the named function
    parser: ToolParser | None = None  # auto


@dataclass(frozen=True)
class Plan:
    constraint: Constraint | None
    field: str | None  # the request field the constraint comes from, for a 400 when it cannot compile
    tools: ToolMode


def plan(body: SamplingFields, parser: ToolParser | None) -> Plan:
    try:
        found = body.structured()
    except ValueError as exc:
        raise Refused(*exc.args[0]) from None
    constraint = Constraint(**{found[1]: found[2]}) if found else None
    field = found[0] if found else None
    mode = tool_mode(body, parser) if isinstance(body, ChatCompletionRequest) else ToolMode("none")
    if mode.kind != "none" and constraint is not None:
        raise Refused(field, f"{field} and tools cannot constrain one answer together: send tool_choice 'none' "
                             "or leave the structured output out")
    if mode.kind == "none":
        return Plan(constraint, field, mode)
    return Plan(tool_constraint(body, mode), "tools", mode)


def tool_mode(body: ChatCompletionRequest, parser: ToolParser | None) -> ToolMode:
    choice = body.effective_tool_choice()
    if choice == "none" or not body.tools:
        return ToolMode("none")
    if isinstance(choice, NamedToolChoice):
        return ToolMode("named", function=choice.function.name)
    if choice == "required":
        return ToolMode("required")
    if parser is None:
        raise Refused("tool_choice", "tool_choice 'auto' needs a tool-call parser, and this model's chat template "
                                     "implies none: start the server with --enable-auto-tool-choice "
                                     "--tool-call-parser NAME, or send tool_choice 'required' or a named function")
    return ToolMode("auto", parser=parser)


def tool_constraint(body: ChatCompletionRequest, mode: ToolMode) -> Constraint:
    functions = [tool.function for tool in body.tools]
    if mode.kind == "named":
        (function,) = [f for f in functions if f.name == mode.function]
        return Constraint(json_schema=function.parameters_schema())
    if mode.kind == "required":
        calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [f.name]},
                                                   "parameters": json.loads(f.parameters_schema())},
                  "required": ["name", "parameters"]} for f in functions]
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if body.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return Constraint(json_schema=json.dumps(schema, ensure_ascii=False))
    parser = mode.parser
    tags = tuple(TaggedSchema(*_around(parser.tag(f.name, json.loads(f.parameters_schema())), f.parameters_schema()))
                 for f in functions)
    return Constraint(tags=TriggeredTags(tuple(parser.triggers()), tags, first_only=body.parallel_tool_calls is False))


def _around(begin_end: tuple[str, str], schema: str) -> tuple[str, str, str]:
    begin, end = begin_end
    return begin, schema, end
