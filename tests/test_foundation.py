"""The project's ground rules: one installable distribution, the layout rule, a light operator,
the `ovllm` command, and install and CI instructions that agree with each other."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_source_roots_are_not_packages():
    # A top-level package named `operator` would shadow Python's standard module.
    assert not (ROOT / "engine" / "__init__.py").exists()
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert (ROOT / "engine" / "ovllm_engine" / "__init__.py").is_file()
    assert (ROOT / "operator" / "ovllm_operator" / "__init__.py").is_file()


def test_standard_operator_module_is_not_shadowed():
    import operator

    assert operator.add(2, 3) == 5
    assert "site-packages" not in (operator.__file__ or "") and "ovllm" not in (operator.__file__ or "")


def test_operator_package_loads_no_engine_openvino_or_torch():
    probe = (
        "import json, sys, ovllm_operator; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ovllm_engine', 'openvino', 'openvino_genai', 'torch', 'transformers', 'optimum'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_engine_package_import_is_light():
    probe = ("import json, sys, ovllm_engine, ovllm_cli.main; "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('openvino', 'openvino_genai', 'torch', 'transformers', 'aiohttp'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_distribution_metadata():
    project = PYPROJECT["project"]
    assert project["name"] == "ovllm"
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["ovllm"] == "ovllm_cli.main:main"
    extras = {name: " ".join(deps) for name, deps in project["optional-dependencies"].items()}
    for package in ("openvino", "openvino-genai", "openvino-tokenizers", "aiohttp", "prometheus-client"):
        assert re.search(rf"(^| ){package}[<>=\[ ]", extras["engine"]), package
    for package in ("optimum-intel", "nncf", "torch", "transformers"):
        assert re.search(rf"(^| ){package}[<>=\[ ]", extras["convert"]), package
    for package in ("kopf", "kubernetes"):
        assert re.search(rf"(^| ){package}[<>=\[ ]", extras["operator"]), package
    assert "torch" not in extras["engine"] and "openvino" not in extras["operator"]
    assert "test" in extras


def test_cli_version_and_help():
    from ovllm_engine import __version__

    ovllm = str(Path(sys.executable).parent / "ovllm")  # the console script the install made
    version = subprocess.run([ovllm, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"ovllm {__version__}" and __version__ == PYPROJECT["project"]["version"]
    help_text = subprocess.run([ovllm, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in help_text and "convert" in help_text and "testmodel" in help_text
    no_command = subprocess.run([ovllm], capture_output=True, text=True)
    assert no_command.returncode == 2 and "usage: ovllm" in no_command.stdout


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands[0] == "make serve"
    assert commands[1].startswith("curl ") and "/v1/chat/completions" in commands[1]
    assert commands[2] == "make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run exactly the README's test command"


def test_installed_torch_stack_is_consistent():
    """optimum-intel pulls torchvision; one built for another torch breaks transformers' model imports."""
    import importlib.util

    from conftest import require_module

    require_module("torch", "convert")
    probe = ("import torch; from transformers import Qwen2ForCausalLM; import importlib.util; "
             "tv = importlib.util.find_spec('torchvision'); "
             "exec('import torchvision.ops\\ntorchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)') "
             "if tv else None; "
             "print('ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert importlib.util.find_spec("transformers") is not None
