"""OpenAI request bodies as pydantic models, and the sampling parameters the engine takes from them.

Every field the engine cannot honour is refused with a 400 that names it: unknown fields by
`extra="forbid"`, known ones with an unsupported value by `unsupported_fields()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 64
MAX_STOP_STRINGS = 16
# Integer fields are bounded so that nothing past what the engine's C++ types hold reaches it.
INT32_MAX = 2**31 - 1
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]


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

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def unsupported(self) -> list[tuple[str, str]]:
        problems = []
        if self.logit_bias:
            problems.append(("logit_bias", "logit_bias is not supported by the OpenVINO engine"))
        if self.stream_options is not None and not self.stream:
            problems.append(("stream_options", "stream_options is only allowed when stream is true"))
        return problems

    def wants_logprobs(self) -> bool:
        return False

    def sampling(self, max_new_tokens: int) -> dict[str, Any]:
        """Sampling parameters for the engine process (a plain dict: it crosses a process boundary)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        return {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min(self.min_tokens, max_new_tokens),
            "do_sample": temperature > 0.0,
            "temperature": temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": self.top_k if self.top_k and self.top_k > 0 else 0,
            "min_p": self.min_p or 0.0,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "repetition_penalty": self.repetition_penalty or 1.0,
            "ignore_eos": self.ignore_eos,
            "logprobs": self.wants_logprobs(),
        }


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
        if self.logprobs:
            problems.append(("logprobs", "logprobs above 0: the engine reports only the sampled token's logprob"))
        if self.echo:
            problems.append(("echo", "echo is not supported"))
        if self.best_of is not None and self.best_of != self.n:
            problems.append(("best_of", "best_of other than n is not supported"))
        if self.suffix:
            problems.append(("suffix", "suffix (fill-in-the-middle) is not supported"))
        return problems

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None  # 0 asks for the sampled tokens' logprobs alone

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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.top_logprobs:
            problems.append(("top_logprobs", "top_logprobs above 0: the engine reports only the sampled token"))
        if self.top_logprobs is not None and not self.logprobs:
            problems.append(("top_logprobs", "top_logprobs needs logprobs set to true"))
        if self.response_format and self.response_format.get("type") != "text":
            problems.append(("response_format", "only response_format {'type': 'text'} is supported"))
        if self.tools:
            problems.append(("tools", "tool calling is not supported"))
        if self.tool_choice not in (None, "none"):
            problems.append(("tool_choice", "tool calling is not supported"))
        if self.store:
            problems.append(("store", "stored completions are not supported"))
        return problems

    def wants_logprobs(self) -> bool:
        return self.logprobs

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        # OpenAI's `developer` role is the newer name of `system`; templates know only the latter.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages
        ]
