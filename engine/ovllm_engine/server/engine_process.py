"""The engine process: OpenVINO GenAI's ContinuousBatchingPipeline stepped in a loop of its own.

`ContinuousBatchingPipeline.step()` holds the Python GIL for the whole step, so the pipeline cannot
share a process with the HTTP server: this loop runs in a child process and talks to the server
over a pipe, in the typed messages of messages.py.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import replace
from multiprocessing.connection import Connection

from ovllm_engine.config import EngineConfig
from ovllm_engine.server.messages import (
    Abort,
    AddRequest,
    CacheInfo,
    Constraint,
    Failed,
    Output,
    Outputs,
    Ready,
    Sampling,
    Speculation,
    Stats,
    Stop,
)
from ovllm_engine.server.prefix_cache import PrefixCacheLedger
from ovllm_engine.speculative import NGRAM, SpeculativeConfig

log = logging.getLogger("ovllm.engine")

# How often an idle engine reports its gauges, in seconds.
IDLE_STATS_INTERVAL = 1.0
# Tokens per KV cache block of GenAI's CPU plugin (tests/engine/test_metrics.py checks it against the
# pipeline: the cache's usage steps up at the 33rd token).
CPU_BLOCK_SIZE = 32


def build_pipeline(config: EngineConfig, speculating: bool = True):
    """The model's ContinuousBatchingPipeline; with --speculative-config (and `speculating`) GenAI's
    prompt-lookup or draft-model pipeline of it."""
    import openvino_genai as ov_genai

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = config.kv_cache_space_gb
    scheduler.max_num_batched_tokens = config.max_num_batched_tokens
    scheduler.max_num_seqs = config.max_num_seqs
    scheduler.enable_prefix_caching = config.enable_prefix_caching
    scheduler.dynamic_split_fuse = config.enable_chunked_prefill
    properties = config.ov_properties()
    spec = config.speculative if speculating else None
    if spec is not None and spec.method == NGRAM:
        properties["prompt_lookup"] = True
    elif spec is not None:  # the draft runs with the same OpenVINO properties (precision, threads) as the model
        properties["draft_model"] = ov_genai.draft_model(spec.model_path, config.device, **config.ov_properties())
    return ov_genai.ContinuousBatchingPipeline(config.model_path, scheduler, config.device, properties)


def build_lanes(config: EngineConfig) -> list[Lane]:
    """The pipelines requests go to: one, or with speculative decoding that turns itself off under
    load (disable_by_batch_size below --max-num-seqs), a speculating one and a plain one. GenAI's
    speculative pipelines check K guesses for every sequence they hold (a request cannot opt out),
    which costs more than it saves in a full batch; the plain pipeline takes the requests then."""
    spec = config.speculative
    lanes = [Lane(build_pipeline(config), spec, config.enable_prefix_caching)]
    if spec is not None and spec.disable_by_batch_size < config.max_num_seqs:
        lanes.append(Lane(build_pipeline(config, speculating=False), None, config.enable_prefix_caching))
    return lanes


def speculate(config, spec: SpeculativeConfig | None) -> None:
    """Ask a GenerationConfig for speculative decoding as the pipeline was built for it: GenAI's
    speculative pipelines refuse a request that does not (one without K would fail in add_request)."""
    if spec is None:
        return
    config.num_assistant_tokens = spec.num_speculative_tokens
    if spec.method == NGRAM:
        config.max_ngram_size = spec.prompt_lookup_max


def structured_output(constraint: Constraint):
    """GenAI's StructuredOutputConfig for a constraint (compiled by xgrammar inside the pipeline)."""
    import openvino_genai as ov_genai

    structured = ov_genai.StructuredOutputConfig
    if constraint.json_schema is not None:
        return structured(json_schema=constraint.json_schema)
    if constraint.regex is not None:
        return structured(regex=constraint.regex)
    if constraint.grammar is not None:
        return structured(grammar=constraint.grammar)
    tags = constraint.tags
    return structured(structural_tags_config=structured.TriggeredTags(
        triggers=list(tags.triggers),
        tags=[structured.Tag(t.begin, structured.JSONSchema(t.schema), t.end) for t in tags.tags],
        at_least_one=tags.at_least_one, stop_after_first=tags.first_only))


