"""The `ovllm` command. Subcommands register themselves here and import their heavy
dependencies only when they run, so `ovllm --help` works with any extra installed."""

from __future__ import annotations

import argparse
import logging
import sys

from ovllm_engine import __version__


def build_parser() -> argparse.ArgumentParser:
    from ovllm_engine import testmodels
    from ovllm_engine.bench import cli as bench_cli
    from ovllm_engine.onboard import cli as convert_cli
    from ovllm_engine.server import args as serve_args
    from ovllm_operator import cli as operator_cli
    from ovllm_router import cli as router_cli

    parser = argparse.ArgumentParser(
        prog="ovllm",
        description="CPU LLM serving on OpenVINO: an OpenAI-compatible engine and its Kubernetes operator.",
    )
    parser.add_argument("--version", action="version", version=f"ovllm {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_args.add_parser(subparsers)
    convert_cli.add_parser(subparsers)
    bench_cli.add_parser(subparsers)
    testmodels.add_parser(subparsers)
    operator_cli.add_parser(subparsers)
    router_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    return args.func(args) or 0


def setup_logging(level: str | int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # huggingface_hub's HTTP client logs every request at INFO: a download of 200 files would bury
    # the progress lines. Kept with --log-level DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
