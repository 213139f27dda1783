"""The OpenAI-compatible HTTP API on aiohttp: /v1/models, /v1/models/{id}, /v1/completions,
/v1/chat/completions, vLLM's /tokenize and /detokenize, /health, /metrics, /version.

Handlers validate the request (pydantic models in protocol.py), tokenize it here in the server
process, hand token ids to the engine process, and turn the tokens that come back into OpenAI
responses or server-sent events. Every failure is an OpenAI-style `{"error": {...}}` body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import time
import uuid

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from ovllm_edge.encoding import BodyEncodingError, decode_body
from ovllm_edge.errors import error_body, error_response
from ovllm_edge.logs import RateLimitedLog, detail
from ovllm_edge.site import answer_unhandled, request_refusal
from ovllm_engine import __version__
from ovllm_engine.config import EngineConfig
from ovllm_engine.server import generation, structured
from ovllm_engine.server.chat_output import ChoiceReader
from ovllm_engine.server.detokenizer import find_stop
from ovllm_engine.server.engine_client import EngineClient, EngineDead, ShuttingDown
from ovllm_engine.server.grammar_check import GrammarChecker
from ovllm_engine.server.limits import Limits
from ovllm_engine.server.metrics import CONTENT_TYPE, EngineMetrics, SequenceTiming
from ovllm_engine.server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunkChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    SamplingFields,
    StreamChunk,
    TokenizeRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from ovllm_engine.server.reasoning import REASONING_PARSERS, ReasoningParser
from ovllm_engine.server.request_log import RequestLog, RequestLogOptions
from ovllm_engine.server.tokenizer import INLINE_CHARS, TemplateError, Tokenizer
from ovllm_engine.server.tool_parsers import TOOL_PARSERS, ToolParser, detect

log = logging.getLogger(__name__)

# A JSON string escape of a UTF-16 surrogate: only then can a parsed string hold a lone one.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# OpenVINO's messages begin "Exception from src/...cpp:123:" or "Check '...' failed at /path/x.cpp:45:":
# build paths, not something a client can act on.
SOURCE_LOCATION = re.compile(r"(Exception from |Check '.*?' failed at )?\S*\.(cpp|hpp|h|py):\d+:?\s*")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_param(errors: list[dict]) -> str | None:
    """The request field a pydantic error names, as a dotted path.

    A union field fails once per member, each location ending in the member's tag ("prompt", "str"),
    so the path is what the first field's errors have in common.
    """
    first_field = errors[0]["loc"][:1]
    paths = [error["loc"] for error in errors if error["loc"][:1] == first_field]
    return ".".join(str(part) for part in os.path.commonprefix(paths)) or None


def public_message(exc: BaseException) -> str:
    """An engine or tokenizer error as a client may see it: without source locations."""
    return SOURCE_LOCATION.sub("", str(exc)).strip() or type(exc).__name__


def _refuse_constant(name: str):
    raise ValueError(f"{name}, which is not a JSON number (non-finite numbers are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]}, which is out of range for a 64-bit float")
    return value


def parse_json(raw: bytes):
    """The request body as Python data, or an APIError: not JSON, not UTF-8, nested past the
    parser's recursion limit, an integer past Python's digit limit, a non-finite number, or a string
    holding a lone UTF-16 surrogate (JSON allows the escape; no tokenizer can encode it)."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # the hooks above, or Python's limit on an integer's digits
        if "integer string conversion" in str(exc):
            raise APIError(400, "the request body holds an integer with more digits than any field accepts") from None
        raise APIError(400, f"the request body holds {exc}") from None
    if SURROGATE_ESCAPE.search(raw):
        where = lone_surrogate(data)
        if where is not None:
            raise APIError(400, f"{where or 'the body'}: a string holds a lone UTF-16 surrogate, which is not "
                                "Unicode text", where or None)
    return data


