"""The engine process: OpenVINO GenAI's ContinuousBatchingPipeline stepped in a loop of its own.

`ContinuousBatchingPipeline.step()` holds the Python GIL for the whole step, so the pipeline cannot
share a process with the HTTP server: this loop runs in a child process and talks to the server
over a pipe. Messages are plain tuples:

    server -> engine   ("add", request_id, prompt_ids, sampling)   ("abort", request_id)   ("stop",)
    engine -> server   ("ready", info)   ("failed", message)   ("out", [Output, ...], stats)

An Output is (request_id, new_token_ids, new_logprobs or None, finish_reason or None, error or None,
added_at or None): added_at, on a request's first Output, is the time.monotonic() at which the
pipeline took it (CLOCK_MONOTONIC is shared by the processes of one machine).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from multiprocessing.connection import Connection

from ovllm_engine.config import EngineConfig

log = logging.getLogger("ovllm.engine")

# How often an idle engine reports its gauges, in seconds.
IDLE_STATS_INTERVAL = 1.0


def build_pipeline(config: EngineConfig):
    import openvino_genai as ov_genai

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = config.kv_cache_space_gb
    scheduler.max_num_batched_tokens = config.max_num_batched_tokens
    scheduler.max_num_seqs = config.max_num_seqs
    scheduler.enable_prefix_caching = config.enable_prefix_caching
    scheduler.dynamic_split_fuse = config.enable_chunked_prefill
    return ov_genai.ContinuousBatchingPipeline(config.model_path, scheduler, config.device, config.ov_properties())


def generation_config(sampling: dict, defaults):
    """A GenAI GenerationConfig from the server's sampling dict, with the model's EOS tokens."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.eos_token_id = defaults.eos_token_id
    config.stop_token_ids = set(defaults.stop_token_ids)
    config.max_new_tokens = sampling["max_new_tokens"]
    config.min_new_tokens = sampling["min_new_tokens"]
    config.ignore_eos = sampling["ignore_eos"]
    config.presence_penalty = sampling["presence_penalty"]
    config.frequency_penalty = sampling["frequency_penalty"]
    config.repetition_penalty = sampling["repetition_penalty"]
    config.logprobs = 1 if sampling["logprobs"] else 0
    if sampling["do_sample"]:
        config.do_sample = True
        config.temperature = sampling["temperature"]
        config.top_p = sampling["top_p"]
        if sampling["top_k"]:
            config.top_k = sampling["top_k"]
        if sampling["min_p"]:
            config.min_p = sampling["min_p"]
        seed = sampling["seed"]
        config.rng_seed = random.getrandbits(31) if seed is None else seed % (2**32)
    config.validate()
    return config


class EngineLoop:
    """Owns the pipeline and the handles of the requests in it."""

    def __init__(self, pipeline, conn: Connection):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        self._genai, self._ov, self._np = ov_genai, ov, np
        self.pipeline = pipeline
        self.conn = conn
        self.defaults = pipeline.get_config()
        self.handles: dict[int, object] = {}  # GenAI request ids are numbers
        self.added_at: dict[int, float] = {}  # until the request's first Output carries it
        self.running = True
        self._last_stats = 0.0

    def serve(self) -> None:
        while self.running:
            if not self._take_commands(block=not self.handles):
                return  # the server is gone
            if not self.handles:
                continue
            self.pipeline.step()
            self.conn.send(("out", self._collect(), self._stats()))

    def _take_commands(self, block: bool) -> bool:
        timeout = IDLE_STATS_INTERVAL if block else 0
        try:
            while self.conn.poll(timeout):
                self._handle(self.conn.recv())
                timeout = 0
            if block:
                now = time.monotonic()
                if now - self._last_stats >= IDLE_STATS_INTERVAL:
                    self.conn.send(("out", [], self._stats()))
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.running = False
            return False
        return self.running

    def _handle(self, message) -> None:
        kind = message[0]
        if kind == "add":
            _, request_id, prompt_ids, sampling = message
            try:
                config = generation_config(sampling, self.defaults)
                input_ids = self._ov.Tensor(self._np.array([prompt_ids], dtype=self._np.int64))
                self.handles[request_id] = self.pipeline.add_request(request_id, input_ids, config)
                self.added_at[request_id] = time.monotonic()
            except Exception as exc:  # a request the pipeline refuses fails alone
                self.conn.send(("out", [(request_id, [], None, None, str(exc), None)], self._stats()))
        elif kind == "abort":
            handle = self.handles.pop(message[1], None)
            self.added_at.pop(message[1], None)
            if handle is not None:
                handle.cancel()
                if not self.handles:  # idle now: report the gauges at once, not an idle interval later
                    self.conn.send(("out", [], self._stats()))
        elif kind == "stop":
            self.running = False

    def _collect(self) -> list[tuple]:
        status = self._genai.GenerationStatus
        outputs = []
        for request_id, handle in list(self.handles.items()):
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
            if ids or finish or error:
                added_at = self.added_at.pop(request_id, None)
                outputs.append((request_id, ids, logprobs if logprobs else None, finish, error, added_at))
            if finish or error:
                del self.handles[request_id]
        return outputs

    def _stats(self) -> dict:
        self._last_stats = time.monotonic()
        metrics = self.pipeline.get_metrics()
        # The pipeline's counts describe its last step and go stale once it idles (finished and
        # aborted requests still show), so bound them by the requests this loop still holds.
        running = min(metrics.scheduled_requests, len(self.handles))
        return {
            "running": running,
            "waiting": max(0, len(self.handles) - running),
            "kv_cache_usage": metrics.cache_usage / 100.0,
        }


def engine_main(config: EngineConfig, conn: Connection, log_level: int = logging.INFO) -> None:
    """Entry point of the engine process."""
    from ovllm_cli.logs import setup_logging

    setup_logging(log_level)
    # The server process decides when to stop: SIGTERM and Ctrl-C reach it, and it tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()
    try:
        pipeline = build_pipeline(config)
    except Exception as exc:
        log.exception("could not load the model")
        conn.send(("failed", f"could not load {config.model_path}: {exc}"))
        return
    log.info("pipeline ready in %.1fs (engine pid %d)", time.monotonic() - started, os.getpid())
    conn.send(("ready", {"pid": os.getpid()}))
    EngineLoop(pipeline, conn).serve()
    log.info("engine process exits")
