"""The proxy's HTTP behaviour against small aiohttp backends of the test's own, in one process: what
is forwarded (method, path, query, body, headers) and what is not (hop-by-hop headers), retries on
502/503/504 before the first byte, no backend (503), a body too large (413), and a plain body that
breaks halfway (the client sees the break, not a short 200)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from ovllm_router.balancer import Balancer
from ovllm_router.proxy import Router, Settings


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def echo_backend(name: str, seen: list, status: int = 200) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(name)
        return web.json_response({"backend": name, "method": request.method, "path_qs": request.raw_path,
                                  "body": body.decode(), "headers": dict(request.headers)}, status=status,
                                 headers={"X-Backend": name, "Keep-Alive": "timeout=5"})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", echo)
    return app


def router_app(backends: list[str], **settings) -> tuple[Router, web.Application]:
    balancer = Balancer("round-robin")
    router = Router(balancer, Settings(**settings))
    router.set_backends(backends)
    return router, router.app()


def samples(router: Router) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(router.metrics.render().decode()) for s in f.samples}


def test_method_path_query_body_and_end_to_end_headers_are_forwarded():
    async def main():
        seen: list = []
        async with serving(echo_backend("a", seen)) as backend:
            router, app = router_app([backend])
            async with serving(app) as url, httpx.AsyncClient() as client:
                response = await client.post(
                    url + "/v1/completions?x=1&y=a%20b", content=b'{"prompt": "hi"}',
                    headers={"Authorization": "Bearer k", "Content-Type": "application/json", "X-Custom": "v",
                             "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "drop me", "TE": "trailers",
                             "Proxy-Authorization": "Basic abc"})
        assert response.status_code == 200
        assert response.headers["x-backend"] == "a" and "keep-alive" not in response.headers
        echoed = response.json()
        assert echoed["method"] == "POST" and echoed["path_qs"] == "/v1/completions?x=1&y=a%20b"
        assert echoed["body"] == '{"prompt": "hi"}'
        headers = {k.lower(): v for k, v in echoed["headers"].items()}
        assert headers["authorization"] == "Bearer k" and headers["x-custom"] == "v"
        assert headers["content-type"] == "application/json"
        assert headers["host"] == backend.removeprefix("http://")  # the backend's, not the router's
        for hop in ("x-secret-hop", "te", "proxy-authorization"):
            assert hop not in headers, hop
        assert headers["user-agent"].startswith("python-httpx/")  # the client's, not aiohttp's

    asyncio.run(main())


def test_503_from_a_backend_is_retried_on_another_and_the_failed_one_ejected():
    async def main():
        seen: list = []
        async with serving(echo_backend("down", seen, status=503)) as down, \
                serving(echo_backend("up", seen)) as up:
            router, app = router_app([down, up], eject_seconds=60)
            async with serving(app) as url, httpx.AsyncClient() as client:
                answers = [await client.post(url + "/v1/completions", json={"prompt": "p"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert {a.json()["backend"] for a in answers} == {"up"}
        assert seen.count("down") == 1  # tried once, then ejected
        values = samples(router)
        assert values[("ovllm_router_retries_total", frozenset({"backend": down, "reason": "http_503"}.items()))] == 1
        assert values[("ovllm_router_backends", frozenset())] == 1

    asyncio.run(main())


def test_no_backend_gives_503_and_a_large_body_413():
    async def main():
        router, app = router_app([], max_request_bytes=1024)
        async with serving(app) as url, httpx.AsyncClient() as client:
            none = await client.post(url + "/v1/completions", json={"prompt": "p"})
            large = await client.post(url + "/v1/completions", content=b"x" * 2048)
            health = await client.get(url + "/health")
        assert none.status_code == 503
        assert none.json() == {"error": {
            "message": "no engine replica is ready to take the request; try again shortly",
            "type": "service_unavailable", "param": None, "code": 503}}
        assert large.status_code == 413
        assert large.json()["error"]["type"] == "invalid_request_error" and "1024 bytes" in large.json()["error"][
            "message"]
        assert health.json() == {"status": "ok", "backends": 0}
        values = samples(router)
        assert values[("ovllm_router_requests_total", frozenset({"backend": "none", "code": "503"}.items()))] == 1

    asyncio.run(main())


def test_a_plain_body_broken_halfway_breaks_the_clients_connection():
    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b'{"partial": "' + b"x" * 100)
        await asyncio.sleep(0.05)
        request.transport.close()  # the backend dies after 113 of 1000 bytes
        return response

    async def main():
        app = web.Application()
        app.router.add_post("/v1/completions", half)
        async with serving(app) as backend:
            router, proxy = router_app([backend])
            async with serving(proxy) as url, httpx.AsyncClient() as client:
                try:
                    response = await client.post(url + "/v1/completions", json={"prompt": "p"})
                    outcome = f"a complete response of {len(response.content)} bytes"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
        assert outcome in ("RemoteProtocolError", "ReadError"), outcome
        values = samples(router)
        assert values[("ovllm_router_requests_total", frozenset({"backend": backend, "code": "error"}.items()))] == 1

    asyncio.run(main())


def test_event_stream_broken_halfway_ends_with_an_error_event():
    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"text": "one"}]}\n\n')
        await asyncio.sleep(0.05)
        request.transport.close()
        return response

    async def main():
        app = web.Application()
        app.router.add_post("/v1/completions", half)
        async with serving(app) as backend:
            _, proxy = router_app([backend])
            async with serving(proxy) as url, httpx.AsyncClient() as client:
                response = await client.post(url + "/v1/completions", json={"prompt": "p", "stream": True})
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0]) == {"choices": [{"text": "one"}]}
        error = json.loads(events[-1])["error"]
        assert error["code"] == 502 and "failed while streaming" in error["message"]

    asyncio.run(main())
