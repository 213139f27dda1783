"""ovllm on a real node: the chart, the operator, engine pods and a conversion Job run as containers
under a real kubelet (hack/realnode.py: containerd, CNI bridge, kube-proxy), with the images CI
built, in namespaces that enforce the restricted Pod Security Standard.

What kwok cannot show and this does: the images' entrypoints, probes and their timings, the locked
down security context with a read-only root, volume mounts of PersistentVolumes on the node, the
env contract inside a container, Service routing through kube-proxy, rollouts, a replaced operator.

One cluster for the module (its own, beside the kwok session's), with tests in the order a user
meets them; `pytest -m real_node` runs them alone. Needs root, Docker's images and the Debian
packages of `python hack/controlplane.py install --real-node`.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from operator_testing import CHART, GROUP, PLURAL, VERSION, run_helm, wait_for

from conftest import controlplane, require
from http_testing import openai_client
from images_testing import image

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.real_node]

realnode = controlplane.realnode
NODE = realnode.NODE_NAME
ON_NODE = {"kubernetes.io/hostname": NODE}
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
OPERATOR_NAMESPACE = "ovllm-system"
RESYNC_SECONDS = 2
# Exact arithmetic, so SmolLM2's answer does not depend on this CPU's bf16 and int8 kernels
# (engine/ovllm_engine/config.py EXACT_OV_CONFIG).
EXACT = '{"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}'
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# ------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cluster(docker_images, tmp_path_factory):
    """A control plane with the real node, the images imported into it; at the end, `down` must
    leave nothing on the host."""
    require(realnode.why_not_here() is None, f"a real node on this machine: {realnode.why_not_here()}")
    lacking = controlplane.missing(real_node=True)
    require(not lacking, f"real node binaries ({', '.join(lacking)}); build them with `make controlplane`")
    plane = controlplane.start(tmp_path_factory.mktemp("real-node"), timeout=180, real_node=True)
    left = []
    try:
        started = time.monotonic()
        imported = plane.load_images([image("engine"), image("operator"), image("converter")])
        print(f"imported {imported} into {NODE} in {time.monotonic() - started:.0f}s")
        yield plane
    finally:
        left = plane.stop()
    assert left == [], "the real node left these on the host:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def api(cluster):
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))

    class Api:
        core = client.CoreV1Api(api_client)
        apps = client.AppsV1Api(api_client)
        batch = client.BatchV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)

    yield Api
    api_client.close()


def kubectl(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def restricted_namespace(api, name: str) -> str:
    api.core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    wait_for(f"namespace {name}'s default ServiceAccount",
             lambda: api.core.list_namespaced_service_account(name).items, 30)
    return name


def local_volume(api, namespace: str, claim: str, directory: Path) -> None:
    """A PersistentVolume on the node (a `local` volume: the scheduler places its pods on real-0),
    bound to a claim of that name."""
    volume = f"{namespace}-{claim}"
    api.core.create_persistent_volume({
        "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": str(directory)},
                 "claimRef": {"namespace": namespace, "name": claim},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}},
    })
    api.core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
                 "resources": {"requests": {"storage": "5Gi"}}},
    })


def min_isa() -> str:
    """The highest of ovllm's ISA levels this CPU has, so placement goes through the real labels."""
    from ovllm_operator.isa import ISA_FEATURES

    labels = realnode.cpu_labels()
    have = [level for level, features in ISA_FEATURES.items()
            if all(realnode.NFD_CPUID + feature in labels for feature in features)]
    return have[-1]


def ready_pods(api, namespace: str, name: str) -> list:
    pods = api.core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=ovllm-engine,"
                                                                   f"app.kubernetes.io/instance={name}").items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])]


def phase(api, namespace: str, name: str) -> dict:
    return api.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def wait_ready(api, namespace: str, name: str, replicas: int, timeout: float = 300) -> list:
    def done():
        status = phase(api, namespace, name).get("status", {})
        pods = ready_pods(api, namespace, name)
        return len(pods) == replicas and status.get("readyReplicas") == replicas and pods

    return wait_for(f"{replicas} ready engine pods of {name}", done, timeout,
                    explain=lambda: describe(api, namespace))


