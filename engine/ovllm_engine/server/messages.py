"""The messages between the server process and the engine process, as typed values.

Standard library only: both processes import it, and the pipe pickles these frozen dataclasses.

    server -> engine   AddRequest   Abort   Stop
    engine -> server   Ready   Failed   Outputs (a list of Output and the engine's Stats)

An Output's `added_at`, on a request's first Output, is the time.monotonic() at which the pipeline
took it (CLOCK_MONOTONIC is shared by the processes of one machine).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaggedSchema:
    """A span `begin` + JSON that validates against `schema` + `end` (a tool call in a model's format)."""

    begin: str
    schema: str  # JSON Schema, as JSON text
    end: str


@dataclass(frozen=True)
class TriggeredTags:
    """Free text until the model writes a trigger; from there one of `tags`, constrained.
    at_least_one: the output must hold a tag; first_only: free text again after the first one."""

    triggers: tuple[str, ...]
    tags: tuple[TaggedSchema, ...]
    at_least_one: bool = False
    first_only: bool = False


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding (GenAI's StructuredOutputConfig, xgrammar): exactly one field is set."""

    json_schema: str | None = None  # JSON Schema as JSON text
    regex: str | None = None
    grammar: str | None = None  # EBNF, as xgrammar reads it
    tags: TriggeredTags | None = None

    def describe(self) -> str:
        """Which kind it is, for messages: 'json_schema', 'regex', 'grammar' or 'tags'."""
        for kind in ("json_schema", "regex", "grammar", "tags"):
            if getattr(self, kind) is not None:
                return kind
        return "none"


@dataclass(frozen=True)
class Sampling:
    """GenAI's GenerationConfig fields the server sets for one sequence."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    logprobs: bool = False  # the sampled tokens' logprobs
    echo: bool = False  # the prompt's tokens (and their logprobs) come first
    constraint: Constraint | None = None


@dataclass(frozen=True)
class AddRequest:
    request_id: int
    prompt_ids: list[int]
    sampling: Sampling


@dataclass(frozen=True)
class Abort:
    request_id: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class CacheInfo:
    """The KV cache as the pipeline built it (for vllm:cache_config_info)."""

    block_size: int  # tokens per block
    cache_dtype: str
    enable_prefix_caching: bool


@dataclass(frozen=True)
class Ready:
    pid: int
    cache: CacheInfo | None = None


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Output:
    """What one engine step produced for one request."""

    request_id: int
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None  # "stop" or "length" on the request's last Output
    error: str | None = None  # GenAI refused or dropped the request; its last Output
    added_at: float | None = None
    prompt_logprobs: list[float | None] | None = None  # with echo and logprobs, on the first Output


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding since the last Stats, in vLLM's spec_decode terms."""

    drafts: int  # sequence steps that checked guesses
    draft_tokens: int  # guesses checked
    accepted_per_position: tuple[int, ...]  # [i]: drafts whose guess i (0-based) was accepted

    @property
    def accepted(self) -> int:
        return sum(self.accepted_per_position)


@dataclass(frozen=True)
class Stats:
    """The engine's state after a step (or while idle), and what changed since the last Stats."""

    running: int
    waiting: int
    kv_cache_usage: float  # 0..1
    step_tokens: int | None = None  # tokens the step computed (prefill and decode); None: no step ran
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache since the last Stats
    prefix_hits: int = 0  # of them, tokens whose KV was found there
    speculation: Speculation | None = None  # with --speculative-config, when steps checked guesses


@dataclass(frozen=True)
class Outputs:
    outputs: list[Output]
    stats: Stats
