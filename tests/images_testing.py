"""Running ovllm's images as a cluster runs them: a pod spec that the operator built (or the chart
rendered) becomes `docker run` with the same image, command, arguments, environment, user, read-only
root, dropped capabilities, no-new-privileges, resource limits and volumes. What Docker cannot play
(probes, preStop hooks, Services) stays with the operator's own tests on the control plane."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from http_testing import wait_answering

ROOT = Path(__file__).resolve().parent.parent


def _load_builder():
    """hack/images.py as a module (hack/ is no package; the name `images` would be tests/images/)."""
    if "ovllm_image_builder" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ovllm_image_builder", ROOT / "hack" / "images.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ovllm_image_builder"] = module
        spec.loader.exec_module(module)
    return sys.modules["ovllm_image_builder"]


image_builder = _load_builder()

TARGETS = image_builder.TARGETS
# Sizes the images must stay within (bytes, as `docker image inspect` reports them; MB = 10^6).
SIZE_LIMITS = {"engine": 600e6, "operator": 400e6, "router": 400e6}


def image(target: str) -> str:
    return image_builder.image_name(target)


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


@dataclass
class Docker:
    cli: str
    network: str = field(default_factory=lambda: f"ovllm-test-{uuid.uuid4().hex[:8]}")
    started: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def size(self, name: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", name).stdout)

    def distributions(self, name: str) -> set[str]:
        """Every Python distribution installed in the image (what `pip list` shows, dependencies included)."""
        probe = ("import importlib.metadata as m; "
                 "print('\\n'.join(sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()})))")
        return set(self("run", "--rm", "--entrypoint", "python3", name, "-c", probe).stdout.split())

    def run_pod_container(self, pod: dict, container: dict, volumes: dict[str, Path], *, name: str,
                          detach: bool, publish: int | None = None, network: str | None = None,
                          args: list[str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """`docker run` of one container of a pod spec. volumes maps the pod's volume names to host
        directories (an emptyDir or a claim); args replaces the container's arguments when given."""
        pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
        flags = ["--name", name, "--network", network or self.network, "--hostname", name]
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        group = security.get("runAsGroup", pod_security.get("runAsGroup"))
        if user is not None:
            flags += ["--user", f"{user}:{group if group is not None else user}"]
        if pod_security.get("fsGroup") is not None:
            flags += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        for capability in (security.get("capabilities") or {}).get("drop", []):
            flags += ["--cap-drop", capability]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "cpu" in limits:
            flags += ["--cpus", _cpus(limits["cpu"])]
        if "memory" in limits:
            flags += ["--memory", str(_quantity_bytes(limits["memory"]))]
        for variable in container.get("env", []):
            assert "value" in variable, f"{variable}: only literal values can be played here"
            flags += ["--env", f"{variable['name']}={variable['value']}"]
        for mount in container.get("volumeMounts", []):
            mode = ":ro" if mount.get("readOnly") else ""
            flags += ["--volume", f"{volumes[mount['name']]}:{mount['mountPath']}{mode}"]
        if publish:
            flags += ["--publish", f"127.0.0.1::{publish}"]
        command = container.get("command") or []
        if command:
            flags += ["--entrypoint", command[0]]
        argv = [*command[1:], *(container.get("args", []) if args is None else args)]
        self.started.append(name)
        return self("run", *(["--detach"] if detach else []), *flags, container["image"], *argv, timeout=timeout,
                    check=detach)

    def address(self, name: str, port: int) -> str:
        """http://127.0.0.1:PORT where a published container port answers."""
        mapping = self("port", name, str(port)).stdout.split()[0]
        return f"http://127.0.0.1:{mapping.rsplit(':', 1)[1]}"

    def state(self, name: str) -> dict:
        return json.loads(self("inspect", "--format", "{{json .State}}", name).stdout)

    def logs(self, name: str) -> str:
        result = self("logs", name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def exit_code(self, name: str) -> int | None:
        """None while the container runs, else its exit code."""
        state = self.state(name)
        return None if state["Running"] else state["ExitCode"]

    def wait_answering(self, name: str, url: str, timeout: float = 240) -> None:
        wait_answering(url, name, lambda: self.exit_code(name), lambda: self.logs(name), timeout)

    def cleanup(self) -> None:
        for name in self.started:
            self("rm", "--force", "--volumes", name, check=False)
        self("network", "rm", self.network, check=False)


def empty_dir(path: Path, uid: int = 1000) -> Path:
    """An emptyDir as the kubelet makes it for a pod with fsGroup: writable by the pod's user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    return path


def build_images() -> str:
    """Build (or find cached) every image with hack/images.py; the docker CLI's path."""
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "images.py"), "build"], capture_output=True,
                            text=True, timeout=3600)
    if result.returncode != 0:
        raise AssertionError(f"hack/images.py build failed:\n{result.stderr[-6000:]}")
    return image_builder.docker_cli()
