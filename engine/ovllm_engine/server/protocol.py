"""OpenAI request and response bodies as pydantic models, and the sampling parameters the engine
takes from a request.

Every field the engine cannot honour is refused with a 400 that names it: unknown fields by
`extra="forbid"`, known ones with an unsupported value by `unsupported()`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from ovllm_engine.server.messages import Sampling

MAX_N = 64
MAX_STOP_STRINGS = 16
# Integer fields are bounded so that nothing past what the engine's C++ types hold reaches it.
INT32_MAX = 2**31 - 1
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]
# A schema, regex or grammar is compiled for every request that carries it; past this size it is
# refused rather than left to stall the engine's step.
MAX_CONSTRAINT_CHARS = 64 * 1024
MAX_TOOLS = 128
# What a chat template reads from the request itself: chat_template_kwargs may not replace it.
RESERVED_TEMPLATE_KEYS = frozenset({"messages", "tools", "add_generation_prompt", "documents", "chat_template"})
MAX_CHOICES = 256


def _json_text(value: dict | str) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "response"
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (and, one field each, its older `guided_*` fields)."""

    model_config = ConfigDict(extra="forbid")
    json_: dict | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI's plus vLLM's extensions)."""

    # allow_inf_nan: the body's parser refuses NaN and Infinity already; this holds for any other caller.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: str | list[str] | None = Field(default=None, validate_default=True)  # normalised to a list
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # for the caller's own tracking; does not change generation
    return_token_ids: bool = False  # vLLM's extension: the prompt's and each choice's token ids
    # Structured output: OpenAI's response_format, vLLM's structured_outputs and guided_* fields.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)] | None = None
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def structured(self) -> tuple[str, str, str] | None:
        """The one structured-output constraint this request asks for, as (field, kind, text) with
        kind 'json_schema', 'regex' or 'grammar'; None for free text. Raises ValueError((field,
        message)) when it asks for more than one or for one that cannot be expressed."""
        found: list[tuple[str, str, str]] = []
        if self.response_format is not None and self.response_format.type == "json_object":
            found.append(("response_format", "json_schema", '{"type": "object"}'))
        elif self.response_format is not None and self.response_format.type == "json_schema":
            spec = self.response_format.json_schema
            if spec is None or spec.schema_ is None:
                raise ValueError(("response_format.json_schema.schema",
                                  "response_format of type json_schema needs json_schema.schema"))
            found.append(("response_format.json_schema.schema", "json_schema", _json_text(spec.schema_)))
        guided = self.structured_outputs or StructuredOutputs()
        prefix = "structured_outputs." if self.structured_outputs else "guided_"
        for field, kind, value in (
            ("json", "json_schema", guided.json_ if self.structured_outputs else self.guided_json),
            ("regex", "regex", guided.regex if self.structured_outputs else self.guided_regex),
            ("choice", "regex", guided.choice if self.structured_outputs else self.guided_choice),
            ("grammar", "grammar", guided.grammar if self.structured_outputs else self.guided_grammar),
        ):
            if value is None:
                continue
            if field == "choice":
                if not value or any(not c for c in value):
                    raise ValueError((prefix + field, "choice needs one or more non-empty strings"))
                value = "(" + "|".join(_regex_literal(c) for c in value) + ")"
            found.append((prefix + field, kind, _json_text(value) if kind == "json_schema" else value))
        if guided.json_object:
            found.append(("structured_outputs.json_object", "json_schema", '{"type": "object"}'))
        if self.structured_outputs and any(getattr(self, f) is not None for f in
                                           ("guided_json", "guided_regex", "guided_choice", "guided_grammar")):
            raise ValueError(("structured_outputs", "send structured_outputs or guided_* fields, not both"))
        if len(found) > 1:
            raise ValueError((found[1][0], f"only one structured output constraint per request: {found[0][0]} "
                                           f"and {found[1][0]} were both given"))
        if not found:
            return None
        field, kind, text = found[0]
        if len(text) > MAX_CONSTRAINT_CHARS:
            raise ValueError((field, f"{field} is {len(text)} characters; at most {MAX_CONSTRAINT_CHARS} are taken"))
        return found[0]

    def unsupported(self) -> list[tuple[str, str]]:
        problems = []
        if self.logit_bias:
            problems.append(("logit_bias", "logit_bias is not supported by the OpenVINO engine"))
        if self.stream_options is not None and not self.stream:
            problems.append(("stream_options", "stream_options is only allowed when stream is true"))
        if self.stream_options is not None and self.stream_options.continuous_usage_stats:
            problems.append(("stream_options.continuous_usage_stats", "continuous_usage_stats is not supported: "
                                                                      "include_usage gives the totals at the end"))
        return problems

    def wants_logprobs(self) -> bool:
        return False

    def greedy(self) -> bool:
        return self.temperature == 0.0

    def top_logprobs_asked(self) -> bool:
        return False

    def sampling(self, max_new_tokens: int) -> Sampling:
        """Sampling parameters for the engine process (without the constraint, added by the server)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min(self.min_tokens, max_new_tokens),
            do_sample=temperature > 0.0,
            temperature=temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k if self.top_k and self.top_k > 0 else 0,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            ignore_eos=self.ignore_eos,
            logprobs=self.wants_logprobs(),
        )

    @staticmethod
    def with_seed_offset(sampling: Sampling, offset: int) -> Sampling:
        """n choices from one seed: reproducible, yet different."""
        if sampling.seed is None:
            return sampling
        return dataclasses.replace(sampling, seed=sampling.seed + offset)


