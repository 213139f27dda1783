"""The proxy's HTTP behaviour against small aiohttp backends of the test's own, in one process: what
is forwarded (method, path, query, body, headers) and what is not (hop-by-hop headers), retries on
502/503/504 before the first byte, no backend (503), a body too large (413), and a plain body that
breaks halfway (the client sees the break, not a short 200). Hostile and careless clients: compressed
bodies go on as they came, absolute-form targets, malformed HTTP, slow heads and bodies, and no
answer that names a backend's address."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import zlib

import httpx
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from ovllm_router.balancer import Balancer
from ovllm_router.proxy import Router, Settings, decoded


@contextlib.asynccontextmanager
async def serving(app: web.Application, router: Router | None = None, header_timeout: float = 30.0):
    """Serve a backend's app (aiohttp's own site), or the router's app on the router's own site."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    if router is not None:
        await router.site(runner, "127.0.0.1", port, header_timeout).start()
    else:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def echo_backend(name: str, seen: list, status: int = 200) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        seen.append(name)
        try:
            body = await request.read()  # aiohttp undoes a Content-Encoding, as the engine does
        except RequestPayloadError:
            return web.json_response({"error": {"message": "not its encoding"}}, status=400)
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
            async with serving(app, router) as url, httpx.AsyncClient() as client:
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
            async with serving(app, router) as url, httpx.AsyncClient() as client:
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
        async with serving(app, router) as url, httpx.AsyncClient() as client:
            none = await client.post(url + "/v1/completions", json={"prompt": "p"})
            large = await client.post(url + "/v1/completions", content=b"x" * 2048)
            health = await client.get(url + "/health")
        assert none.status_code == 503 and none.headers["retry-after"] == "1"
        assert none.json() == {"error": {
            "message": "no engine replica is ready to take the request; try again shortly",
            "type": "service_unavailable", "param": None, "code": "no_replica_ready"}}
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
            async with serving(proxy, router) as url, httpx.AsyncClient() as client:
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
            router, proxy = router_app([backend])
            async with serving(proxy, router) as url, httpx.AsyncClient() as client:
                response = await client.post(url + "/v1/completions", json={"prompt": "p", "stream": True})
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0]) == {"choices": [{"text": "one"}]}
        error = json.loads(events[-1])["error"]
        assert error["code"] == "replica_failed" and "failed while streaming" in error["message"]
        assert "127.0.0.1" not in response.text  # the replica's address stays in the router's log

    asyncio.run(main())


def test_compressed_bodies_are_forwarded_as_they_came_and_still_hashed():
    """gzip and deflate bodies reach the replica with their Content-Encoding and bytes unchanged (the
    replica decodes them); the prefix-hash strategy still reads the prompt to place them."""
    plain = json.dumps({"prompt": "the same long shared prefix " * 8}).encode()
    bodies = {"gzip": gzip.compress(plain), "deflate": zlib.compress(plain)}

    async def main():
        seen: list = []
        async with serving(echo_backend("a", seen)) as backend:
            router = Router(Balancer("prefix-hash"), Settings())
            router.set_backends([backend])
            async with serving(router.app(), router) as url, httpx.AsyncClient() as client:
                answers = {encoding: await client.post(url + "/v1/completions", content=body, headers={
                    "Content-Encoding": encoding, "Content-Type": "application/json"})
                    for encoding, body in bodies.items()}
                corrupt = await client.post(url + "/v1/completions", content=b"not gzip at all",
                                            headers={"Content-Encoding": "gzip"})
        for encoding, answer in answers.items():
            assert answer.status_code == 200, (encoding, answer.text)
            echoed = answer.json()
            assert echoed["body"] == plain.decode(), encoding  # what the replica decoded: the original
            assert {k.lower(): v for k, v in echoed["headers"].items()}["content-encoding"] == encoding
            assert int({k.lower(): v for k, v in echoed["headers"].items()}["content-length"]) == len(
                bodies[encoding])  # the compressed bytes, as sent
        # a body that is not what its Content-Encoding says goes on too: the replica refuses it (as
        # the engine does, tests/engine/test_bad_input.py) and the router relays that
        assert corrupt.status_code == 400 and corrupt.json()["error"]["message"] == "not its encoding"
        assert seen == ["a"] * 3
        values = samples(router)
        assert values[("ovllm_router_prefix_routes_total", frozenset({"outcome": "home"}.items()))] == 2
        assert values[("ovllm_router_prefix_routes_total", frozenset({"outcome": "fallback"}.items()))] == 1

    asyncio.run(main())


