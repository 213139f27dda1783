"""Fleet behaviour end to end: the autoscaler and the router, with the real operator on the real
control plane, and real `ovllm serve` processes standing in for the engine containers kwok does
not run.

kwok gives each pod an address from its node's podCIDR. The fake node `fleet-a` gets
10.254.0.0/24; for each engine pod the test adds the pod's address to this machine's loopback
interface and starts a real engine there, on the engine port. The operator then reads the real
engines' /metrics at the pods' addresses, exactly as in a cluster, and the router finds them in
the real EndpointSlices the controller-manager publishes. (Loopback's own 127.0.0.0/8 will not do:
Kubernetes refuses loopback addresses in EndpointSlices.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_testing import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    create,
    engine_pods,
    events,
    resource,
    wait_events,
    wait_for,
    wait_phase,
)

from conftest import controlplane, free_port, require

pytestmark = pytest.mark.e2e

FLEET_NODE = "fleet-a"
FLEET_CIDR = "10.254.0.0/24"
TAINT = "ovllm.io/test-fleet"
ENGINE_PORT = 8000
ON_FLEET_NODE = {
    "nodeSelector": {"kubernetes.io/hostname": FLEET_NODE},
    "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
def fleet_node(kube):
    """A fake AVX2 node whose pods get addresses this test can own; tainted, so only the pods of
    these tests land there."""
    require(os.geteuid() == 0 and shutil.which("ip") is not None,
            "root and the `ip` command, to give this machine the fake pods' addresses")
    core = client.CoreV1Api(kube)
    node = controlplane.node_manifest("avx2-a")
    node["metadata"]["name"] = FLEET_NODE
    node["metadata"]["labels"]["kubernetes.io/hostname"] = FLEET_NODE
    node["spec"] = {"podCIDR": FLEET_CIDR, "podCIDRs": [FLEET_CIDR],
                    "taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]}
    with contextlib.suppress(ApiException):
        core.create_node(node)
    wait_for("the fleet node to be Ready", lambda: any(
        c.type == "Ready" and c.status == "True" for c in core.read_node(FLEET_NODE).status.conditions or []))
    return FLEET_NODE


class Engines:
    """Real engines at the fake pods' addresses: each address is added to the loopback interface
    for as long as the test runs."""

    def __init__(self, start_server, model: Path):
        self.start_server, self.model = start_server, model
        self.by_address: dict[str, object] = {}

    def start(self, address: str, *flags: str):
        if address not in self.by_address:
            subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "lo"], check=True)
            self.by_address[address] = self.start_server(
                self.model, "--served-model-name", "tiny", *flags, host=address, port=ENGINE_PORT)
        return self.by_address[address]

    def close(self):
        for address, server in self.by_address.items():
            server.stop()
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@pytest.fixture
def engines(start_server, tiny_ov_fp32):
    running = Engines(start_server, tiny_ov_fp32)
    yield running
    running.close()


@pytest.fixture
def operator(control_plane, api, tmp_path):
    running = Operator(control_plane.kubeconfig, tmp_path / "operator.log", "--autoscale-seconds", "1")
    yield running
    running.stop()
    print(running.log()[-6000:])


def pod_addresses(api, namespace: str, name: str, count: int) -> list[str]:
    """The addresses of `count` ready engine pods, once kwok has given them."""
    def ready():
        pods = [p for p in engine_pods(api, namespace, name) if p.status.pod_ip and not p.metadata.deletion_timestamp]
        return sorted(p.status.pod_ip for p in pods) if len(pods) == count else None
    return wait_for(f"{count} engine pod(s) with addresses", ready, 60)


def autoscaling_status(api, namespace: str, name: str) -> dict:
    return (resource(api, namespace, name).get("status") or {}).get("autoscaling") or {}


def load(base_url: str, requests: int, tokens: int) -> list[threading.Thread]:
    """Streamed completions that each generate `tokens` tokens, all at once, in the background."""
    def one():
        with httpx.stream("POST", base_url + "/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": "a fleet", "max_tokens": tokens, "ignore_eos": True,
                "stream": True}) as response:
            for _ in response.iter_lines():
                pass
    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    return threads


def test_the_autoscaler_scales_on_the_engines_own_metrics_and_holds_when_it_cannot_read_them(
        api, operator, namespace, fleet_node, engines, tiny_ov_fp32):
    create(api, namespace, "auto", {
        "model": {"imagePath": "/opt/models/tiny", "servedModelName": "tiny"},
        "engine": {"image": "ovllm/engine:test"}, **ON_FLEET_NODE,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "inFlightRequests", "target": 2,
                        "scaleDownStabilizationSeconds": 4}})
    wait_phase(api, namespace, "auto", "Ready")
    (first,) = pod_addresses(api, namespace, "auto", 1)

    # The pod is ready, but nothing answers at its address yet: hold, and say why.
    held = wait_for("a hold for want of metrics", lambda: (
        s := autoscaling_status(api, namespace, "auto")).get("lastDecisionReason") == "MetricUnavailable" and s)
    assert held["desiredReplicas"] == 1 and held["unreadablePods"] == 1 and "currentAverage" not in held
    wait_events(api, namespace, "auto", lambda found: ("Warning", "MetricUnavailable") in {e[:2] for e in found})

    # A real engine at the pod's address.
    engine = engines.start(first)
    idle = wait_for("the idle engine's metrics", lambda: (
        s := autoscaling_status(api, namespace, "auto")).get("readablePods") == 1 and s)
    assert idle["currentAverage"] == 0 and idle["desiredReplicas"] == 1

    # 5 requests in flight against a target of 2 per replica: 3 replicas wanted, 2 at most.
    threads = load(engine.base_url, requests=5, tokens=800)
    scaled = wait_for("a scale-up on requests in flight", lambda: (
        s := autoscaling_status(api, namespace, "auto")).get("lastDecisionReason") == "ScaleUp" and s, 60)
    assert scaled["desiredReplicas"] == 2 and scaled["currentAverage"] >= 3 and scaled["lastScaleTime"]
    assert resource(api, namespace, "auto")["spec"]["replicas"] == 2  # through the scale subresource
    wait_for("the Deployment at 2 replicas", lambda: client.AppsV1Api(api.core.api_client).read_namespaced_deployment(
        "auto", namespace).spec.replicas == 2)
    scaled_up = [e for e in events(api, namespace, "auto") if e[1] == "ScaledUp"]
    assert scaled_up and "replicas 1 -> 2" in scaled_up[0][2]
    for thread in threads:
        thread.join()

    # Idle again, but the new pod's metrics cannot be read: no scale-down, whatever the window says.
    second = next(a for a in pod_addresses(api, namespace, "auto", 2) if a != first)
    time.sleep(4 + 3)
    partial = autoscaling_status(api, namespace, "auto")
    assert resource(api, namespace, "auto")["spec"]["replicas"] == 2, partial
    assert partial["unreadablePods"] == 1 and partial["readablePods"] == 1, partial
    assert partial["lastDecisionReason"] == "PartialMetrics", partial

    # Both readable and idle: down to minReplicas once the 4 s window has passed.
    engines.start(second)
    down = wait_for("a scale-down after the window", lambda: (
        s := autoscaling_status(api, namespace, "auto")).get("lastDecisionReason") == "ScaleDown" and s, 60)
    assert down["desiredReplicas"] == 1
    assert resource(api, namespace, "auto")["spec"]["replicas"] == 1
    assert any(e[1] == "ScaledDown" and "replicas 2 -> 1" in e[2] for e in events(api, namespace, "auto"))

    # Turned off: the autoscaler lets go of spec.replicas and its status.
    api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "auto",
                                              {"spec": {"autoscaling": {"enabled": False}}})
    wait_for("status.autoscaling removed", lambda: "autoscaling" not in resource(api, namespace, "auto")["status"])


def test_the_router_fronts_the_engines_and_finds_them_through_endpointslices(
        api, operator, namespace, fleet_node, engines, control_plane, kube, tmp_path):
    create(api, namespace, "routed", {
        "model": {"imagePath": "/opt/models/tiny", "servedModelName": "tiny"}, "replicas": 2,
        "engine": {"image": "ovllm/engine:test"}, **ON_FLEET_NODE,
        "router": {"enabled": True, "image": "ovllm/router:test", "strategy": "prefix-hash", "prefixChars": 64}})
    ready = wait_phase(api, namespace, "routed", "Ready")
    assert ready["status"]["router"] == {"replicas": 1, "readyReplicas": 1}
    assert "behind the router" in {c["type"]: c for c in ready["status"]["conditions"]}["Available"]["message"]

    # The resource's Service now selects the router; a headless Service selects the engines.
    service = api.core.read_namespaced_service("routed", namespace)
    assert service.spec.selector == {"app.kubernetes.io/name": "ovllm-router", "app.kubernetes.io/instance": "routed"}
    engines_service = api.core.read_namespaced_service("routed-engines", namespace)
    assert engines_service.spec.cluster_ip == "None"
    assert engines_service.spec.selector["app.kubernetes.io/name"] == "ovllm-engine"
    router = client.AppsV1Api(kube).read_namespaced_deployment("routed-router", namespace)
    (container,) = router.spec.template.spec.containers
    flags = dict(zip(container.args[1::2], container.args[2::2], strict=True))
    assert container.args[0] == "router" and flags["--service"] == "routed-engines"
    assert flags["--namespace"] == namespace and flags["--prefix-chars"] == "64"
    assert router.spec.template.spec.service_account_name == "routed-router"

    # The real router, with the ServiceAccount's own token (so its Role is tested too), finds the
    # two engine pods in the EndpointSlices and sends requests to the real engines at their addresses.
    addresses = pod_addresses(api, namespace, "routed", 2)
    for address in addresses:
        engines.start(address)
    token = api.core.create_namespaced_service_account_token(
        "routed-router", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "router", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "router"
    (tmp_path / "router-kubeconfig").write_text(json.dumps(config))
    port = free_port()
    log_path = tmp_path / "router.log"
    args = list(container.args)
    args[args.index("--port") + 1], args[args.index("--host") + 1] = str(port), "127.0.0.1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ovllm_cli", *args], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(tmp_path / "router-kubeconfig")})
    base = f"http://127.0.0.1:{port}"
    try:
        def backends():
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(base + "/health", timeout=2).json().get("backends")
        assert wait_for("the router to find 2 engines", lambda: backends() == 2, 60,
                        explain=lambda: log_path.read_text())
        import openai

        router_client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        for suffix in range(4):
            completion = router_client.completions.create(model="tiny", prompt="a shared system prompt " * 4 +
                                                          str(suffix), max_tokens=4)
            assert completion.choices[0].text is not None
        served = [_prompt_tokens(engines.by_address[a].base_url) for a in addresses]
        assert sorted(served)[0] == 0 and sorted(served)[1] > 0, served  # one prefix, one replica

        # A third replica (through the scale subresource, as `kubectl scale` does) joins the router.
        api.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "routed",
                                                        {"spec": {"replicas": 3}})
        assert wait_for("the router to find 3 engines", lambda: backends() == 3, 60,
                        explain=lambda: log_path.read_text())
    finally:
        process.terminate()
        process.wait(30)
        print(log_path.read_text()[-4000:])

    # Turned off: the Service selects the engines again, and the router's children go.
    api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "routed",
                                              {"spec": {"router": {"enabled": False}}})
    wait_for("the Service to select the engines", lambda: api.core.read_namespaced_service(
        "routed", namespace).spec.selector["app.kubernetes.io/name"] == "ovllm-engine")

    def gone():
        for call in (lambda: client.AppsV1Api(kube).read_namespaced_deployment("routed-router", namespace),
                     lambda: api.core.read_namespaced_service("routed-engines", namespace),
                     lambda: api.core.read_namespaced_service_account("routed-router", namespace),
                     lambda: client.RbacAuthorizationV1Api(kube).read_namespaced_role("routed-router", namespace)):
            try:
                call()
                return False
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return True
    wait_for("the router's children to be removed", gone)
    wait_for("status.router removed", lambda: "router" not in resource(api, namespace, "routed")["status"])


def _prompt_tokens(base_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:prompt_tokens_total")