def _regex_literal(text: str) -> str:
    """text as a regex that matches it literally (xgrammar's regex syntax escapes these)."""
    special = set("\\^$.|?*+()[]{}/")
    return "".join("\\" + c if c in special else {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, c) for c in text)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a token-id prompt must not be empty")
        return value

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.logprobs and self.logprobs > 1:
            problems.append(("logprobs", "logprobs above 1: the OpenVINO engine reports only the sampled token's "
                                         "logprob, so at most the top-1 alternative"))
        if self.logprobs == 1 and not self.greedy():
            problems.append(("logprobs", "logprobs 1 needs temperature 0: only then is the sampled token, whose "
                                         "logprob the engine reports, the most likely one"))
        if self.best_of is not None and self.best_of != self.n:
            problems.append(("best_of", "best_of other than n is not supported"))
        if self.suffix:
            problems.append(("suffix", "suffix (fill-in-the-middle) is not supported"))
        return problems

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None  # 0 asks for the sampled tokens' logprobs alone

    def top_logprobs_asked(self) -> bool:
        return bool(self.logprobs)

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one text or token list each."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, as the client sends the history back."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # sent back by clients of reasoning models; not re-rendered

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict:
        """The message as chat templates read it (Hugging Face's conventions)."""
        # OpenAI's `developer` role is the newer name of `system`; templates know only the latter.
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            # templates write the arguments with `tojson`: they expect an object, not its JSON text
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": _arguments_object(call.function.arguments)}}
                for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            message["name"] = self.name
        return message


