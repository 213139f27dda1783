"""The OpenAI-compatible HTTP API on aiohttp: /v1/models, /v1/completions, /v1/chat/completions,
/health, /metrics, /version.

Handlers validate the request (pydantic models in protocol.py), tokenize it here in the server
process, hand token ids to the engine process, and turn the tokens that come back into OpenAI
responses or server-sent events. Every failure is an OpenAI-style `{"error": {...}}` body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import uuid
from http import HTTPStatus

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ovllm_engine import __version__
from ovllm_engine.config import EngineConfig
from ovllm_engine.server import generation
from ovllm_engine.server.detokenizer import find_stop
from ovllm_engine.server.engine_client import EngineClient, EngineDead
from ovllm_engine.server.metrics import CONTENT_TYPE, EngineMetrics
from ovllm_engine.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {
        400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
        405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code if code else status}}


def error_param(errors: list[dict]) -> str | None:
    """The request field a pydantic error names, as a dotted path.

    A union field fails once per member, each location ending in the member's tag ("prompt", "str"),
    so the path is what the first field's errors have in common.
    """
    first_field = errors[0]["loc"][:1]
    paths = [error["loc"] for error in errors if error["loc"][:1] == first_field]
    return ".".join(str(part) for part in os.path.commonprefix(paths)) or None


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param, code), status=status)


class Tokenizer:
    """The model's OpenVINO tokenizer, used in the server process (the engine sees only token ids)."""

    def __init__(self, model_dir: str):
        import openvino_genai as ov_genai

        # One thread: tokenizer calls are small, and an idle-spinning thread pool in this process
        # would take CPU from the engine's inference threads (a decode also runs ~30% faster so).
        self._tokenizer = ov_genai.Tokenizer(model_dir, INFERENCE_NUM_THREADS=1)
        self.has_chat_template = bool(self._tokenizer.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).input_ids
        return [int(i) for i in ids.data[0]]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)