def lone_surrogate(data) -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate; None if there is none."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((path, key))
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """vLLM's flags for tools and reasoning models."""

    tool_call_parser: str | None = None  # --tool-call-parser; None: the one the chat template implies
    reasoning_parser: str | None = None  # --reasoning-parser


class OpenAIServer:
    def __init__(self, config: EngineConfig, engine: EngineClient, metrics: EngineMetrics, tokenizer: Tokenizer,
                 api_key: str | None = None, limits: Limits | None = None, chat: ChatOptions | None = None,
                 grammar: GrammarChecker | None = None, request_log: RequestLogOptions | None = None):
        chat = chat or ChatOptions()
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = tokenizer
        # token ids past the embedding table must never reach the model (args.py warns when unknown)
        self.vocab_size = config.vocab_size or 2**31
        self.api_key = api_key
        self.limits = limits or Limits()
        self.draining = False  # after SIGTERM: finish what is in flight, take nothing new
        self.active_requests = 0  # generation requests open, from their first byte
        self.admitted_sequences = 0  # their sequences, from admission (before tokenizing) to the end
        self._idle = asyncio.Event()
        self._idle.set()
        self.created = int(time.time())
        self.client_log = RateLimitedLog(log)
        self.request_log = RequestLog(request_log or RequestLogOptions(), tokenizer.decode)
        self.grammar = grammar or GrammarChecker(config.model_path, config.vocab_size)
        parser_name = chat.tool_call_parser or detect(tokenizer.chat_template)
        self.tool_parser: ToolParser | None = TOOL_PARSERS[parser_name]() if parser_name else None
        self.reasoning_parser: type[ReasoningParser] | None = (
            REASONING_PARSERS[chat.reasoning_parser] if chat.reasoning_parser else None)

    # -- the application -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_request_bytes, middlewares=[self._errors, self._auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model_id:.+}", self.model)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except APIError as exc:
            self._log_refusal(request, exc.status, exc.message)
            response = error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
        except (web.HTTPException, RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
            refused = request_refusal(exc, self.limits.max_request_bytes)
            if refused is None:  # an HTTPException below 400 (a redirect): aiohttp sends it
                raise
            status, message = refused
            self._log_refusal(request, status, message)
            response = error_response(status, message)
            if not isinstance(exc, web.HTTPException):
                response.force_close()  # where an unreadable body ends is unknown: the connection is done
        except EngineDead:
            response = error_response(503, "the engine process died; this server exits to be restarted",
                                      code="engine_dead")
        except ShuttingDown:
            response = error_response(503, "the server is shutting down", code="shutting_down")
        except ConnectionError:
            raise  # the client went away (mid-body or mid-answer): nothing to answer, nothing to log
        except Exception:
            response = answer_unhandled(request, self.client_log)
        if self.draining and not response.prepared:
            response.force_close()  # a client with a kept-alive connection reconnects, to another replica
        elif response.status == 408:
            response.force_close()  # the rest of the body may never come: do not wait for it
        return response

    def _log_refusal(self, request: web.Request, status: int, message: str) -> None:
        """Client errors go to the log at INFO, one line, rate-limited: anyone can cause them."""
        self.client_log.log(logging.INFO, f"refused:{status}", "%d %s %s: %s", status, request.method,
                            detail(request.path), detail(message))

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        if self.api_key and request.path.startswith("/v1/"):
            # aiohttp keeps header bytes that are not UTF-8 as surrogate escapes: encode them back
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
        return await handler(request)

    # -- plain endpoints -------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if not self.engine.alive:
            return web.json_response({"status": "engine dead"}, status=503)
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    def _model_card(self) -> dict:
        return {"id": self.config.served_model_name, "object": "model", "created": self.created, "owned_by": "ovllm",
                "root": self.config.served_model_name, "max_model_len": self.config.max_model_len}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        if model_id != self.config.served_model_name:
            raise APIError(404, f"the model {detail(model_id)} does not exist; this server serves "
                                f"'{self.config.served_model_name}'", "model", "model_not_found")
        return web.json_response(self._model_card())

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: a prompt's or a chat's token ids, as the engine would get them."""
        body = await self._parse(request, TokenizeRequest)
        if body.messages is not None:
            if not self.tokenizer.has_chat_template:
                raise APIError(400, "this model has no chat template: send a prompt", param="messages")
            ids = await self._chat_prompt(body.as_chat(), max_tokens=2**31)
        else:
            offload = len(body.prompt) > INLINE_CHARS
            ids = await self.tokenizer.encode_async(body.prompt, 2**31, offload, body.add_special_tokens)
        tokens = ids if isinstance(ids, list) else []
        return web.json_response({"count": len(tokens), "max_model_len": self.config.max_model_len, "tokens": tokens,
                                  "token_strs": self._token_strings(tokens) if body.return_token_strs else None})

    async def detokenize(self, request: web.Request) -> web.Response:
        """vLLM's /detokenize: token ids back to text."""
        body = await self._parse(request, DetokenizeRequest)
        self._check_vocabulary(body.tokens, "tokens")
        return web.json_response({"prompt": self.tokenizer.decode(body.tokens)})

    # -- generation ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        with self._open_request():
            body = await self._parse(request, CompletionRequest)
            texts_or_ids = body.prompts()
            with self._admitted(len(texts_or_ids) * body.n, "prompt" if len(texts_or_ids) > 1 else "n"):
                plan = await self._plan(body)
                # many short prompts add up: the request's whole text decides where it is tokenized
                offload = sum(len(p) for p in texts_or_ids if isinstance(p, str)) > INLINE_CHARS
                prompts = [await self._prompt_ids(p, offload) for p in texts_or_ids]
                return await self._serve(request, body, prompts, plan)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        with self._open_request():
            body = await self._parse(request, ChatCompletionRequest)
            if not self.tokenizer.has_chat_template:
                raise APIError(400, "this model has no chat template: use /v1/completions", param="messages")
            with self._admitted(body.n, "n"):
                plan = await self._plan(body)
                prompt = await self._chat_prompt(body)
                return await self._serve(request, body, [prompt], plan)

    async def _chat_prompt(self, body: ChatCompletionRequest, max_tokens: int | None = None) -> list[int] | int:
        """The chat's token ids; only their count past max_tokens (default: the model's length)."""
        try:
            return await self.tokenizer.chat_ids_async(body.template_messages(), body.add_generation_prompt,
                                                       max_tokens or self.config.max_model_len,
                                                       tools=body.template_tools(),
                                                       extra_context=body.chat_template_kwargs)
        except TemplateError as exc:
            raise APIError(400, "the chat template could not render these messages: "
                                f"{public_message(exc)}", "messages") from None

    async def _plan(self, body: SamplingFields) -> structured.Plan:
        """The request's constraint and tool mode; a constraint is compiled once by GenAI before it can
        reach the engine (grammar_check.py says why)."""
        try:
            plan = structured.plan(body, self.tool_parser)
        except structured.Refused as exc:
            raise APIError(400, exc.message, exc.field) from None
        if plan.constraint is not None:
            if body.top_logprobs_asked():
                raise APIError(400, "top logprobs under constrained decoding: the engine reports the sampled "
                                    "token's logprob before the constraint's mask, so the sampled token need not "
                                    "be the most likely one", "top_logprobs" if isinstance(body, ChatCompletionRequest)
                               else "logprobs")
            if body.ignore_eos or body.min_tokens:
                raise APIError(400, "ignore_eos and min_tokens cannot be combined with constrained decoding: they "
                                    "would make the model write past the end of the constrained answer",
                               "ignore_eos" if body.ignore_eos else "min_tokens")
            error = await self.grammar.check(plan.constraint)
            if error is not None:
                raise APIError(400, f"{plan.field}: cannot be compiled for constrained decoding: {detail(error)}",
                               plan.field)
        return plan

    async def _parse(self, request: web.Request, model: type[BaseModel]):
        if self.draining:
            raise ShuttingDown()
        if not self.engine.alive:
            raise EngineDead()
        data = await self._read_json(request)
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            first, param = exc.errors()[0], error_param(exc.errors())
            if first["type"] == "extra_forbidden":
                raise APIError(400, f"unsupported field '{param}': this engine cannot honour it", param) from None
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param) from None
        for param, message in getattr(body, "unsupported", list)():
            raise APIError(400, message, param)
        if body.model is not None and body.model != self.config.served_model_name:
            raise APIError(404, f"the model {detail(body.model)} does not exist; this server serves "
                                f"'{self.config.served_model_name}'", "model", "model_not_found")
        return body

    async def _read_json(self, request: web.Request) -> dict:
        try:
            raw = await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {self.limits.body_timeout:g}s") from None
        try:
            raw = decode_body(raw, request.headers.get("Content-Encoding", ""), self.limits.max_request_bytes)
        except BodyEncodingError as exc:
            raise APIError(exc.status, exc.message) from None
        data = parse_json(raw)
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    @contextlib.contextmanager
    def _open_request(self):
        """A generation request from its first byte to its last: what a drain waits for."""
        self.active_requests += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active_requests -= 1
            if not self.active_requests:
                self._idle.set()

    @contextlib.contextmanager
    def _admitted(self, sequences: int, param: str):
        """Bounded work: a cap on one request's sequences, and a bounded queue beyond the running
        batch. A request over the queue bound gets 429 at once, so a flood waits at the edge (where
        it costs nothing) rather than in the engine. The sequences count from admission, before
        tokenizing, so requests still being tokenized take their place too. An idle server takes
        any request under the cap."""
        limits = self.limits
        if sequences > limits.max_seqs_per_request:
            raise APIError(400, f"this request asks for {sequences} sequences (prompts x n); this server takes at "
                                f"most {limits.max_seqs_per_request} per request", param)
        taken = self.admitted_sequences
        if taken and taken + sequences > self.config.max_num_seqs + limits.max_queued_seqs:
            self.metrics.rejected("queue_full")
            raise APIError(429, f"the server is at capacity ({taken} sequences in flight); retry after "
                                f"{limits.retry_after}s", code="queue_full",
                           headers={"Retry-After": str(limits.retry_after)})
        self.admitted_sequences += sequences
        try:
            yield
        finally:
            self.admitted_sequences -= sequences

    async def _prompt_ids(self, prompt: str | list[int], offload: bool) -> list[int] | int:
        if isinstance(prompt, str):
            return await self.tokenizer.encode_async(prompt, self.config.max_model_len, offload)
        self._check_vocabulary(prompt, "prompt")
        return prompt

    def _check_vocabulary(self, token_ids: list[int], param: str) -> None:
        vocab = self.vocab_size
        for position, token_id in enumerate(token_ids):
            if not 0 <= token_id < vocab:
                raise APIError(400, f"{param} token id {token_id} at position {position} is outside this model's "
                                    f"vocabulary (ids 0 to {vocab - 1})", param)

    def _budget(self, body: SamplingFields, prompt: list[int] | int) -> int:
        """max_new_tokens for this prompt (its ids, or only their count when it is too long), or a
        400 when the request cannot fit the model's length."""
        limit = self.config.max_model_len
        length = prompt if isinstance(prompt, int) else len(prompt)
        if not length:
            raise APIError(400, "the prompt is empty", "prompt")
        if length >= limit:
            raise APIError(400, f"the prompt has {length} tokens; this model's maximum length is {limit} "
                                "tokens including the output", "messages" if isinstance(body, ChatCompletionRequest)
                           else "prompt", "context_length_exceeded")
        requested = body.max_new_tokens() if isinstance(body, ChatCompletionRequest) else body.max_tokens
        if requested is None:
            return limit - len(prompt)
        if len(prompt) + requested > limit:
            raise APIError(400, f"max_tokens {requested} plus the prompt's {len(prompt)} tokens exceed this model's "
                                f"maximum length of {limit} tokens", "max_tokens", "context_length_exceeded")
        return requested

    def _sequences(self, body: SamplingFields, prompts: list[list[int]], plan: structured.Plan, arrival: float,
                   timings: list[SequenceTiming], budgets: list[int]):
        """One generator per choice: each prompt n times, choice index = prompt index * n + j. Each
        one's SequenceTiming is appended to `timings`."""
        streams = []
        # with echo and logprobs the engine also reports the prompt's logprobs
        echo = isinstance(body, CompletionRequest) and body.echo and body.wants_logprobs()
        for prompt, budget in zip(prompts, budgets, strict=True):
            sampling = dataclasses.replace(body.sampling(budget), constraint=plan.constraint, echo=echo)
            for j in range(body.n):
                timings.append(SequenceTiming(arrival, len(prompt)))
                streams.append(generation.generate(self.engine, self.metrics, self.tokenizer.decode, prompt,
                                                   body.with_seed_offset(sampling, j), body.stop, timings[-1],
                                                   want_text=body.stream))
        return streams

    async def _serve(self, request, body: SamplingFields, prompts, plan: structured.Plan):
        arrival = time.monotonic()
        chat = isinstance(body, ChatCompletionRequest)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        timings: list[SequenceTiming] = []
        budgets = [self._budget(body, p) for p in prompts]
        streams = self._sequences(body, prompts, plan, arrival, timings, budgets)
        if chat:
            readers = [ChoiceReader(plan.tools, self._reasoning(body)) for _ in streams]
        else:
            readers = [self._echo_text(body, prompts[i // body.n]) for i in range(len(streams))]
        status = 499  # unless it ends otherwise: the client closed the connection (nginx's code)
        try:
            if body.stream:
                response = await self._stream(request, body, prompts, streams, response_id, readers)
            else:
                response = await self._complete(body, prompts, streams, response_id, readers)
            status = response.status
            return response
        except APIError as exc:
            status = exc.status
            raise
        except (EngineDead, ShuttingDown):
            status = 503
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.request(body.n, max(budgets), timings)
            self.request_log.ended(response_id, request.method, request.path, status, arrival, prompts, timings)

    def _reasoning(self, body: ChatCompletionRequest) -> ReasoningParser | None:
        if self.reasoning_parser is None:
            return None
        thinking = (body.chat_template_kwargs or {}).get("enable_thinking", True)
        return self.reasoning_parser(enable_thinking=thinking is not False)

    def _echo_text(self, body: CompletionRequest, prompt_ids: list[int]) -> str:
        """What a completion choice begins with: its prompt when echo is asked for."""
        if not body.echo:
            return ""
        original = body.prompts()[0] if len(body.prompts()) == 1 else None
        return original if isinstance(original, str) else self.tokenizer.decode(prompt_ids)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no generation request is in flight; False if time ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _complete(self, body, prompts, streams, response_id, readers) -> web.Response:
        results: list[generation.SequenceResult | None] = [None] * len(streams)
        try:
            async with contextlib.aclosing(generation.merge(streams)) as chunks:
                async for index, chunk in chunks:
                    result = results[index] = results[index] or generation.SequenceResult()
                    result.token_ids.extend(chunk.token_ids)
                    result.logprobs.extend(chunk.logprobs or [])
                    result.finish_reason = chunk.finish_reason or result.finish_reason
                    result.prompt_logprobs = chunk.prompt_logprobs or result.prompt_logprobs
        except generation.EngineRejected as exc:
            raise APIError(400, f"the engine refused this request: {public_message(exc)}") from None
        chat = isinstance(body, ChatCompletionRequest)
        choices = []
        for index, result in enumerate(results):
            text = self.tokenizer.decode(result.token_ids)
            cut = find_stop(text, body.stop)
            if cut is not None:
                text = text[:cut]
            token_ids = result.token_ids if body.return_token_ids else None
            if chat:
                message, reason = readers[index].message(text, result.finish_reason)
                choices.append(ChatChoice(index=index, message=message, finish_reason=reason, token_ids=token_ids,
                                          logprobs=self._chat_logprobs(result.token_ids, result.logprobs, body)))
            else:
                prompt = prompts[index // body.n]
                logprobs = self._completion_logprobs(body, prompt, result, readers[index])
                choices.append(CompletionChoice(index=index, text=readers[index] + text, logprobs=logprobs,
                                                finish_reason=result.finish_reason, token_ids=token_ids))
        completion_tokens = sum(len(r.token_ids) for r in results)
        response_type = ChatCompletionResponse if chat else CompletionResponse
        response = response_type(
            id=response_id, created=int(time.time()), model=self.config.served_model_name, choices=choices,
            usage=self._usage(prompts, completion_tokens),
            prompt_token_ids=(prompts[0] if len(prompts) == 1 else prompts) if body.return_token_ids else None)
        return web.json_response(response.model_dump())

    @staticmethod
    def _usage(prompts, completion_tokens: int) -> Usage:
        prompt_tokens = sum(len(p) for p in prompts)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)

    async def _stream(self, request, body, prompts, streams, response_id, readers) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chat = isinstance(body, ChatCompletionRequest)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        created = int(time.time())

        async def send(choices: list, usage: Usage | None = None) -> None:
            chunk = StreamChunk(id=response_id, object="chat.completion.chunk" if chat else "text_completion",
                                created=created, model=self.config.served_model_name, choices=choices, usage=usage,
                                include_usage=include_usage)
            await response.write(b"data: " + json.dumps(chunk.model_dump(), ensure_ascii=False).encode() + b"\n\n")

        if chat:  # OpenAI's first chunk announces the role
            await send([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                        for i in range(len(streams))])
        completion_tokens = 0
        held: dict[int, tuple[list[int], list[float]]] = {}  # per choice: tokens not yet sent as text
        sent: dict[int, int] = {}  # per completion choice: characters of text sent (text_offset counts from 0)
        try:
            async with contextlib.aclosing(generation.merge(streams)) as chunks:
                async for index, chunk in chunks:
                    completion_tokens += len(chunk.token_ids)
                    held_ids, held_logprobs = held.setdefault(index, ([], []))
                    held_ids.extend(chunk.token_ids)
                    held_logprobs.extend(chunk.logprobs or [])
                    if chat:
                        choices = self._chat_stream_choices(index, chunk, readers[index], held_ids, held_logprobs,
                                                            body)
                    else:
                        choices = self._completion_stream_choices(index, chunk, body, prompts, readers, sent,
                                                                  held_ids, held_logprobs)
                    if choices:
                        del held[index]  # their logprobs went out with the text they completed
                    for choice in choices:
                        await send([choice])
            if include_usage:
                await send([], self._usage(prompts, completion_tokens))
            await response.write(b"data: [DONE]\n\n")
        except generation.EngineRejected as exc:
            await self._send_error(response, error_body(400, f"the engine refused this request: "
                                                             f"{public_message(exc)}"))
        except EngineDead:
            await self._send_error(response, error_body(503, "the engine process died", code="engine_dead"))
        except ShuttingDown:  # the shutdown grace ended with this stream still running
            await self._send_error(response, error_body(503, "the server shut down before this stream finished",
                                                        code="shutting_down"))
        await response.write_eof()
        return response

    @staticmethod
    async def _send_error(response: web.StreamResponse, body: dict) -> None:
        await response.write(b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n")

    def _chat_stream_choices(self, index, chunk, reader: ChoiceReader, ids, logprobs, body) -> list[ChatChunkChoice]:
        deltas = reader.deltas(chunk.text) if chunk.text else []
        reason = None
        if chunk.finish_reason:
            more, reason = reader.finish(chunk.finish_reason)
            deltas += more
        if not deltas and not reason:
            return []  # held: tokens that end mid-character, may begin a stop string, or a call not yet whole
        deltas = deltas or [ChatDelta()]
        choices = [ChatChunkChoice(index=index, delta=delta) for delta in deltas]
        choices[0].logprobs = self._chat_logprobs(ids, logprobs, body)
        choices[-1].finish_reason = reason
        return choices

    def _completion_stream_choices(self, index, chunk, body, prompts, echo_texts, sent: dict[int, int], ids,
                                   logprobs) -> list[CompletionChunkChoice]:
        text = chunk.text
        prompt = prompts[index // body.n]
        if index not in sent:
            sent[index] = 0
            text = echo_texts[index] + text
        if not text and not chunk.finish_reason:
            return []
        result = generation.SequenceResult(token_ids=ids, logprobs=logprobs, prompt_logprobs=chunk.prompt_logprobs)
        # the prompt's logprobs go out with the first chunk only; offsets count from the choice's first character
        lp = self._completion_logprobs(body, prompt, result, echo_texts[index] if chunk.prompt_logprobs else "",
                                       start=sent[index])
        sent[index] += len(text)
        return [CompletionChunkChoice(index=index, text=text, logprobs=lp, finish_reason=chunk.finish_reason)]

    def _token_strings(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in token_ids]

    def _chat_logprobs(self, token_ids: list[int], logprobs: list[float] | None, body) -> ChatLogprobs | None:
        """The sampled tokens' logprobs; top_logprobs (at most 1, under greedy decoding) is the
        sampled token itself, the only one the pipeline reports."""
        if not body.wants_logprobs() or not logprobs:
            return None
        entries = []
        for token, logprob in zip(self._token_strings(token_ids), logprobs, strict=True):
            raw = list(token.encode())
            top = [TopLogprob(token=token, logprob=logprob, bytes=raw)] if body.top_logprobs else []
            entries.append(TokenLogprob(token=token, logprob=logprob, bytes=raw, top_logprobs=top))
        return ChatLogprobs(content=entries)

    def _completion_logprobs(self, body: CompletionRequest, prompt: list[int], result, echo_text: str,
                             start: int = 0) -> CompletionLogprobs | None:
        """The legacy shape; with echo the prompt's tokens come first (the first has no logprob)."""
        if not body.wants_logprobs() or not (result.logprobs or result.prompt_logprobs):
            return None
        token_ids, logprobs = list(result.token_ids), list(result.logprobs)
        if echo_text and result.prompt_logprobs is not None:
            token_ids, logprobs = prompt + token_ids, list(result.prompt_logprobs) + logprobs
        tokens = self._token_strings(token_ids)
        offsets, position = [], start
        for token in tokens:
            offsets.append(position)
            position += len(token)
        top = None
        if body.logprobs:  # 1: the sampled token is the top-1 (greedy only, see protocol.py)
            top = [None if lp is None else {t: lp} for t, lp in zip(tokens, logprobs, strict=True)]
        return CompletionLogprobs(tokens=tokens, token_logprobs=logprobs, top_logprobs=top, text_offset=offsets)


def make_server(config: EngineConfig, engine: EngineClient, metrics: EngineMetrics, api_key: str | None,
                limits: Limits, tokenizer: Tokenizer | None = None, chat: ChatOptions | None = None,
                request_log: RequestLogOptions | None = None) -> OpenAIServer:
    return OpenAIServer(config, engine, metrics, tokenizer or Tokenizer(config.model_path), api_key, limits, chat,
                        request_log=request_log)