def describe(api, namespace: str) -> str:
    """Pods and recent events of a namespace, for a failure message."""
    lines = []
    for pod in api.core.list_namespaced_pod(namespace).items:
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        states = [(s.name, s.ready, s.restart_count, s.state.to_dict()) for s in statuses]
        lines.append(f"pod {pod.metadata.name} on {pod.spec.node_name}: {pod.status.phase} {states}")
        for status in statuses:  # what a crashed container said last
            if status.restart_count or (status.state.terminated and status.state.terminated.exit_code):
                try:
                    log = api.core.read_namespaced_pod_log(pod.metadata.name, namespace, container=status.name,
                                                           previous=bool(status.restart_count), tail_lines=15)
                except Exception as exc:  # noqa: BLE001 (a message for a failure already happening)
                    log = repr(exc)
                lines.append(f"  log of {status.name}:\n{log}")
    for event in api.core.list_namespaced_event(namespace).items[-15:]:
        lines.append(f"event {event.involved_object.kind}/{event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(lines)


def chat(base_url: str, **kwargs) -> str:
    client = openai_client(base_url)
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0,
                                           **kwargs)
    return reply.choices[0].message.content


# ------------------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def operator(cluster, api):
    """The chart installed as a user would, with CI's operator image, in a restricted namespace."""
    from kubernetes import client  # noqa: F401  (the api fixture needs it installed)

    restricted_namespace(api, OPERATOR_NAMESPACE)
    run_helm(controlplane.helm_path(), "install", "ovllm", str(CHART), "--kubeconfig", str(cluster.kubeconfig),
             "--namespace", OPERATOR_NAMESPACE, "--set", "image.repository=ovllm-operator",
             "--set", f"image.tag={image('operator').split(':')[1]}", "--set", "image.pullPolicy=Never",
             "--set", f"resyncSeconds={RESYNC_SECONDS}", "--set", "logFormat=plain",
             "--set", "nodeSelector.kubernetes\\.io/hostname=" + NODE,
             # The node has this machine's 2 cores, and two engine pods take one each.
             "--set", "resources.requests.cpu=null",
             "--wait", "--timeout", "180s")
    return OPERATOR_NAMESPACE


def operator_pod(api):
    (pod,) = [pod for pod in api.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
              if pod.metadata.deletion_timestamp is None]
    return pod


def test_the_real_node_joins_with_this_machines_cpu_labels(cluster, api):
    node = api.core.read_node(NODE)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == controlplane.K8S_VERSION
    labels = realnode.cpu_labels()
    assert labels, "no NFD CPU label for this CPU"  # every x86 server CPU has AVX2 at least
    assert {key: value for key, value in node.metadata.labels.items() if key.startswith(realnode.NFD_CPUID)} == labels
    # The kwok nodes are still there, and still fake.
    kwok = api.core.list_node(label_selector="type=kwok").items
    assert {n.metadata.name for n in kwok} == set(controlplane.NODES)


def test_helm_installs_an_operator_that_is_ready_through_its_own_probes(api, operator):
    pod = operator_pod(api)
    assert pod.spec.node_name == NODE
    (status,) = pod.status.container_statuses
    assert status.ready and status.restart_count == 0 and status.state.running
    assert status.image_id, "the kubelet ran no image"
    assert pod.spec.containers[0].readiness_probe.http_get.path == "/healthz"
    labels = api.core.read_namespace(OPERATOR_NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.fixture(scope="module")
def served(cluster, api, operator, smollm2_gguf, tmp_path_factory):
    """SmolLM2 as GGUF on a PersistentVolume on the node, served by one engine pod."""
    namespace = restricted_namespace(api, f"chat-{uuid.uuid4().hex[:6]}")
    weights = tmp_path_factory.mktemp("weights")
    weights.chmod(0o755)
    shutil.copy(smollm2_gguf, weights / smollm2_gguf.name)
    (weights / smollm2_gguf.name).chmod(0o644)
    local_volume(api, namespace, "weights", weights)
    api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OVLLMDeployment", "metadata": {"name": "smollm2"},
        "spec": {
            "model": {"pvc": {"claimName": "weights", "path": smollm2_gguf.name}, "servedModelName": "smollm2"},
            "replicas": 1,
            "engine": {"image": image("engine"), "imagePullPolicy": "Never", "kvCacheSpaceGiB": 1,
                       "kvCachePrecision": "f32", "extraArgs": ["--ov-config", EXACT]},
            "cpu": {"cores": 1, "memory": "2Gi", "minISA": min_isa()},
            "nodeSelector": ON_NODE,
        },
    })
    wait_ready(api, namespace, "smollm2", 1)
    service = api.core.read_namespaced_service("smollm2", namespace)
    return namespace, f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"


