"""Each role starts with only its own extra installed, as in its image: one virtual environment per
extra (uv, from its cache), where `ovllm ROLE --help` runs and every module of the role imports, and
where another role's command says which extra it lacks instead of failing with a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, require
from ovllm_cli.main import COMMANDS

# The packages (and modules) each role's image runs, walked whole with pkgutil; and the modules
# left out because they belong to another role (named, with the reason).
ROLE_MODULES: dict[str, tuple[list[str], dict[str, str]]] = {
    "engine": (["ovllm_cli", "ovllm_edge", "ovllm_engine"],
               {"ovllm_engine.onboard.export": "the converter's (optimum-intel)"}),
    "convert": (["ovllm_cli", "ovllm_engine.onboard", "ovllm_engine.testmodels", "ovllm_engine.config"], {}),
    "operator": (["ovllm_cli", "ovllm_operator"], {}),
    "router": (["ovllm_cli", "ovllm_edge", "ovllm_router"], {}),
}
# What must not even be installed beside a role (transitive dependencies included).
FORBIDDEN = {
    "engine": {"torch", "optimum-intel", "nncf", "kopf"},
    "convert": {"kopf"},
    "operator": {"openvino", "openvino-genai", "torch", "optimum-intel", "nncf"},
    "router": {"openvino", "openvino-genai", "openvino-tokenizers", "torch", "kopf"},
}

PROBE = """
import importlib, importlib.metadata, json, pkgutil, sys
roots, excluded, forbidden = json.loads(sys.argv[1])
imported = []
for root in roots:
    module = importlib.import_module(root)
    imported.append(root)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + "."):
        if info.name not in excluded and not info.name.endswith(".__main__"):  # __main__ would run
            importlib.import_module(info.name)
            imported.append(info.name)
installed = {dist.metadata["Name"].lower().replace("_", "-") for dist in importlib.metadata.distributions()}
from ovllm_cli.main import COMMANDS, missing_distributions
missing = {command.extra: missing_distributions(command.extra) for command in COMMANDS.values()}
print(json.dumps({"imported": imported, "forbidden_installed": sorted(installed & set(forbidden)), "missing": missing}))
"""


def uv() -> Path:
    path = Path(sys.executable).parent / "uv"
    require(path.is_file(), f"uv beside {sys.executable} (make install-test installs it)")
    return path


def role_venv(extra: str) -> Path:
    """A virtual environment with ovllm (editable) and this one extra, cached by the dependency files
    and the checkout it points at (an editable install of a clone that is gone imports nothing); made
    once per change of pyproject.toml or constraints.txt (uv links the wheels from its cache)."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
                         + str(ROOT).encode())
    venv = Path.home() / ".cache" / "ovllm" / "role-venvs" / key.hexdigest()[:16] / extra
    if not (venv / "complete").is_file():
        subprocess.run([uv(), "venv", "--quiet", "--clear", "--python", sys.executable, venv], check=True)
        install = subprocess.run([uv(), "pip", "install", "--quiet", "--python", venv / "bin" / "python",
                                  "-c", ROOT / "constraints.txt", "-e", f"{ROOT}[{extra}]"],
                                 capture_output=True, text=True)
        assert install.returncode == 0, install.stderr[-3000:]
        (venv / "complete").write_text("")
    return venv


def run(venv: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                          cwd="/", timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(ROLE_MODULES))
def test_each_role_starts_and_imports_with_only_its_own_extra(extra):
    venv = role_venv(extra)
    roots, excluded = ROLE_MODULES[extra]
    probe = run(venv, "python", "-c", PROBE, json.dumps([roots, sorted(excluded), sorted(FORBIDDEN[extra])]))
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout)
    assert result["forbidden_installed"] == []
    assert len(result["imported"]) > len(roots)  # the walk found the role's modules
    assert result["missing"][extra] == []
    assert any(result["missing"].values()), "every other role's packages are installed too"

    assert run(venv, "ovllm", "--help").returncode == 0
    assert any(command.extra == extra for command in COMMANDS.values()), f"no command runs with the {extra} extra"
    for name, command in COMMANDS.items():
        answer = run(venv, "ovllm", name, "--help")
        if result["missing"][command.extra]:  # another role's: refused in one line, naming the extra
            assert answer.returncode == 1, (name, answer.stdout, answer.stderr)
            assert f"lacks the '{command.extra}' extra" in answer.stderr and "Traceback" not in answer.stderr
        else:
            assert answer.returncode == 0 and f"usage: ovllm {name}" in answer.stdout, answer.stderr[-3000:]


def test_command_table_names_existing_extras_and_modules():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, command in COMMANDS.items():
        assert command.extra in extras, name
        path = command.module.replace(".", "/") + ".py"
        assert any((ROOT / root / path).is_file() for root in ("cli", "engine", "operator", "router")), command