def test_decoded_undoes_one_gzip_or_deflate_within_a_bound():
    plain = b'{"prompt": "' + b"x" * 5000 + b'"}'
    assert decoded(plain, "", 10_000) == plain and decoded(plain, "identity", 10_000) == plain
    assert decoded(gzip.compress(plain), "gzip", 10_000) == plain
    assert decoded(zlib.compress(plain), "deflate", 10_000) == plain
    assert decoded(gzip.compress(plain), "gzip", 1000) is None  # a bomb stops at the bound
    assert decoded(b"junk", "gzip", 10_000) is None
    assert decoded(gzip.compress(plain), "br", 10_000) is None and decoded(plain, "gzip, gzip", 10_000) is None


async def raw_exchange(url: str, data: bytes, pause: float = 0.0, rest: bytes = b"", read_timeout: float = 10.0
                       ) -> tuple[bytes, float]:
    """Send raw bytes (optionally more after a pause), read until the server closes: (reply, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(data)
    if pause:
        await asyncio.sleep(pause)
        writer.write(rest)
    reply = await asyncio.wait_for(reader.read(), read_timeout)
    writer.close()
    return reply, time.monotonic() - started


def test_absolute_form_targets_go_to_the_replica_as_their_path():
    async def main():
        seen: list = []
        async with serving(echo_backend("a", seen)) as backend:
            router, app = router_app([backend])
            async with serving(app, router) as url:
                body = b'{"prompt": "p"}'
                reply, _ = await raw_exchange(url, b"POST http://elsewhere.example:9/v1/completions?x=1 HTTP/1.1\r\n"
                                              b"Host: elsewhere.example\r\nConnection: close\r\n"
                                              b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply[:300]
        assert json.loads(payload)["path_qs"] == "/v1/completions?x=1"

    asyncio.run(main())


def test_malformed_http_slow_heads_and_slow_bodies_get_openai_errors_or_are_closed():
    async def main():
        seen: list = []
        async with serving(echo_backend("a", seen)) as backend:
            router, app = router_app([backend], body_timeout=1.0)
            async with serving(app, router, header_timeout=1.0) as url:
                garbage, _ = await raw_exchange(url, b"\x16\x03\x01 not http at all\r\n\r\n")
                secret = "Bearer sk-" + "s" * 20000
                long_auth, _ = await raw_exchange(url, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                                                  f"Authorization: {secret}\r\n\r\n".encode())
                silent, silent_for = await raw_exchange(url, b"POST /v1/completions HTTP/1.1\r\n")
                slow, slow_for = await raw_exchange(
                    url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Length: 100\r\n\r\n{\"prompt\"")
        for reply in (garbage, long_auth):
            head, _, payload = reply.partition(b"\r\n\r\n")
            assert head.split(b" ", 2)[1] == b"400", reply[:300]
            assert json.loads(payload)["error"]["type"] == "invalid_request_error"
        assert b"sk-sss" not in long_auth  # nothing of the header comes back
        assert silent == b"" and 0.9 < silent_for < 5  # an unfinished head: closed at the header timeout
        head, _, payload = slow.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), slow[:300]
        assert "did not arrive within 1s" in json.loads(payload)["error"]["message"] and 0.9 < slow_for < 5
        assert seen == []  # none of them reached a replica

    asyncio.run(main())

    asyncio.run(main())
