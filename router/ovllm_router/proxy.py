"""The router's HTTP server (aiohttp): forwards each request to the backend the balancer picks and
relays the answer chunk by chunk, so server-sent events reach the client as the engine writes them.

A request is retried on another backend only while nothing has reached the client: when the
connection fails, the backend answers 502/503/504, or its connection breaks before the first body
byte. The failed backend is ejected for a while (passive health). After the first byte, a broken
event stream ends with an error event, so the client sees an error rather than a silent truncation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from ovllm_edge.encoding import BodyEncodingError, decode_body
from ovllm_edge.errors import error_body, error_response
from ovllm_edge.logs import RateLimitedLog, detail
from ovllm_edge.site import EdgeSite, answer_unhandled, request_refusal
from ovllm_router.balancer import Balancer, prefix_key
from ovllm_router.metrics import CONTENT_TYPE, NO_BACKEND, RouterMetrics

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


@dataclass
class Settings:
    prefix_chars: int = 100
    retries: int = 2
    eject_seconds: float = 10.0
    connect_timeout: float = 5.0
    request_timeout: float = 600.0  # seconds without a byte from the backend
    max_request_bytes: int = 4 * 1024 * 1024
    body_timeout: float = 60.0  # seconds for a request body to arrive
    retry_after: int = 1  # seconds, in the Retry-After of a 503 when no replica is ready


class BackendFailed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class BrokeMidResponse(ConnectionResetError):
    """Raised out of the handler, so that aiohttp drops the client's connection mid-body."""