def generation_config(sampling: Sampling, defaults, spec: SpeculativeConfig | None = None):
    """A GenAI GenerationConfig from the server's Sampling, with the model's EOS tokens."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.eos_token_id = defaults.eos_token_id
    config.stop_token_ids = set(defaults.stop_token_ids)
    config.max_new_tokens = sampling.max_new_tokens
    config.min_new_tokens = sampling.min_new_tokens
    config.ignore_eos = sampling.ignore_eos
    config.presence_penalty = sampling.presence_penalty
    config.frequency_penalty = sampling.frequency_penalty
    config.repetition_penalty = sampling.repetition_penalty
    config.logprobs = 1 if sampling.logprobs else 0
    config.echo = sampling.echo
    if sampling.do_sample:
        config.do_sample = True
        config.temperature = sampling.temperature
        config.top_p = sampling.top_p
        if sampling.top_k:
            config.top_k = sampling.top_k
        if sampling.min_p:
            config.min_p = sampling.min_p
        seed = sampling.seed
        config.rng_seed = random.getrandbits(31) if seed is None else seed % (2**32)
    if sampling.constraint is not None:
        config.structured_output_config = structured_output(sampling.constraint)
    speculate(config, spec)
    config.validate()
    return config


class SpeculationCounts:
    """vLLM's spec_decode counts since the last Stats, read off the tokens each step delivers: GenAI's
    continuous batching does not report its own per request. A sequence past its first token gets K
    guesses checked each step (GenAI pads a shorter prompt-lookup match to K), and a step that
    delivers n tokens accepted the first n - 1 of them (the last is the model's own next token)."""

    def __init__(self, k: int):
        self.k = k
        self.drafts = 0
        self.accepted_per_position = [0] * k

    def step(self, delivered: int) -> None:
        self.drafts += 1
        for position in range(min(delivered - 1, self.k)):
            self.accepted_per_position[position] += 1

    def take(self) -> Speculation | None:
        if not self.drafts:
            return None
        taken = Speculation(self.drafts, self.drafts * self.k, tuple(self.accepted_per_position))
        self.drafts, self.accepted_per_position = 0, [0] * self.k
        return taken


class Lane:
    """One pipeline and what the loop keeps of the requests in it."""

    def __init__(self, pipeline, spec: SpeculativeConfig | None, prefix_caching: bool):
        self.pipeline = pipeline
        self.spec = spec  # None: a plain pipeline
        self.requests: set[int] = set()
        self.ledger = PrefixCacheLedger(CPU_BLOCK_SIZE, None) if prefix_caching else None
        self.reported = (0, 0)  # the ledger's queries and hits in the last Stats
        self.drafts = SpeculationCounts(spec.num_speculative_tokens if spec else 0)
        # requests were cancelled here since its last step: GenAI frees them (and forgets their ids,
        # which may come back after a move) only in a step, so the lane gets one even if empty (~30 us)
        self.cancelled = False

    def prefix_counts(self, cache_usage: float) -> tuple[int, int]:
        """Prefix-cache queries and hits since the last call."""
        ledger = self.ledger
        if ledger is None:
            return 0, 0
        if cache_usage > 0 and ledger.in_use:
            # GenAI's usage is its blocks in use over all blocks: the ledger learns the total from it
            ledger.total_blocks = round(ledger.in_use * 100.0 / cache_usage)
        counts = ledger.queries - self.reported[0], ledger.hits - self.reported[1]
        self.reported = (ledger.queries, ledger.hits)
        return counts


class EngineLoop:
    """Owns the pipelines (lanes) and the handles of the requests in them."""

    def __init__(self, lanes: list[Lane], conn: Connection):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        self._genai, self._ov, self._np = ov_genai, ov, np
        self.lanes = lanes
        self.conn = conn
        self.defaults = lanes[0].pipeline.get_config()
        self.handles: dict[int, object] = {}  # GenAI request ids are numbers
        self.added: dict[int, AddRequest] = {}  # what each request asked for, to add it to another lane
        self.lane_of: dict[int, Lane] = {}
        self.added_at: dict[int, float] = {}  # until the request's first Output carries it
        self.echoed: dict[int, int] = {}  # echo requests: prompt tokens still to take off the front
        self.running = True
        self._last_stats = 0.0
        # the tokens each request has in the pipeline: its prompt, then its output
        self.tokens: dict[int, list[int]] = {}
        # requests moved to another lane past their first token: their next output comes from a prefill
        self.refilling: set[int] = set()
        spec = lanes[0].spec
        # with two lanes: requests in the engine from which new ones go to the plain lane
        self.speculation_limit = spec.disable_by_batch_size if spec is not None and len(lanes) > 1 else None
        self.speculating = True  # new requests go to the speculating lane

    def serve(self) -> None:
        while self.running:
            if not self._take_commands(block=not self.handles):
                return  # the server is gone
            if not self.handles:
                continue
            self._move_to_current_lane()
            for lane in self.lanes:
                if lane.requests or lane.cancelled:
                    lane.pipeline.step()
                    lane.cancelled = False
            outputs, step_tokens = self._collect()
            self.conn.send(Outputs(outputs, self._stats(step_tokens)))

    def _take_commands(self, block: bool) -> bool:
        timeout = IDLE_STATS_INTERVAL if block else 0
        try:
            while self.conn.poll(timeout):
                self._handle(self.conn.recv())
                timeout = 0
            if block:
                now = time.monotonic()
                if now - self._last_stats >= IDLE_STATS_INTERVAL:
                    self.conn.send(Outputs([], self._stats()))
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.running = False
            return False
        return self.running

    def _handle(self, message: AddRequest | Abort | Stop) -> None:
        if isinstance(message, AddRequest):
            self._add(message)
        elif isinstance(message, Abort):
            handle = self.handles.pop(message.request_id, None)
            self._forget(message.request_id)
            if handle is not None:
                handle.cancel()
                self.lane_of[message.request_id].cancelled = True
                self._left(message.request_id)
                if not self.handles:  # idle now: report the gauges at once, not an idle interval later
                    self.conn.send(Outputs([], self._stats()))
        elif isinstance(message, Stop):
            self.running = False
        else:
            raise TypeError(f"unknown message {message!r}")

    def _lane_for_new(self) -> Lane:
        """The lane for a new request. Two busy lanes cost a pass over the weights each per loop, so
        new requests stick to one lane: the speculating one until the engine holds speculation_limit
        requests, then the plain one until it holds fewer than half as many (the requests left in the
        other lane move over: _move_to_current_lane)."""
        if self.speculation_limit is None:
            return self.lanes[0]
        held = len(self.handles)
        if self.speculating and held >= self.speculation_limit:
            self.speculating = False
        elif not self.speculating and held < max(1, self.speculation_limit // 2):
            self.speculating = True
        return self._current_lane()

    def _current_lane(self) -> Lane:
        return self.lanes[0] if self.speculating else self.lanes[-1]

    def _add(self, message: AddRequest) -> None:
        lane = self._lane_for_new()
        self.added[message.request_id] = message
        self.added_at[message.request_id] = time.monotonic()
        if message.sampling.echo:
            self.echoed[message.request_id] = len(message.prompt_ids)
        self._add_to(lane, message.request_id, message.prompt_ids, message.sampling)

    def _add_to(self, lane: Lane, request_id: int, prompt_ids: list[int], sampling: Sampling) -> None:
        try:
            config = generation_config(sampling, self.defaults, lane.spec)
            input_ids = self._ov.Tensor(self._np.array([prompt_ids], dtype=self._np.int64))
            handle = lane.pipeline.add_request(request_id, input_ids, config)
        except RuntimeError as exc:  # GenAI's own refusal of these parameters: this request fails alone
            self._forget(request_id)
            self.conn.send(Outputs([Output(request_id, [], None, None, error=str(exc))], self._stats()))
            return
        self.handles[request_id] = handle
        self.lane_of[request_id] = lane
        lane.requests.add(request_id)
        self.tokens[request_id] = list(prompt_ids)
        if lane.ledger is not None:
            lane.ledger.add(request_id, prompt_ids)

    def _move_to_current_lane(self) -> None:
        """Move the requests left in a lane new ones no longer go to into the lane they go to, where
        the answer stays the same. While both lanes hold requests every loop pays a pass over the
        weights for each, which under load costs more than speculation gains (measured: 0.83x at 64
        requests on the 0.5B shape when the old lane's requests finished there).

        GenAI cannot hand a sequence's KV cache from one pipeline to another: the request is cancelled
        and added to the new lane with its prompt and the tokens it has delivered as the prompt, which
        the new lane computes again in one prefill (cheaper than the passes it saves)."""
        current = self._current_lane()
        for lane in self.lanes:
            if lane is current or not lane.requests:
                continue
            movable = [request_id for request_id in lane.requests if self._movable(request_id)]
            for request_id in movable:
                self._move(request_id, current)
            if movable:
                log.info("moved %d request(s) to the %s pipeline", len(movable),
                          "speculating" if current.spec is not None else "plain")

    def _movable(self, request_id: int) -> bool:
        """Whether a request continues the same in another lane when added again with its delivered
        tokens as part of its prompt. One that has delivered nothing starts over as it was. Past that,
        not one whose next tokens depend on state GenAI keeps beside the tokens: a grammar's position
        (structured output), counts of the generated tokens (presence and frequency penalties), a seeded
        random stream. Repetition penalty counts prompt and output alike, so it stays the same."""
        if request_id in self.added_at:
            return True
        sampling = self.added[request_id].sampling
        return (sampling.constraint is None and not sampling.presence_penalty and not sampling.frequency_penalty
                and not (sampling.do_sample and sampling.seed is not None))

    def _move(self, request_id: int, lane: Lane) -> None:
        message = self.added[request_id]
        sampling, prompt_ids = message.sampling, message.prompt_ids
        fresh = request_id in self.added_at  # its prompt may not be computed yet
        if not fresh:
            prompt_ids = list(self.tokens[request_id])
            delivered = len(prompt_ids) - len(message.prompt_ids)
            sampling = replace(sampling, max_new_tokens=sampling.max_new_tokens - delivered,
                               min_new_tokens=max(0, sampling.min_new_tokens - delivered), echo=False)
            self.refilling.add(request_id)
        self.handles.pop(request_id).cancel()
        self.lane_of[request_id].cancelled = True
        self._left(request_id, computed=not fresh)
        self._add_to(lane, request_id, prompt_ids, sampling)

    def _forget(self, request_id: int) -> None:
        """Drop what the loop keeps of a request that is gone from the engine (finished, refused or
        aborted); _left frees its place in its lane."""
        for held in (self.added, self.added_at, self.echoed):
            held.pop(request_id, None)
        self.refilling.discard(request_id)

    def _left(self, request_id: int, computed: bool = True) -> None:
        """A request is out of its pipeline (finished, dropped or cancelled): its blocks are free, and
        kept for reuse if it computed them."""
        tokens = self.tokens.pop(request_id, None)
        lane = self.lane_of.pop(request_id)
        lane.requests.discard(request_id)
        if lane.ledger is not None and tokens is not None:
            lane.ledger.finish(request_id, tokens if computed else [])

    def _collect(self) -> tuple[list[Output], int]:
        """The step's Outputs, and the tokens it computed as vLLM counts them (for
        vllm:iteration_tokens_total): every output token, and a request's whole prompt in the step
        that gave its first output token."""
        status = self._genai.GenerationStatus
        outputs = []
        step_tokens = 0
        for request_id, handle in list(self.handles.items()):
            lane = self.lane_of[request_id]
            ids: list[int] = []
            logprobs: list[float] = []
            finish = None
            while handle.can_read():
                for output in handle.read().values():
                    ids.extend(output.generated_ids)
                    logprobs.extend(output.generated_log_probs)
                    reason = output.finish_reason
                    if reason != self._genai.GenerationFinishReason.NONE:
                        finish = "length" if reason == self._genai.GenerationFinishReason.LENGTH else "stop"
            state = handle.get_status()
            error = None
            if state != status.RUNNING and finish is None:
                if state == status.FINISHED:
                    finish = "stop"
                else:  # ignored (did not fit the KV cache) or dropped by the pipeline
                    error = f"the engine dropped the request ({state.name.lower()})"
            prompt_logprobs = None
            if request_id in self.echoed and ids:
                # With echo GenAI's first output begins with the prompt; its first token has no logprob.
                # Its logprobs cover the tokens it computed: after a prefix-cache hit none for the cached
                # prompt tokens nor the first one after them (their logits were never computed).
                count = self.echoed.pop(request_id)
                if logprobs:
                    known = [None] * (len(ids) - len(logprobs)) + logprobs
                    prompt_logprobs, logprobs = [None, *known[1:count]], logprobs[len(logprobs) - (len(ids) - count):]
                else:
                    prompt_logprobs = [None] * count
                ids = ids[count:]
            if ids and lane.spec is not None and request_id not in self.added_at and request_id not in self.refilling:
                lane.drafts.step(len(ids))  # past its first token every step checked K guesses
            if ids and request_id in self.tokens:
                if request_id in self.added_at or request_id in self.refilling:
                    step_tokens += len(self.tokens[request_id])  # its first output here: it computed the prompt
                self.tokens[request_id].extend(ids)
                if lane.ledger is not None:
                    lane.ledger.grow(request_id, len(self.tokens[request_id]))
            step_tokens += len(ids)
            if ids:
                self.refilling.discard(request_id)
            if ids or finish or error or prompt_logprobs is not None:
                added_at = self.added_at.pop(request_id, None)
                outputs.append(Output(request_id, ids, logprobs if logprobs else None, finish, error, added_at,
                                      prompt_logprobs))
            if finish or error:
                del self.handles[request_id]
                self._forget(request_id)
                self._left(request_id)
        return outputs, step_tokens

    def _stats(self, step_tokens: int | None = None) -> Stats:
        self._last_stats = time.monotonic()
        running = queries = hits = 0
        usage = 0.0
        for lane in self.lanes:
            metrics = lane.pipeline.get_metrics()
            # The pipeline's counts describe its last step and go stale once it idles (finished and
            # aborted requests still show), so bound them by the requests this loop still holds.
            running += min(metrics.scheduled_requests, len(lane.requests))
            # two lanes have a KV cache each: the fuller one is where requests wait or are preempted first;
            # a lane left empty reports its last busy step until stepped again, so it does not count
            if lane.requests or lane is self._current_lane():
                usage = max(usage, metrics.cache_usage / 100.0)
            lane_queries, lane_hits = lane.prefix_counts(metrics.cache_usage)
            queries, hits = queries + lane_queries, hits + lane_hits
        return Stats(running=running, waiting=max(0, len(self.handles) - running), kv_cache_usage=usage,
                     step_tokens=step_tokens, prefix_queries=queries, prefix_hits=hits,
                     speculation=self.lanes[0].drafts.take())


def engine_main(config: EngineConfig, conn: Connection, log_level: int = logging.INFO,
                log_format: str = "plain") -> None:
    """Entry point of the engine process."""
    from ovllm_cli.logs import setup_logging

    setup_logging(log_level, log_format)
    # The server process decides when to stop: SIGTERM and Ctrl-C reach it, and it tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()
    try:
        lanes = build_lanes(config)
    except Exception as exc:
        log.exception("could not load the model")
        conn.send(Failed(f"could not load {config.model_path}: {exc}"))
        return
    log.info("%s ready in %.1fs (engine pid %d)", "pipeline" if len(lanes) == 1 else "pipelines (speculating, plain)",
             time.monotonic() - started, os.getpid())
    cache = CacheInfo(block_size=CPU_BLOCK_SIZE, cache_dtype=config.kv_cache_precision or "auto",
                      enable_prefix_caching=config.enable_prefix_caching)
    conn.send(Ready(os.getpid(), cache))
    EngineLoop(lanes, conn).serve()
    log.info("engine process exits")
