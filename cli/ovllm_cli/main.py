"""`ovllm COMMAND ...`: one entry point for every role, in images that hold only one role.

Each image installs one extra (engine, convert, operator, router), so a subcommand's module may import
only its own role's dependencies. This module therefore names the subcommands in a table and imports
the module of the one being run, and no other: `ovllm operator` in the operator image never touches
OpenVINO, tqdm or torch, and `ovllm --help` works with no extra at all.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import sys
from dataclasses import dataclass

from ovllm_cli import __version__
from ovllm_cli.logs import setup_logging


@dataclass(frozen=True)
class Command:
    module: str  # defines add_parser(subparsers), which registers the subcommand and its flags
    extra: str  # the pyproject extra (and image) that holds its dependencies
    help: str


COMMANDS: dict[str, Command] = {
    "serve": Command("ovllm_engine.server.args", "engine", "serve a model over an OpenAI-compatible API"),
    "convert": Command("ovllm_engine.onboard.cli", "convert",
                       "convert a Hugging Face model to OpenVINO IR (once) and print the IR directory"),
    "bench": Command("ovllm_engine.bench.cli", "engine",
                     "benchmark the engine offline or any OpenAI-compatible server"),
    "testmodel": Command("ovllm_engine.testmodels", "convert",
                         "build (once) a random-weight Qwen2 test model and print its path"),
    "operator": Command("ovllm_operator.cli", "operator",
                        "run the Kubernetes operator that reconciles OVLLMDeployment resources"),
    "router": Command("ovllm_router.cli", "router",
                      "route OpenAI API requests over engine replicas (prefix-aware)"),
}


class MissingExtra(Exception):
    """The subcommand's module needs a package this installation (or image) does not hold."""


def missing_distributions(extra: str) -> list[str]:
    """The distributions that the extra requires and this environment lacks (versions are pip's
    business; presence is what decides whether a role can start)."""
    try:
        requirements = importlib.metadata.requires("ovllm") or []
    except importlib.metadata.PackageNotFoundError:
        return []  # a source tree that is not installed: no metadata to check against
    missing = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if not re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _lacks(name: str, command: Command, what: str) -> MissingExtra:
    return MissingExtra(f"ovllm {name}: this installation lacks the '{command.extra}' extra ({what}); "
                        f"install it with: pip install 'ovllm[{command.extra}]'")


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="ovllm",
        description="CPU LLM serving on OpenVINO: an OpenAI-compatible engine and its Kubernetes operator.",
    )
    parser.add_argument("--version", action="version", version=f"ovllm {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in argv: the first word that is not an option or --log-level's value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for argv: the chosen subcommand with all its flags, every other one as a name and
    its help line only (so that `ovllm --help` lists them all without importing any)."""
    parser, subparsers = _top_parser()
    chosen = chosen_command(argv)
    for name, command in COMMANDS.items():
        if name != chosen:
            subparsers.add_parser(name, help=command.help, add_help=False)
            continue
        missing = missing_distributions(command.extra)
        if missing:
            raise _lacks(name, command, "no " + ", ".join(missing))
        try:
            module = importlib.import_module(command.module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("ovllm_cli", "ovllm_engine", "ovllm_operator", "ovllm_router"):
                raise  # our own code is broken: show it whole
            raise _lacks(name, command, f"no module {exc.name!r}") from None
        module.add_parser(subparsers, command.help)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except MissingExtra as exc:
        setup_logging("INFO")  # one error line in the format of every other: "TIME ERROR ovllm: ..."
        logging.getLogger("ovllm").error("%s", exc)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    return args.func(args) or 0