class ClientError(Exception):
    """A request refused before any replica saw it (answered by the middleware)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def forwarded(headers, drop: frozenset) -> CIMultiDict:
    """The headers to pass on: all but hop-by-hop ones and those the Connection header names."""
    named = {name.strip().lower() for value in headers.getall("Connection", ()) for name in value.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop and k.lower() not in named)


def target(request: web.Request) -> str:
    """The path and query to send on, percent-encoding kept. For an absolute-form request target
    (`POST http://host/v1/completions HTTP/1.1`, as sent to proxies) that is its path and query only:
    the router never forwards to a host the client names."""
    return request.rel_url.raw_path_qs if request.rel_url.raw_path.startswith("/") else "/"


def decoded(body: bytes, encoding: str, limit: int) -> bytes | None:
    """The body with its gzip or deflate Content-Encoding undone, for hashing its prompt; None when
    it cannot be (the replica then refuses it)."""
    try:
        return decode_body(body, encoding, limit)
    except BodyEncodingError:
        return None


class Router:
    def __init__(self, balancer: Balancer, settings: Settings, metrics: RouterMetrics | None = None):
        self.balancer, self.settings = balancer, settings
        self.metrics = metrics or RouterMetrics()
        self.session: aiohttp.ClientSession | None = None
        self.client_log = RateLimitedLog(log)

    def set_backends(self, backends) -> None:
        added, removed = self.balancer.set_backends(backends)
        for backend in sorted(added):
            self.metrics.add_backend(backend)
        for backend in sorted(removed):
            self.metrics.forget_backend(backend)
        if added or removed:
            log.info("backends: %s (added %s, removed %s)", self.balancer.backends, sorted(added), sorted(removed))
        self.metrics.backends.set(len(self.balancer.available(time.monotonic())))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes, middlewares=[self._errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.render_metrics)
        app.router.add_route("*", "/{path:.*}", self.proxy)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    @staticmethod
    def site(runner: web.AppRunner, host: str, port: int, header_timeout: float = 30.0) -> EdgeSite:
        """The listening socket. No decompression: a compressed body goes on as it came, with its
        Content-Encoding, and the replica decodes it."""
        return EdgeSite(runner, host, port, header_timeout=header_timeout, auto_decompress=False)

    async def _open_session(self, app) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.request_timeout)
        # No connection limit (the engines queue); bodies relayed as they came (no decompression);
        # no headers of aiohttp's own, only the client's.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=timeout, auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))

    async def _close_session(self, app) -> None:
        if self.session is not None:
            await self.session.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Whatever goes wrong before a replica's answer begins, the client gets an OpenAI-style error."""
        try:
            return await handler(request)
        except ClientError as exc:
            status, message = exc.status, exc.message
        except (web.HTTPException, RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
            refused = request_refusal(exc, self.settings.max_request_bytes)
            if refused is None:  # an HTTPException below 400 (a redirect): aiohttp sends it
                raise
            status, message = refused
        except ConnectionError:  # BrokeMidResponse too: the answer had begun, or the client went away
            raise
        except Exception:
            return answer_unhandled(request, self.client_log)
        self.client_log.log(logging.INFO, f"refused:{status}", "%d %s %s: %s", status, request.method,
                            detail(request.path), message)
        response = error_response(status, message)
        if status in (400, 408):
            # 408: the rest of the body may never come; 400 here: where the body ends is unknown
            response.force_close()
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "backends": len(self.balancer.available(time.monotonic()))})

    async def render_metrics(self, request: web.Request) -> web.Response:
        self.metrics.backends.set(len(self.balancer.available(time.monotonic())))  # ejections expire with time
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            # the body as it came, still compressed if it was: the replica decodes it (and refuses
            # one that does not match its Content-Encoding)
            body = await asyncio.wait_for(request.read(), self.settings.body_timeout)
        except TimeoutError:
            raise ClientError(408, f"the request body did not arrive within {self.settings.body_timeout:g}s") \
                from None
        key = None
        if body and self.balancer.strategy == "prefix-hash":
            plain = decoded(body, request.headers.get("Content-Encoding", ""), self.settings.max_request_bytes)
            key = prefix_key(plain, self.settings.prefix_chars) if plain is not None else None
        tried: list[str] = []
        failure: BackendFailed | None = None
        backend, code = NO_BACKEND, "error"  # the metric's labels; "error": no (complete) answer from a backend
        try:
            for attempt in range(self.settings.retries + 1):
                choice = self.balancer.choose(key, exclude=tried, now=time.monotonic())
                if choice is None:
                    break
                if attempt == 0 and choice.outcome:
                    self.metrics.prefix_routes.labels(outcome=choice.outcome).inc()
                if failure is not None:
                    self.metrics.retry(tried[-1], failure.reason)
                backend = choice.backend
                tried.append(backend)
                self._track(backend, +1)
                try:
                    try:
                        upstream, first = await self._send(request, backend, body)
                    except BackendFailed as exc:
                        failure = exc
                        self._eject(backend, exc)
                        continue
                    # a client that leaves early still counts under the backend's status: not an error of ours
                    code = str(upstream.status)
                    try:
                        response, complete = await self._relay(request, upstream, first, backend, arrived)
                    except BrokeMidResponse:
                        code = "error"
                        raise
                    if not complete:
                        code = "error"
                    return response
                finally:
                    self._track(backend, -1)
            # The client is told what happened, never where: backend addresses stay in the log.
            code = "503"
            message = "no engine replica is ready to take the request; try again shortly" if not tried else \
                f"no engine replica could take the request ({len(tried)} tried); try again shortly"
            return error_response(503, message, code="no_replica_ready",
                                  headers={"Retry-After": str(self.settings.retry_after)})
        finally:
            self.metrics.request(backend, code)
            self.metrics.duration.observe(time.monotonic() - arrived)

    async def _send(self, request: web.Request, backend: str, body: bytes):
        """Send the request to one backend and wait for the first chunk of its body: (response, chunk)."""
        upstream = None
        try:
            upstream = await self.session.request(
                request.method, URL(backend + target(request), encoded=True), data=body or None,
                headers=forwarded(request.headers, REQUEST_DROP), allow_redirects=False)
            if upstream.status in RETRY_STATUSES:
                said = (await upstream.content.read(500)).decode("utf-8", "replace")
                raise BackendFailed(f"http_{upstream.status}", f"{backend} answered {upstream.status}: {said}")
            first = await upstream.content.readany()
            return upstream, first
        except BaseException as exc:
            if upstream is not None:
                upstream.close()
            if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
                reason = "connect" if upstream is None else "broken"
                raise BackendFailed(reason, f"{backend}: {type(exc).__name__}: {exc}") from None
            raise

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, first: bytes, backend: str,
                     arrived: float) -> tuple[web.StreamResponse, bool]:
        """Relay the backend's answer; returns the client's response and whether it was complete."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=forwarded(upstream.headers, RESPONSE_DROP))
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        try:
            await response.prepare(request)
            await response.write(first)
            self.metrics.ttft.observe(time.monotonic() - arrived)
            while True:
                try:
                    chunk = await upstream.content.readany()
                except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    # the backend broke after the client got the first byte: too late to go elsewhere
                    return await self._broken(response, backend, exc), False
                if not chunk:
                    break
                await response.write(chunk)  # a client gone raises here: not the backend's fault
            await response.write_eof()
            return response, True
        finally:
            upstream.close()  # a client that went away also ends the backend's request (the engine aborts)

    async def _broken(self, response: web.StreamResponse, backend: str, exc: Exception) -> web.StreamResponse:
        self._eject(backend, BackendFailed("broken", f"{backend} broke mid-response: {type(exc).__name__}: {exc}"))
        if response.content_type != "text/event-stream":
            # no way to say so inside a plain body: end the connection without a proper end
            raise BrokeMidResponse(f"{backend} broke mid-response")
        message = "the engine replica failed while streaming; the answer is incomplete"
        event = error_body(502, message, code="replica_failed")
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response

    def _eject(self, backend: str, failure: BackendFailed) -> None:
        log.warning("%s; skipping it for %gs", failure, self.settings.eject_seconds)
        self.balancer.eject(backend, time.monotonic() + self.settings.eject_seconds)
        self.metrics.backends.set(len(self.balancer.available(time.monotonic())))

    def _track(self, backend: str, step: int) -> None:
        if step > 0:
            self.balancer.acquire(backend)
        else:
            self.balancer.release(backend)
        self.metrics.set_in_flight(backend, self.balancer.in_flight.get(backend, 0))