def test_the_engine_pod_serves_through_the_service_port_forward_and_pod_ip(cluster, api, served):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    namespace, service_url = served
    (pod,) = ready_pods(api, namespace, "smollm2")
    assert pod.spec.node_name == NODE
    (status,) = pod.status.container_statuses
    assert status.restart_count == 0
    (engine,) = pod.spec.containers
    assert engine.startup_probe.http_get.path == "/health" and engine.security_context.read_only_root_filesystem

    # ClusterIP from the node: kube-proxy's rules (they may lag the endpoints by a sync).
    answer = wait_for("an answer through the Service's ClusterIP", lambda: _try_chat(service_url), 60)
    assert "Paris" in answer

    forward = subprocess.Popen([str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n",
                                namespace, "port-forward", "service/smollm2", ":8000"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8000"
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = line.split("127.0.0.1:")[1].split()[0]
        assert "Paris" in chat(f"http://127.0.0.1:{local}")
    finally:
        forward.terminate()
        forward.wait(10)

    metrics = httpx.get(f"http://{pod.status.pod_ip}:8000/metrics", timeout=10).text
    finished = sum(sample.value for family in text_string_to_metric_families(metrics) for sample in family.samples
                   if sample.name == "vllm:request_success_total")
    assert finished >= 2  # the two answers above (and any the ClusterIP wait retried)
    # The env contract as the engine sees it in the container.
    env = kubectl(cluster, "-n", namespace, "exec", pod.metadata.name, "--", "python3", "-c",
                  "import os; print(os.environ['VLLM_OPENVINO_KVCACHE_SPACE'], os.environ['OVLLM_INFERENCE_THREADS'],"
                  " os.getuid())").stdout.split()
    assert env == ["1", "1", "1000"]


def _try_chat(base_url: str) -> str | None:
    try:
        return chat(base_url)
    except Exception:  # noqa: BLE001 (not routed yet: retried by wait_for)
        return None


def test_scaled_pods_serve_and_a_deleted_pod_is_replaced(cluster, api, served):
    namespace, _ = served
    kubectl(cluster, "-n", namespace, "scale", "ovllmdeployment/smollm2", "--replicas", "2")
    pods = wait_ready(api, namespace, "smollm2", 2)
    assert {pod.spec.node_name for pod in pods} == {NODE}
    for pod in pods:  # each replica answers on its own
        assert "Paris" in chat(f"http://{pod.status.pod_ip}:8000")

    gone = pods[0].metadata.name
    api.core.delete_namespaced_pod(gone, namespace)
    replaced = wait_for("a replacement pod", lambda: (lambda ready: len(ready) == 2 and gone not in
                                                      {p.metadata.name for p in ready} and ready)(
        ready_pods(api, namespace, "smollm2")), 240, explain=lambda: describe(api, namespace))
    assert "Paris" in chat(f"http://{replaced[-1].status.pod_ip}:8000")

    kubectl(cluster, "-n", namespace, "scale", "ovllmdeployment/smollm2", "--replicas", "1")
    wait_ready(api, namespace, "smollm2", 1)


def test_a_rollout_keeps_serving_without_one_failed_request(cluster, api, served):
    """A spec change rolls the engine pods (one new pod first, the old one goes once it is ready)
    while a client sends one request after another through the Service."""
    import httpx

    namespace, service_url = served
    (before,) = ready_pods(api, namespace, "smollm2")
    results = {"ok": 0, "failed": []}
    stop = threading.Event()

    def client_loop():
        # A new connection per request: what this checks is where the Service routes each one while
        # pods come and go (a kept-alive connection stays with its pod; see the README).
        client = openai_client(service_url, http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)))
        while not stop.is_set():
            try:
                client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4, temperature=0)
                results["ok"] += 1
            except Exception as exc:  # noqa: BLE001 (counted: the assertion below names them)
                results["failed"].append(repr(exc)[:200])

    loop = threading.Thread(target=client_loop, daemon=True)
    loop.start()
    try:
        time.sleep(3)
        api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "smollm2", {
            "spec": {"engine": {"maxNumSeqs": 32}}})
        wait_for("the new pod to replace the old one", lambda: (lambda ready: len(ready) == 1 and ready[0].metadata.name
                 != before.metadata.name)(ready_pods(api, namespace, "smollm2")), 300,
                 explain=lambda: describe(api, namespace))
        kubectl(cluster, "-n", namespace, "rollout", "status", "deployment/smollm2", "--timeout=300s")
        wait_for("the old pod to be gone", lambda: before.metadata.name not in {
            p.metadata.name for p in api.core.list_namespaced_pod(namespace).items}, 120)
        time.sleep(3)
    finally:
        stop.set()
        loop.join(90)
    assert results["failed"] == [] and results["ok"] >= 10, results
    (pod,) = ready_pods(api, namespace, "smollm2")
    assert "32" in pod.spec.containers[0].args[pod.spec.containers[0].args.index("--max-num-seqs") + 1]


