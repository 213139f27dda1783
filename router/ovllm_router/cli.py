"""`ovllm router`: run the request router in front of engine replicas.

Only argparse at import time: aiohttp, prometheus-client and the kubernetes client are imported when
the router runs, so `ovllm --help` works with any extra installed.
"""

from __future__ import annotations

import argparse
import json
import logging

STRATEGIES = ("prefix-hash", "least-load", "round-robin")  # balancer.STRATEGIES, without importing it here

log = logging.getLogger("ovllm_router")


def add_parser(subparsers, help_line: str) -> None:
    parser = subparsers.add_parser(
        "router",
        help=help_line,
        description="Proxy OpenAI API requests to `ovllm serve` replicas. prefix-hash sends requests whose prompts "
        "begin alike to the same replica (its prefix cache then serves them), within a bound on each replica's "
        "share of the requests in flight. Serves its own /health and /metrics.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--strategy", choices=STRATEGIES, default="prefix-hash",
                        help="prefix-hash: consistent hashing of the prompt's beginning with bounded loads; "
                        "least-load: fewest requests in flight; round-robin: in turn")
    backends = parser.add_mutually_exclusive_group(required=True)
    backends.add_argument("--backend", action="append", metavar="URL",
                          help="an engine replica, e.g. http://10.0.0.5:8000 (repeat for more)")
    backends.add_argument("--service", help="discover replicas from this Kubernetes Service's EndpointSlices")
    parser.add_argument("--namespace", help="the Service's namespace (default: the router pod's own)")
    parser.add_argument("--prefix-chars", type=int, default=100,
                        help="prefix-hash: how many characters of the prompt's beginning are hashed")
    parser.add_argument("--load-factor", type=float, default=1.25,
                        help="prefix-hash: no replica takes more than ceil(F * (in flight + 1) / replicas) requests")
    parser.add_argument("--retries", type=int, default=2,
                        help="other replicas to try when one fails before the client got any byte")
    parser.add_argument("--eject-seconds", type=float, default=10.0,
                        help="skip a replica that failed for this long (unless no other is left)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to connect to a replica")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a replica may send nothing (before its first byte or between chunks)")
    parser.add_argument("--header-timeout", type=float, default=30.0,
                        help="seconds a client has to send a request's line and headers (from connecting or "
                        "from its previous answer); slower connections are closed")
    parser.add_argument("--body-timeout", type=float, default=60.0,
                        help="seconds a client has to send a request's body; slower ones get a 408")
    parser.add_argument("--max-request-mb", type=float, default=4.0, help="largest request body accepted, in MiB")
    parser.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="after SIGTERM, seconds for requests in flight to finish")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per line, for log collectors")
    parser.set_defaults(func=_run)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info or record.exc_text:
            # exc_text first: the secrets filter has redacted it
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


def _check(args: argparse.Namespace) -> None:
    problems = []
    if args.prefix_chars < 1:
        problems.append(f"--prefix-chars {args.prefix_chars} must be at least 1")
    if args.load_factor < 1:
        problems.append(f"--load-factor {args.load_factor} must be at least 1")
    if args.retries < 0:
        problems.append(f"--retries {args.retries} must be 0 or more")
    for flag in ("header_timeout", "body_timeout", "connect_timeout", "request_timeout", "max_request_mb"):
        if getattr(args, flag) <= 0:
            problems.append(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be more than 0")
    if args.namespace and not args.service:
        problems.append("--namespace goes with --service")
    for url in args.backend or []:
        if not url.startswith(("http://", "https://")):
            problems.append(f"--backend {url!r} is not an http:// or https:// URL")
    if problems:
        raise SystemExit("ovllm router: " + "; ".join(problems))


def _run(args: argparse.Namespace) -> int:
    _check(args)
    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())
    import asyncio

    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from aiohttp import web

    from ovllm_router.balancer import Balancer
    from ovllm_router.discovery import EndpointSliceWatch, default_namespace
    from ovllm_router.proxy import Router, Settings

    settings = Settings(prefix_chars=args.prefix_chars, retries=args.retries, eject_seconds=args.eject_seconds,
                        connect_timeout=args.connect_timeout, request_timeout=args.request_timeout,
                        max_request_bytes=int(args.max_request_mb * 1024 * 1024), body_timeout=args.body_timeout)
    router = Router(Balancer(args.strategy, args.load_factor), settings)
    loop = asyncio.get_running_loop()
    watch = None
    if args.backend:
        router.set_backends([url.rstrip("/") for url in args.backend])
    else:
        namespace = args.namespace or default_namespace()
        watch = EndpointSliceWatch(args.service, namespace, router.set_backends, loop)
        try:
            watch.start()
        except Exception as exc:  # no in-cluster service account and no kubeconfig
            raise SystemExit(f"ovllm router: --service {args.service}: cannot reach Kubernetes: {exc}") from None
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # handler_cancellation: a client that goes away cancels its handler, which closes the backend's
    # request, and the engine aborts the generation.
    runner = web.AppRunner(router.app(), handler_cancellation=True, shutdown_timeout=args.shutdown_grace,
                           access_log=None)
    await runner.setup()
    await router.site(runner, args.host, args.port, args.header_timeout).start()
    log.info("router on http://%s:%d, strategy %s, backends %s", args.host, args.port, args.strategy,
             router.balancer.backends if args.backend else f"of service {args.service}")
    await stop.wait()
    log.info("shutting down: requests in flight get up to %gs", args.shutdown_grace)
    if watch is not None:
        watch.stop()
    # stops listening, then waits up to shutdown_timeout for the handlers in flight
    await runner.cleanup()
    return 0
