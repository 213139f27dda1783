"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every status either
server answers with."""

from __future__ import annotations

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
    429: "rate_limit_error", 503: "service_unavailable",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """`code` is a string or null, as in OpenAI's errors (the status is the HTTP status, not a code)."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or None}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param, code), status=status, headers=headers)
