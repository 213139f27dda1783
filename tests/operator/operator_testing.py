"""What the operator's end-to-end tests share: an `ovllm operator` process, polling, and short
ways to create and read OVLLMDeployments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conftest import ROOT, free_port

GROUP, VERSION, PLURAL = "ovllm.io", "v1alpha1", "ovllmdeployments"
CHART = ROOT / "charts" / "ovllm-operator"


def wait_for(what: str, check, timeout: float = 60.0, interval: float = 0.5, explain=None):
    """Poll `check` until it returns something truthy (a 404 counts as not yet); on timeout, fail
    with the last value seen, or with what `explain()` says (components' logs, a status)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            last = exc
            if exc.status != 404:
                raise
        if last and not isinstance(last, ApiException):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}; "
                f"{explain() if explain else f'last: {last!r}'}")


class Operator:
    """An `ovllm operator` process with its JSON log kept for assertions. It runs with the default
    safety resync (10 minutes), so every test sees what events alone achieve; a test that wants
    resyncs passes --resync-seconds."""

    def __init__(self, kubeconfig: Path, log_path: Path, *args: str, peering: str | None = None):
        self.liveness_port, self.metrics_port = free_port(), free_port()
        self.log_path = log_path
        # Its own peering object unless told otherwise: a peer left over from an earlier test (one
        # that was killed) would otherwise make two operators of equal priority pause each other.
        self.peering = peering or f"ovllm-test-{self.liveness_port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 (open for the process's life)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ovllm_cli", "operator",
             "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port),
             "--peering", self.peering, "--log-format", "json", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the operator's own series `name` whose labels include `labels` (0: none yet,
        or the operator is still starting)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except ConnectionRefusedError:
            return 0.0
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
            return 0.0
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def create(api, namespace: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OVLLMDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def resource(api, namespace: str, name: str) -> dict:
    return api.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def settled(api, namespace: str, name: str, seconds: float = 2.0) -> bool:
    """Whether the resource stays unchanged (status included) for `seconds`."""
    first = resource(api, namespace, name)["metadata"]["resourceVersion"]
    time.sleep(seconds)
    return resource(api, namespace, name)["metadata"]["resourceVersion"] == first


def conditions(obj: dict) -> dict:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def wait_phase(api, namespace: str, name: str, phase: str, timeout: float = 60.0) -> dict:
    """Wait until the resource's status, for its current generation, is in this phase; on timeout,
    fail with the status last seen (its conditions say why)."""
    seen = {}

    def reached():
        obj = resource(api, namespace, name)
        status = seen["status"] = obj.get("status") or {}
        return obj if status.get("phase") == phase and status.get(
            "observedGeneration") == obj["metadata"]["generation"] else None

    return wait_for(f"{name} to be {phase}", reached, timeout, explain=lambda: f"status: {json.dumps(seen)}")


def events(api, namespace: str, name: str) -> list:
    found = api.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [(e.type, e.reason, e.message) for e in found.items]


def wait_events(api, namespace: str, name: str, wanted, timeout: float = 15.0) -> list:
    """The resource's Events once `wanted(events)` holds. The operator posts Events in the background
    (events.py, as client-go's recorder does), so one may land a moment after the status it explains."""
    def found_wanted() -> list | None:
        found = events(api, namespace, name)
        return found if wanted(found) else None

    return wait_for(f"Events of {name}", found_wanted, timeout)


def engine_pods(api, namespace: str, name: str) -> list:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/name=ovllm-engine"
    return api.core.list_namespaced_pod(namespace, label_selector=selector).items


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def service_account_token(kube, namespace: str, name: str) -> str:
    """A TokenRequest token of this ServiceAccount, as the kubelet mounts one into a pod."""
    return client.CoreV1Api(kube).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token


def service_account_kubeconfig(kube, admin_kubeconfig: Path, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token), so the
    operator run below has exactly the chart's RBAC."""
    token = service_account_token(kube, namespace, name)
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    path.write_text(json.dumps(config))
    return path