def test_a_replaced_operator_changes_no_child(cluster, api, operator, served):
    import httpx

    namespace, _ = served

    def children() -> dict:
        selector = "app.kubernetes.io/instance=smollm2"
        found = {f"Deployment/{d.metadata.name}": d.metadata.resource_version
                 for d in api.apps.list_namespaced_deployment(namespace, label_selector=selector).items}
        found |= {f"Service/{s.metadata.name}": s.metadata.resource_version
                  for s in api.core.list_namespaced_service(namespace, label_selector=selector).items}
        return found

    before = children()
    assert "Deployment/smollm2" in before and "Service/smollm2" in before
    old = operator_pod(api)
    api.core.delete_namespaced_pod(old.metadata.name, OPERATOR_NAMESPACE)
    new = wait_for("a new operator pod, ready", lambda: (lambda pod: pod.metadata.name != old.metadata.name and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []) and pod)(operator_pod(api))
        if len([p for p in api.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
                if p.metadata.deletion_timestamp is None]) == 1 else None, 180)

    def metric(name: str) -> float:
        text = httpx.get(f"http://{new.status.pod_ip}:8081/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    # The new operator has reconciled the resource (at start, then every resync), and changed nothing.
    wait_for("the new operator to reconcile", lambda: metric("ovllm_operator_reconciles_total") >= 2, 60)
    time.sleep(2 * RESYNC_SECONDS)
    assert metric("ovllm_operator_child_changes_total") == 0
    assert children() == before


def test_a_conversion_job_fills_the_model_cache_and_the_engine_serves_it(cluster, api, operator, served, tiny_hf,
                                                                         tmp_path_factory):
    # The node's two cores: the GGUF deployment goes first.
    namespace, _ = served
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "smollm2")
    wait_for("the GGUF deployment's pods to go", lambda: not api.core.list_namespaced_pod(namespace).items, 180)

    namespace = restricted_namespace(api, f"convert-{uuid.uuid4().hex[:6]}")
    source = tmp_path_factory.mktemp("hf-source")
    source.chmod(0o755)
    shutil.copytree(tiny_hf, source / "tiny")
    for path in source.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    cache = tmp_path_factory.mktemp("model-cache")
    shutil.chown(cache, 1000, 1000)  # the converter runs as the pod's user
    local_volume(api, namespace, "source", source)
    local_volume(api, namespace, "cache", cache)
    api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OVLLMDeployment", "metadata": {"name": "tiny"},
        "spec": {
            "model": {"pvc": {"claimName": "source", "path": "tiny"}, "weightFormat": "int8"},
            "replicas": 1,
            "engine": {"image": image("engine"), "converterImage": image("converter"), "imagePullPolicy": "Never",
                       "kvCacheSpaceGiB": 1},
            "modelCache": {"claimName": "cache", "converterMemory": "4Gi"},
            "cpu": {"cores": 1, "memory": "2Gi", "minISA": min_isa()},
            "nodeSelector": ON_NODE,
        },
    })
    (pod,) = wait_ready(api, namespace, "tiny", 1, timeout=600)
    (job,) = api.batch.list_namespaced_job(namespace).items
    assert job.status.succeeded == 1
    (job_pod,) = api.core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
    assert job_pod.spec.node_name == NODE and job_pod.spec.containers[0].image == image("converter")
    converted = [path for path in cache.iterdir() if (path / "openvino_model.xml").is_file()]
    assert len(converted) == 1, list(cache.iterdir())
    client = openai_client(f"http://{pod.status.pod_ip}:8000")
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 8 and reply.choices[0].message.content