class OpenAIServer:
    def __init__(self, config: EngineConfig, engine: EngineClient, metrics: EngineMetrics, tokenizer: Tokenizer,
                 api_key: str | None = None):
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.draining = False  # after SIGTERM: finish what is in flight, take nothing new
        self.active_requests = 0
        self.created = int(time.time())

    # -- the application -------------------------------------------------------------------
    def app(self, max_request_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_request_bytes, middlewares=[self._errors, self._auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except APIError as exc:
            return error_response(exc.status, exc.message, exc.param, exc.code)
        except web.HTTPException as exc:  # aiohttp's own: 404 route, 405 method, 413 body too large
            if exc.status == 413:
                return error_response(413, f"request body larger than {request.app._client_max_size} bytes")
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason or HTTPStatus(exc.status).phrase)
        except EngineDead:
            return error_response(503, "the engine process died; this server exits to be restarted", code="engine_dead")
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal server error")

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        if self.api_key and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
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

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.config.served_model_name, "object": "model", "created": self.created, "owned_by": "ovllm",
            "root": self.config.model_dir, "max_model_len": self.config.max_model_len,
        }]})

    # -- generation ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, CompletionRequest)
        prompts = [self._prompt_ids(p) for p in body.prompts()]
        return await self._serve(request, body, prompts, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, ChatCompletionRequest)
        if not self.tokenizer.has_chat_template:
            raise APIError(400, "this model has no chat template: use /v1/completions", param="messages")
        try:
            text = self.tokenizer.chat_prompt(body.template_messages(), body.add_generation_prompt)
        except Exception as exc:
            raise APIError(400, f"the chat template could not render these messages: {exc}", "messages") from None
        prompt = self.tokenizer.encode(text, add_special_tokens=False)  # the template wrote them already
        return await self._serve(request, body, [prompt], chat=True)

    async def _parse(self, request: web.Request, model: type[BaseModel]):
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if not self.engine.alive:
            raise EngineDead()
        raw = await request.read()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            first, param = exc.errors()[0], error_param(exc.errors())
            if first["type"] == "extra_forbidden":
                raise APIError(400, f"unsupported field '{param}': this engine cannot honour it", param) from None
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param) from None
        for param, message in body.unsupported():
            raise APIError(400, message, param)
        if body.model is not None and body.model != self.config.served_model_name:
            raise APIError(404, f"the model '{body.model}' does not exist; this server serves "
                                f"'{self.config.served_model_name}'", "model", "model_not_found")
        return body

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        vocab_limit = 2**31
        if any(i < 0 or i >= vocab_limit for i in prompt):
            raise APIError(400, "prompt token ids must be non-negative integers", "prompt")
        return prompt

    def _budget(self, body: SamplingFields, prompt: list[int]) -> int:
        """max_new_tokens for this prompt, or a 400 when the request cannot fit the model's length."""
        limit = self.config.max_model_len
        if not prompt:
            raise APIError(400, "the prompt is empty", "prompt")
        if len(prompt) >= limit:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; this model's maximum length is {limit} "
                                "tokens including the output", "messages" if isinstance(body, ChatCompletionRequest)
                           else "prompt", "context_length_exceeded")
        requested = body.max_new_tokens() if isinstance(body, ChatCompletionRequest) else body.max_tokens
        if requested is None:
            return limit - len(prompt)
        if len(prompt) + requested > limit:
            raise APIError(400, f"max_tokens {requested} plus the prompt's {len(prompt)} tokens exceed this model's "
                                f"maximum length of {limit} tokens", "max_tokens", "context_length_exceeded")
        return requested

    def _sequences(self, body: SamplingFields, prompts: list[list[int]], arrival: float):
        """One generator per choice: each prompt n times, choice index = prompt index * n + j."""
        streams = []
        budgets = [self._budget(body, p) for p in prompts]
        for prompt, budget in zip(prompts, budgets, strict=True):
            for j in range(body.n):
                sampling = body.sampling(budget)
                if sampling["seed"] is not None:
                    sampling["seed"] += j  # n choices from one seed: reproducible, yet different
                streams.append(generation.generate(self.engine, self.metrics, self.tokenizer.decode, prompt,
                                                   sampling, body.stop, arrival, want_text=body.stream))
        return streams

    async def _serve(self, request, body: SamplingFields, prompts, chat: bool):
        arrival = time.monotonic()
        streams = self._sequences(body, prompts, arrival)
        prefix = "chatcmpl" if chat else "cmpl"
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        self.active_requests += 1
        try:
            if body.stream:
                return await self._stream(request, body, prompts, streams, response_id, chat)
            return await self._complete(body, prompts, streams, response_id, chat)
        finally:
            self.active_requests -= 1

    async def _complete(self, body, prompts, streams, response_id, chat) -> web.Response:
        results: list[generation.SequenceResult | None] = [None] * len(streams)
        try:
            async with contextlib.aclosing(generation.merge(streams)) as chunks:
                async for index, chunk in chunks:
                    result = results[index] = results[index] or generation.SequenceResult()
                    result.token_ids.extend(chunk.token_ids)
                    result.logprobs.extend(chunk.logprobs or [])
                    result.finish_reason = chunk.finish_reason or result.finish_reason
        except generation.EngineRejected as exc:
            raise APIError(400, f"the engine refused this request: {exc}") from None
        choices = []
        for index, result in enumerate(results):
            text = self.tokenizer.decode(result.token_ids)
            cut = find_stop(text, body.stop)
            if cut is not None:
                text = text[:cut]
            choices.append(self._choice(index, text, result, chat, body))
        completion_tokens = sum(len(r.token_ids) for r in results)
        extra = {"prompt_token_ids": prompts[0] if len(prompts) == 1 else prompts} if body.return_token_ids else {}
        return web.json_response({
            "id": response_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.served_model_name,
            "choices": choices,
            "usage": self._usage(prompts, body.n, completion_tokens),
            **extra,
        })

    def _choice(self, index: int, text: str, result, chat: bool, body) -> dict:
        logprobs = self._logprobs(result.token_ids, result.logprobs, chat, body)
        if chat:
            choice = {"index": index, "message": {"role": "assistant", "content": text},
                      "logprobs": logprobs, "finish_reason": result.finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": result.finish_reason}
        if body.return_token_ids:
            choice["token_ids"] = result.token_ids
        return choice

    @staticmethod
    def _usage(prompts, n: int, completion_tokens: int) -> dict:
        prompt_tokens = sum(len(p) for p in prompts)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def _stream(self, request, body, prompts, streams, response_id, chat) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        model = self.config.served_model_name

        async def send(payload: dict) -> None:
            await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

        def event(choices: list[dict]) -> dict:
            return {"id": response_id, "object": kind, "created": created, "model": model, "choices": choices}

        if chat:  # OpenAI's first chunk announces the role
            await send(event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None} for i in range(len(streams))]))
        completion_tokens = 0
        held: dict[int, tuple[list[int], list[float]]] = {}  # per choice: tokens not yet sent as text
        try:
            async with contextlib.aclosing(generation.merge(streams)) as chunks:
                async for index, chunk in chunks:
                    completion_tokens += len(chunk.token_ids)
                    held_ids, held_logprobs = held.setdefault(index, ([], []))
                    held_ids.extend(chunk.token_ids)
                    held_logprobs.extend(chunk.logprobs or [])
                    if not chunk.text and not chunk.finish_reason:
                        continue  # tokens that end mid-character or may begin a stop string: wait for more
                    del held[index]  # their logprobs go out with the text they completed
                    choice = {"index": index, "logprobs": self._logprobs(held_ids, held_logprobs, chat, body),
                              "finish_reason": chunk.finish_reason}
                    if chat:
                        choice["delta"] = {"content": chunk.text} if chunk.text else {}
                    else:
                        choice["text"] = chunk.text
                    await send(event([choice]))
            if body.stream_options and body.stream_options.include_usage:
                usage_event = event([])
                usage_event["usage"] = self._usage(prompts, body.n, completion_tokens)
                await send(usage_event)
            await response.write(b"data: [DONE]\n\n")
        except (EngineDead, generation.EngineRejected) as exc:
            status = 400 if isinstance(exc, generation.EngineRejected) else 503
            await send(error_body(status, str(exc) or "the engine process died"))
        await response.write_eof()
        return response

    def _logprobs(self, token_ids: list[int], logprobs: list[float] | None, chat: bool, body) -> dict | None:
        """The sampled tokens' logprobs in the chat or the completions shape (no alternatives: the
        pipeline reports only the sampled token's)."""
        if not body.wants_logprobs() or not logprobs:
            return None
        tokens = [self.tokenizer.decode([t]) for t in token_ids]
        if chat:
            return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                                for t, lp in zip(tokens, logprobs, strict=True)]}
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": None}


def make_server(config: EngineConfig, engine: EngineClient, metrics: EngineMetrics,
                api_key: str | None) -> OpenAIServer:
    return OpenAIServer(config, engine, metrics, Tokenizer(config.model_dir), api_key)
