"""`ovllm router`'s flags (the operator builds the router Deployment with them) and its imports: the
router image holds no OpenVINO, no engine and no kopf, and `ovllm --help` loads nothing heavy."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from ovllm_cli.main import parse_args


def parse(*argv: str) -> argparse.Namespace:
    return parse_args(["router", *argv])  # as `ovllm router ARGV` parses them


def test_flags_and_defaults():
    args = parse("--backend", "http://127.0.0.1:8123")
    assert (args.host, args.port, args.strategy) == ("0.0.0.0", 8000, "prefix-hash")
    assert args.backend == ["http://127.0.0.1:8123"] and args.service is None and args.namespace is None
    assert (args.prefix_chars, args.load_factor, args.retries, args.eject_seconds) == (100, 1.25, 2, 10.0)
    assert (args.max_request_mb, args.shutdown_grace, args.log_format) == (4.0, 30.0, "text")
    args = parse("--service", "qwen", "--namespace", "llm", "--strategy", "least-load", "--port", "9000")
    assert (args.service, args.namespace, args.strategy, args.port) == ("qwen", "llm", "least-load", 9000)
    assert parse("--backend", "http://a:1", "--backend", "http://b:2").backend == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize("argv", [
    [],  # no backends at all
    ["--backend", "http://a:1", "--service", "qwen"],  # both
    ["--backend", "http://a:1", "--strategy", "random"],
])
def test_invalid_flag_combinations_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)


@pytest.mark.parametrize("argv, message", [
    (["--backend", "10.0.0.1:8000"], "not an http"),
    (["--backend", "http://a:1", "--load-factor", "0.5"], "--load-factor"),
    (["--backend", "http://a:1", "--namespace", "llm"], "--namespace goes with --service"),
    (["--backend", "http://a:1", "--prefix-chars", "0"], "--prefix-chars"),
])
def test_invalid_values_are_refused_before_starting(argv, message):
    result = subprocess.run([sys.executable, "-m", "ovllm_cli", "router", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_source_root_is_not_a_package():
    assert not (ROOT / "router" / "__init__.py").exists()
    assert (ROOT / "router" / "ovllm_router" / "__init__.py").is_file()


def loaded(statement: str) -> list[str]:
    heavy = ("ovllm_engine", "ovllm_operator", "openvino", "openvino_genai", "torch", "kopf", "aiohttp", "kubernetes",
             "prometheus_client")
    probe = (f"import json, sys; {statement}; "
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))")
    return json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                     check=True).stdout)


def test_imports_stay_light():
    # registering the subcommand loads nothing
    assert loaded("import ovllm_router.cli") == []
    # running it loads aiohttp, prometheus-client and the kubernetes client, and no engine, OpenVINO or kopf
    assert loaded("import ovllm_router.proxy, ovllm_router.discovery; import kubernetes.watch") == [
        "aiohttp", "kubernetes", "prometheus_client"]