def _arguments_object(arguments: str):
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: FunctionName
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value):
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("a function's parameters must be a JSON Schema of type object (its arguments are an "
                             "object)")
        return value

    def parameters_schema(self) -> str:
        """The arguments' schema: an object, also when the schema leaves out `type` (or is empty)."""
        return json.dumps({"type": "object", **(self.parameters or {})}, ensure_ascii=False)


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # vLLM's extensions for chat templates (Qwen3's enable_thinking, for one)
    chat_template_kwargs: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.top_logprobs and self.top_logprobs > 1:
            problems.append(("top_logprobs", "top_logprobs above 1: the OpenVINO engine reports only the sampled "
                                             "token's logprob, so at most the top-1 alternative"))
        if self.top_logprobs == 1 and not self.greedy():
            problems.append(("top_logprobs", "top_logprobs 1 needs temperature 0: only then is the sampled token, "
                                             "whose logprob the engine reports, the most likely one"))
        if self.top_logprobs is not None and not self.logprobs:
            problems.append(("top_logprobs", "top_logprobs needs logprobs set to true"))
        if self.store:
            problems.append(("store", "stored completions are not supported"))
        for index, message in enumerate(self.messages):
            if message.role == "tool" and not message.tool_call_id:
                problems.append((f"messages.{index}.tool_call_id", "a tool message needs the tool_call_id of the "
                                                                   "call it answers"))
            if message.tool_calls and message.role != "assistant":
                problems.append((f"messages.{index}.tool_calls", "only assistant messages carry tool_calls"))
        for key in RESERVED_TEMPLATE_KEYS & set(self.chat_template_kwargs or {}):
            problems.append((f"chat_template_kwargs.{key}", f"'{key}' comes from the request's own field, not from "
                                                            "chat_template_kwargs"))
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            problems.append(("tools", "two tools have the same function name"))
        total = sum(len(tool.function.parameters_schema()) for tool in self.tools or [])
        if total > MAX_CONSTRAINT_CHARS:
            problems.append(("tools", f"the tools' parameter schemas are {total} characters; at most "
                                      f"{MAX_CONSTRAINT_CHARS} are taken"))
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            problems.append(("tool_choice", f"tool_choice names the function '{self.tool_choice.function.name}', "
                                            "which is not among the tools"))
        if self.tool_choice not in (None, "none") and not self.tools:
            problems.append(("tool_choice", "tool_choice needs tools"))
        return problems

    def wants_logprobs(self) -> bool:
        return self.logprobs

    def top_logprobs_asked(self) -> bool:
        return bool(self.top_logprobs)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def effective_tool_choice(self) -> str | NamedToolChoice:
        """OpenAI's default: 'auto' when tools are given, else 'none'."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def template_messages(self) -> list[dict]:
        return [message.for_template() for message in self.messages]

    def template_tools(self) -> list[dict] | None:
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a prompt, or a chat rendered with the model's template."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    def unsupported(self) -> list[tuple[str, str]]:
        if (self.prompt is None) == (self.messages is None):
            return [("prompt", "send either prompt or messages")]
        return self.as_chat().unsupported() if self.messages is not None else []

    def as_chat(self) -> ChatCompletionRequest:
        return ChatCompletionRequest(messages=self.messages, add_generation_prompt=self.add_generation_prompt,
                                     tools=self.tools, chat_template_kwargs=self.chat_template_kwargs)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=INT32_MAX)]]


# -- responses ----------------------------------------------------------------------------------

class Response(BaseModel):
    """A response body part: fields named in _omit_if_none are left out when None (OpenAI leaves
    them out; the others are sent as null, as OpenAI sends them)."""

    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        for name in self._omit_if_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(Response):
    name: str
    arguments: str  # JSON text of an object


class ToolCallOut(Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(Response):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Response):
    content: list[TokenLogprob]


class CompletionLogprobs(Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class ChatMessageOut(Response):
    _omit_if_none = frozenset({"reasoning_content"})
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None  # vLLM's field, with --reasoning-parser
    tool_calls: list[ToolCallOut] = []


class ChatChoice(Response):
    _omit_if_none = frozenset({"token_ids"})
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    token_ids: list[int] | None = None  # vLLM's return_token_ids


class CompletionChoice(Response):
    _omit_if_none = frozenset({"token_ids"})
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    token_ids: list[int] | None = None


class ChatCompletionResponse(Response):
    _omit_if_none = frozenset({"prompt_token_ids"})
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | list[list[int]] | None = None


class CompletionResponse(Response):
    _omit_if_none = frozenset({"prompt_token_ids"})
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    prompt_token_ids: list[int] | list[list[int]] | None = None


class FunctionCallDelta(Response):
    _omit_if_none = frozenset({"name", "arguments"})
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Response):
    """OpenAI's streamed tool call: the first delta of a call has its id, type and name; the
    arguments follow in pieces under the same index."""

    _omit_if_none = frozenset({"id", "type"})
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(Response):
    _omit_if_none = frozenset({"role", "content", "reasoning_content", "tool_calls"})
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(Response):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class CompletionChunkChoice(Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class StreamChunk(Response):
    """One server-sent event. `usage` is present (null until the last event) only when the client
    asked for it with stream_options.include_usage, as OpenAI does."""

    _omit_if_none = frozenset({"usage"})
    id: str
    object: Literal["chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[ChatChunkChoice] | list[CompletionChunkChoice]
    usage: Usage | None = None
    include_usage: bool = Field(default=False, exclude=True)

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        if not self.include_usage:
            data.pop("usage", None)
        return data
