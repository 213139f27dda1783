"""Dockerfile.openvino and pyproject.toml agree: each image target installs the extra of its name,
and runs its role as a non-root user. (No Docker engine runs on the CI machines: the images
themselves are not built here.)"""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile.openvino").read_text()
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
ROLES = {"engine": "serve", "converter": "convert", "operator": "operator", "router": "router"}
EXTRA_OF_TARGET = {"engine": "engine", "converter": "convert", "operator": "operator", "router": "router"}


def stages() -> dict[str, str]:
    """Each named stage's instructions, by name."""
    found, name = {}, None
    for line in DOCKERFILE.splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            name = match.group(1)
            found[name] = ""
        elif name:
            found[name] += line + "\n"
    return found


def test_each_target_installs_the_extra_of_its_name_and_runs_its_role():
    all_stages = stages()
    for target, command in ROLES.items():
        assert target in all_stages, f"no stage named {target}"
        body = all_stages[target]
        (source,) = re.findall(r"COPY --from=(\S+) /opt/ovllm /opt/ovllm", body)
        installed = re.findall(r'pip install [^\n]*"\.\[([^\]]+)\]"', all_stages[source])
        extra = EXTRA_OF_TARGET[target]
        assert installed == [extra], f"{target} installs {installed}, not the '{extra}' extra"
        assert extra in EXTRAS
        assert f'ENTRYPOINT ["ovllm", "{command}"]' in body
        assert "USER 1000:1000" in body


def test_every_install_is_pinned_by_the_constraints():
    for line in re.findall(r"pip install[^\n]*", DOCKERFILE):
        assert "-c constraints.txt" in line, line


def test_role_images_hold_nothing_of_the_others():
    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in EXTRAS[extra]}

    assert not names("operator") & {"openvino", "openvino-genai", "torch", "optimum-intel", "nncf"}
    assert not names("engine") & {"torch", "optimum-intel", "nncf", "kopf"}
    assert not names("router") & {"openvino", "openvino-genai", "openvino-tokenizers", "torch", "kopf", "pydantic"}
