"""The listening socket of either server: aiohttp's, with connections that answer malformed HTTP in
OpenAI's error shape and time out clients that never finish their request head.

aiohttp's own handler answers a request it cannot parse with a text/plain 400 that quotes the
offending bytes (an over-long `Authorization` header comes back, key included) and logs each one at
ERROR with a traceback. Here the answer names the kind of problem only, and the log line is one
rate-limited WARNING.

Header timeout: aiohttp closes a connection that has not delivered a complete request head within
`keepalive_timeout` of connecting or of its previous response (its keep-alive timer runs from the
connection's start), so that is the setting used. The body has its own timeout, in the handlers.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ovllm_edge.errors import error_response
from ovllm_edge.logs import RateLimitedLog, detail

log = logging.getLogger("ovllm.http")


def client_problem(exc: BaseException | None) -> str | None:
    """What was wrong with a request aiohttp could not parse, without quoting any of it; None when
    the exception is not the client's doing."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "a request line or header field is longer than this server accepts"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "this is not an HTTP request"
    if isinstance(exc, RequestPayloadError | http_exceptions.PayloadEncodingError):
        return "the request body could not be read as its Content-Encoding or Transfer-Encoding says"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return "malformed HTTP request"
    return None


def request_refusal(exc: BaseException, max_request_bytes: int) -> tuple[int, str] | None:
    """Status and message for what aiohttp raises about the request itself inside a handler (its
    HTTP errors: 404, 405, 413; a body it cannot read); None for anything else."""
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        if exc.status == 413:
            return 413, f"request body larger than {max_request_bytes} bytes"
        return exc.status, exc.reason or HTTPStatus(exc.status).phrase
    problem = client_problem(exc)
    return (400, problem) if problem is not None else None


def answer_unhandled(request: web.Request, client_log: RateLimitedLog) -> web.Response:
    """Inside an `except`: log a failure of the server's own (rate-limited ERROR, with its traceback)
    and answer 500; or, when the answer had begun, raise ConnectionError (a 500 would corrupt it)."""
    client_log.log(logging.ERROR, "unhandled", "unhandled error in %s %s", request.method, detail(request.path),
                   exc_info=True)
    if request.writer.output_size > 0:
        raise ConnectionError("the answer had begun; closing the connection") from None
    return error_response(500, "internal server error")


class EdgeRequestHandler(RequestHandler):
    """One client connection (aiohttp's handler, with errors answered and logged as above)."""

    __slots__ = ("_client_log",)

    def __init__(self, manager: web.Server, *, client_log: RateLimitedLog, **kwargs):
        super().__init__(manager, **kwargs)
        self._client_log = client_log

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        self.log_exception("handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # part of a response went out already: only closing is left
            raise ConnectionError("the response had begun; closing the connection")
        problem = client_problem(exc)
        if problem is None and status < 500:
            problem = HTTPStatus(status).phrase
        response = error_response(status, problem or "internal server error")
        response.force_close()
        return response

    def log_exception(self, message: str, *args, exc_info=None, **kwargs) -> None:
        if isinstance(exc_info, ConnectionError):  # the client went away: an everyday event
            log.debug("a connection ended early: %s", type(exc_info).__name__)
            return
        problem = client_problem(exc_info if isinstance(exc_info, BaseException) else None)
        if problem is not None:  # the client's doing: one line, no traceback, no quoted bytes
            self._client_log.log(logging.WARNING, f"bad-http:{type(exc_info).__name__}", "%s (%s)",
                                 problem, type(exc_info).__name__)
        else:
            self._client_log.log(logging.ERROR, f"error:{message}", message, *args, exc_info=exc_info)


class EdgeSite(web.BaseSite):
    """A TCP site (as web.TCPSite) whose connections are EdgeRequestHandlers."""

    __slots__ = ("_host", "_port", "_handler_options")

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, header_timeout: float,
                 auto_decompress: bool = True, backlog: int = 1024):
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        # lingering_time: after answering a request whose body was not read (a 408, a 413), how long
        # to read and discard the rest before closing (aiohttp's default, 10 s, lets a slow client
        # hold the connection that much longer)
        self._handler_options = {"keepalive_timeout": header_timeout, "auto_decompress": auto_decompress,
                                 "lingering_time": 2.0, "access_log": None,
                                 "client_log": RateLimitedLog(log)}

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for 0)."""
        return self._server.sockets[0].getsockname()[1] if self._server else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._runner.server

        def connection() -> EdgeRequestHandler:
            return EdgeRequestHandler(manager, loop=loop, **self._handler_options)

        self._server = await loop.create_server(connection, self._host, self._port, backlog=self._backlog,
                                                reuse_address=True)
