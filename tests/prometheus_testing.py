"""A real Prometheus for tests (Debian's package, `make prometheus`): started on a free port with a
scrape configuration of the test's targets, queried through its HTTP API, stopped at the end; and
`promtool`'s checks of exposition text and rule files."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


class PrometheusError(AssertionError):
    """Prometheus refused a query (it does not parse, or cannot be evaluated): its own message."""


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path):
        self.url, self.process, self.log_path = url, process, log_path

    def _get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution: the body says why
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list:
        """An instant query's result (a list of series; empty when nothing matches)."""
        data = self._get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list:
        """Poll until `expr` returns data."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no data for {expr} after {timeout:g}s; targets: {self.targets()}")
            time.sleep(0.5)

    def targets(self) -> list[dict]:
        return [{"job": t["labels"]["job"], "url": t["scrapeUrl"], "health": t["health"], "error": t["lastError"]}
                for t in self._get("/api/v1/targets")["activeTargets"]]

    def rules(self) -> list[dict]:
        """The rule groups as Prometheus evaluates them (health, state, lastError per rule)."""
        return self._get("/api/v1/rules")["groups"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_prometheus(targets: dict[str, list[str]], scrape_interval: str = "1s", rule_files: list[Path] = (),
                       labels: dict[str, dict[str, str]] | None = None) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (job name -> ["host:port", ...]) every `scrape_interval`, with
    `rule_files` evaluated as often; `labels` (job name -> labels) are added to a job's targets, as
    Kubernetes service discovery adds a pod's."""
    binary = prometheus_binary()
    assert binary, "prometheus is not installed: run `make prometheus` (Debian's prometheus package)"
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        directory = Path(tmp)
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [
                {"targets": addresses, "labels": (labels or {}).get(job, {})}]} for job, addresses in targets.items()],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log_path = directory / "prometheus.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                stdout=log, stderr=subprocess.STDOUT)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"prometheus did not become ready (exit {process.poll()}):\n"
                                         f"{prometheus.log()[-3000:]}")
                time.sleep(0.2)
            yield prometheus
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def promtool_check_metrics(text: str) -> tuple[bool, str]:
    """`promtool check metrics` on exposition text: whether it passed, and what it said (its lint
    findings, or why the text does not parse)."""
    result = subprocess.run([promtool_binary(), "check", "metrics"], input=text, capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def promtool_check_rules(path: Path) -> tuple[bool, str]:
    result = subprocess.run([promtool_binary(), "check", "rules", str(path)], capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr
