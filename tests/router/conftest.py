"""Fixtures for the router's tests: real `ovllm router` processes (started through the `ovllm` CLI)
in front of real `ovllm serve` replicas on loopback."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
from router_testing import API_KEY, MODEL


def _load(name: str, path: Path):
    """Import the root conftest under another name, once: `from conftest import ...` would find this
    file (or the operator's), which pytest also imports as module `conftest` (see tests/operator/conftest.py)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_shared = _load("ovllm_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
# Re-exported, as tests/operator/conftest.py does: test modules collected after this file that do
# `from conftest import ...` get this module.
ROOT, IN_CI, require, require_module = _shared.ROOT, _shared.IN_CI, _shared.require, _shared.require_module
free_port, Server = _shared.free_port, _shared.Server

# Three engines on one test machine: a small KV cache each. (Not OVLLM_INFERENCE_THREADS=1: with one
# inference thread OpenVINO 2026.4's continuous-batching pipeline dies of SIGFPE on the tiny model.)
ENGINE_ENV = {"VLLM_OPENVINO_KVCACHE_SPACE": "1"}


class RouterProcess(_shared.LoggedProcess):
    """A real `ovllm router` process on 127.0.0.1."""

    def __init__(self, backends: list[str], *args: str, log_path: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "ovllm_cli", "router", "--host", "127.0.0.1", "--port", str(self.port),
                   *(flag for backend in backends for flag in ("--backend", backend)), *args]
        super().__init__("ovllm router", command, log_path)

    def wait_ready(self, timeout: float = 30.0) -> RouterProcess:
        return self._wait_healthy(timeout)

    def client(self, api_key: str = API_KEY):
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture
def start_router(tmp_path):
    """start_router(backends, *flags) returns a ready RouterProcess, stopped after the test."""
    routers: list[RouterProcess] = []

    def start(backends: list[str], *args: str, ready: bool = True) -> RouterProcess:
        router = RouterProcess(backends, *args, log_path=tmp_path / f"router-{len(routers)}.log")
        routers.append(router)
        return router.wait_ready() if ready else router

    yield start
    for router in routers:
        router.stop()


@pytest.fixture(scope="module")
def engines(tiny_ov_fp32, tmp_path_factory):
    """Three `ovllm serve` replicas of the tiny model behind an API key, started together."""
    logs = tmp_path_factory.mktemp("engines")
    servers: list = []
    try:
        for index in range(3):
            server = Server(tiny_ov_fp32, "--served-model-name", MODEL, "--api-key", API_KEY, env=ENGINE_ENV,
                            log_path=logs / f"engine-{index}.log")
            # free_port() may hand out a port again while an engine that got it still loads its model
            # (it binds only then): two engines on one port would look like one ready replica.
            while server.port in {s.port for s in servers}:
                server.stop()
                server = Server(tiny_ov_fp32, "--served-model-name", MODEL, "--api-key", API_KEY, env=ENGINE_ENV,
                                log_path=logs / f"engine-{index}.log")
            servers.append(server)
        for server in servers:
            server.wait_ready()
            # ready means this engine answers, not another process that took the port meanwhile
            deadline = time.monotonic() + 10
            while f"on http://127.0.0.1:{server.port} " not in server.log():
                assert time.monotonic() < deadline, f"the engine on port {server.port} is not the one that answers:\n" \
                    + server.log()
                time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def router(engines, tmp_path_factory):
    """The router under test, prefix-hash (the default), in front of the three engines."""
    process = RouterProcess([engine.base_url for engine in engines], "--eject-seconds", "60",
                            log_path=tmp_path_factory.mktemp("router") / "router.log")
    try:
        yield process.wait_ready()
    finally:
        process.stop()
