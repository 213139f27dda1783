"""Dockerfile.openvino as text: each image target installs the extra of its name, pinned by the
constraints; nothing is pulled but the base image; every install step can be pointed at a mirror and
given a CA bundle that stays out of the layers. (tests/images/test_pods.py builds and runs them.)"""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile.openvino").read_text()
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
ROLES = {"engine": "serve", "converter": "convert", "operator": "operator", "router": "router"}
EXTRA_OF_TARGET = {"engine": "engine", "converter": "convert", "operator": "operator", "router": "router"}
PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")


def stages() -> dict[str, tuple[str, str]]:
    """Each named stage: (what it is built FROM, its instructions)."""
    found, name = {}, None
    for line in DOCKERFILE.splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            name = match.group(2)
            found[name] = (match.group(1), "")
        elif name:
            found[name] = (found[name][0], found[name][1] + line + "\n")
    return found


def test_each_target_installs_the_extra_of_its_name_and_runs_its_role():
    all_stages = stages()
    for target, command in ROLES.items():
        assert target in all_stages, f"no stage named {target}"
        body = all_stages[target][1]
        (build,) = re.findall(r"COPY --from=(\S+) /opt/ovllm /opt/ovllm", body)
        deps, build_body = all_stages[build]
        assert "image-install --no-deps ." in build_body
        installed = re.findall(r"-r pyproject.toml --extra (\S+)", all_stages[deps][1])
        extra = EXTRA_OF_TARGET[target]
        assert installed == [extra], f"{target} installs {installed}, not the '{extra}' extra"
        assert extra in EXTRAS
        assert f'ENTRYPOINT ["ovllm", "{command}"]' in body
        assert "USER 1000:1000" in body


def test_every_install_is_pinned_by_the_constraints_and_can_use_a_mirror_and_a_ca():
    installs = 0
    for name, (_, body) in stages().items():
        steps = re.findall(r"RUN(?:[^\n]*\\\n)*[^\n]*", body)  # with continuation lines
        for step in steps:
            if "image-install" not in step and "pip install" not in step:
                continue
            installs += 1
            assert "--mount=type=secret,id=ca" in step, f"{name}: {step}"
            for line in re.findall(r"(?:image-install|pip install)[^\n]*", step):
                assert "-c constraints.txt" in line or "--no-deps ." in line or "uv==" in line, line
            for arg in PIP_ARGS:  # ARGs are not inherited: each installing stage declares them
                assert re.search(rf"^ARG .*\b{arg}\b", body, re.M), f"{name} does not declare {arg}"
    assert installs >= 9


def test_nothing_is_pulled_but_the_base_and_the_torch_index_is_an_argument():
    assert not re.search(r"^#\s*syntax=", DOCKERFILE, re.M), "a syntax line makes BuildKit pull a frontend image"
    all_stages = stages()
    for name, (source, _) in all_stages.items():
        assert source == "${PYTHON_IMAGE}" or source in all_stages, f"{name}: FROM {source}"
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+", DOCKERFILE, re.M)
    assert "--index-url \"$TORCH_INDEX_URL\"" in DOCKERFILE
    # The CA bundle is a secret mount: never COPY'd, never put in ENV.
    assert not re.search(r"^(COPY|ADD|ENV)[^\n]*(\.crt|\.pem|SSL_CERT_FILE)", DOCKERFILE, re.M)


def test_the_build_context_is_the_sources_only():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*")] == "*"  # everything is left out, then the sources let in
    allowed = {line[1:] for line in ignored if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M))
    for sources in copied:
        for path in sources.split():
            assert path in allowed, f"COPY {path} is not in the build context"


def test_role_images_hold_nothing_of_the_others():
    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in EXTRAS[extra]}

    assert not names("operator") & {"openvino", "openvino-genai", "torch", "optimum-intel", "nncf"}
    assert not names("engine") & {"torch", "optimum-intel", "nncf", "kopf"}
    assert not names("router") & {"openvino", "openvino-genai", "openvino-tokenizers", "torch", "kopf", "pydantic"}
