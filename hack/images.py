#!/usr/bin/env python3
"""Build ovllm's four images (Dockerfile.openvino) with BuildKit, on any machine that can run Docker,
including one that reaches no image registry: CI builds and runs them exactly so.

    python hack/images.py build [--target T ...] [--tag TAG]   # engine, operator, router, converter
    python hack/images.py build --background                   # the same, detached; log in the cache
    python hack/images.py base                                 # only the base image

What it does, each step only when needed:
1. Docker: as root, installs Debian's `docker.io` (its CLI builds with BuildKit without buildx) and
   starts `dockerd` when no daemon answers.
2. The base image (PYTHON_IMAGE): python:3.11-slim-bookworm when it is present or can be pulled;
   otherwise one made here with `debootstrap --variant=minbase` (python3, python3-venv,
   ca-certificates) and `docker import`, tagged by its recipe so that it is made once per machine.
3. Each target, tagged ovllm-TARGET:TAG, with the host's CA bundle as the BuildKit secret `ca`,
   PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST passed on when set, and TORCH_INDEX_URL
   (from the environment, else the Dockerfile's PyTorch CPU index when it answers, else the main index).
   BuildKit's layer cache makes a rebuild of unchanged dependencies take seconds.

Builds hold a lock (one at a time per machine), so a foreground build started while a background one
runs waits for it and then finds every layer cached. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.openvino"
TARGETS = ("engine", "operator", "router", "converter")  # smallest first: the tests of the others wait less
DEFAULT_TAG = "dev"
OFFICIAL_BASE = "python:3.11-slim-bookworm"
# The base made locally: what Dockerfile.openvino asks of PYTHON_IMAGE, from Debian's packages.
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Left out of the local base: apt's package lists and downloads, documentation and translations.
BASE_TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
             "usr/share/locale")
PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ovllm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_name(target: str, tag: str = DEFAULT_TAG) -> str:
    return f"ovllm-{target}:{tag}"


def _run(command: list[str], env: dict | None = None, timeout: float | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"images: `{' '.join(command)}` failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


# 1. Docker ---------------------------------------------------------------------------------------

def _builds_with_buildkit(cli: str) -> bool:
    """A CLI that builds with BuildKit: one with the buildx plugin, or one older than 23 (its own
    BuildKit client, turned on by DOCKER_BUILDKIT=1; Debian's docker.io is 20.10)."""
    if _run([cli, "buildx", "version"], check=False).returncode == 0:
        return True
    version = _run([cli, "version", "--format", "{{.Client.Version}}"], check=False).stdout.strip()
    match = re.match(r"(\d+)\.", version)
    return bool(match) and int(match.group(1)) < 23



def debian_packages():
    """hack/debian_packages.py, loaded by path: hack/ is no package, and this file is run as a script or
    loaded by path itself. One apt-get at a time (the control plane installs packages meanwhile)."""
    import importlib.util

    path = Path(__file__).with_name("debian_packages.py")
    spec = importlib.util.spec_from_file_location("ovllm_debian_packages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"images: {', '.join(packages)} missing; install them (apt-get install {' '.join(packages)})")
    log(f"installing {', '.join(packages)} from Debian's packages")
    debian_packages().install(*packages)


def docker_cli() -> str:
    """The path of a docker CLI that builds with BuildKit; installs Debian's when there is none."""
    candidates = [path for path in (shutil.which("docker"), "/usr/bin/docker") if path and Path(path).exists()]
    for cli in candidates:
        if _builds_with_buildkit(cli):
            return cli
    _apt_install("docker.io")
    if _builds_with_buildkit("/usr/bin/docker"):
        return "/usr/bin/docker"
    raise SystemExit("images: no docker CLI that builds with BuildKit (install buildx, or Debian's docker.io)")


def ensure_daemon(cli: str, timeout: float = 60.0) -> None:
    """A running Docker daemon: started here (dockerd, detached, log in the cache) when none answers."""
    if _run([cli, "info"], check=False).returncode == 0:
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        _apt_install("docker.io")
    if os.geteuid() != 0:
        raise SystemExit("images: no Docker daemon answers, and only root can start one here")
    log_path = cache_dir() / "dockerd.log"
    log(f"starting dockerd (log: {log_path})")
    with open(log_path, "ab") as out:
        subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    while _run([cli, "info"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"images: dockerd did not answer within {timeout:g}s; its log ends:\n"
                             + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.5)


# 2. The base image -------------------------------------------------------------------------------

def _has_image(cli: str, name: str) -> bool:
    return _run([cli, "image", "inspect", name], check=False).returncode == 0


def local_base_name() -> str:
    recipe = json.dumps([DEBIAN_SUITE, BASE_PACKAGES, BASE_TRIM]).encode()
    return f"ovllm-base/python3:{DEBIAN_SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"


def _make_local_base(cli: str, name: str) -> None:
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    mirror = os.environ.get("OVLLM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ovllm-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        log(f"making the base image {name} with debootstrap ({DEBIAN_SUITE}, {', '.join(BASE_PACKAGES)})")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
              str(rootfs), mirror])
        for relative in BASE_TRIM:
            shutil.rmtree(rootfs / relative, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([cli, "import", "--change", 'CMD ["python3"]', "-", name], stdin=tar.stdout,
                                  capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SystemExit(f"images: docker import of the base failed: {imported.stderr[-2000:]}")
    log(f"base image {name} made in {time.monotonic() - started:.0f}s")


def ensure_base(cli: str) -> str:
    """The PYTHON_IMAGE to build on: the official image if here or pullable, else one made locally."""
    if _has_image(cli, OFFICIAL_BASE):
        return OFFICIAL_BASE
    local = local_base_name()
    if _has_image(cli, local):
        return local
    try:
        if _run([cli, "pull", "--quiet", OFFICIAL_BASE], check=False, timeout=90).returncode == 0:
            return OFFICIAL_BASE
    except subprocess.TimeoutExpired:
        pass
    log(f"{OFFICIAL_BASE} cannot be pulled here")
    _make_local_base(cli, local)
    return local


# 3. The targets ----------------------------------------------------------------------------------

def torch_index_url() -> str:
    """TORCH_INDEX_URL for the converter: the environment's; else the Dockerfile's default (PyTorch's
    CPU-only wheels) when it answers; else empty, meaning the main index (on PyPI, the CUDA build)."""
    if "TORCH_INDEX_URL" in os.environ:
        return os.environ["TORCH_INDEX_URL"]
    (default,) = re.findall(r"^ARG TORCH_INDEX_URL=(\S+)", DOCKERFILE.read_text(), re.M)
    try:
        with urllib.request.urlopen(default.rstrip("/") + "/torch/", timeout=15):
            return default
    except OSError as exc:
        log(f"PyTorch's CPU index does not answer ({exc}): the converter's torch comes from the main index "
            "(the CUDA build, about 4 GB more)")
        return ""


def ca_bundle() -> Path | None:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_command(cli: str, target: str, tag: str, base: str, torch_index: str | None) -> list[str]:
    command = [cli, "build", "--file", str(DOCKERFILE), "--target", target, "--tag", image_name(target, tag),
               "--progress", "plain", "--build-arg", f"PYTHON_IMAGE={base}"]
    for name in PIP_ARGS:
        if os.environ.get(name):
            command += ["--build-arg", f"{name}={os.environ[name]}"]
    if target == "converter" and torch_index is not None:
        command += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
    bundle = ca_bundle()
    if bundle:
        command += ["--secret", f"id=ca,src={bundle}"]
    return [*command, str(ROOT)]


def image_size(cli: str, name: str) -> int:
    return int(_run([cli, "image", "inspect", "--format", "{{.Size}}", name]).stdout.strip())


@contextlib.contextmanager
def build_lock():
    with open(cache_dir() / "images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(targets: list[str], tag: str) -> dict[str, int]:
    """Build the targets; returns each image's size in bytes."""
    with build_lock():
        cli = docker_cli()
        ensure_daemon(cli)
        base = ensure_base(cli)
        torch_index = torch_index_url() if "converter" in targets else None
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        sizes = {}
        for target in targets:
            started = time.monotonic()
            log(f"building {image_name(target, tag)} on {base}")
            result = subprocess.run(build_command(cli, target, tag, base, torch_index), env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"images: building {target} failed; the build's log ends:\n{result.stderr[-6000:]}")
            sizes[target] = image_size(cli, image_name(target, tag))
            log(f"{image_name(target, tag)}: {sizes[target] / 1e6:.0f} MB, built in {time.monotonic() - started:.0f}s")
        # Images that lost their tag to a rebuild; the build cache stays (within a bound that leaves the
        # real node room for its copy of the images) for the next one.
        _run([cli, "image", "prune", "--force"], check=False)
        _run([cli, "builder", "prune", "--force", "--keep-storage", "25GB"], check=False)
        return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the images (all four by default)")
    build_parser.add_argument("--target", action="append", choices=TARGETS, help="only this target (repeatable)")
    build_parser.add_argument("--tag", default=DEFAULT_TAG, help="tag of the images: ovllm-TARGET:TAG")
    build_parser.add_argument("--background", action="store_true",
                              help="build detached (log: ~/.cache/ovllm/images-build.log) and return at once")
    commands.add_parser("base", help="make (or find) the base image and print its name")
    args = parser.parse_args(argv)
    if args.command == "base":
        cli = docker_cli()
        ensure_daemon(cli)
        print(ensure_base(cli))
        return 0
    targets = args.target or list(TARGETS)
    if args.background:
        log_path = cache_dir() / "images-build.log"
        with open(log_path, "wb") as out:
            subprocess.Popen([sys.executable, __file__, "build", "--tag", args.tag,
                              *[f"--target={target}" for target in targets]],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log(f"building {', '.join(targets)} in the background (log: {log_path})")
        return 0
    started = time.monotonic()
    sizes = build(targets, args.tag)
    print(json.dumps({image_name(target, args.tag): size for target, size in sizes.items()}))
    log(f"all built in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
