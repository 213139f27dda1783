"""What the operator's end-to-end tests rely on from the test control plane (hack/controlplane.py):
the fake NFD-labelled nodes, Jobs that complete or fail on demand, the real scheduler, PV binder and
garbage collector."""

from __future__ import annotations

import operator_testing
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conftest import FAILS_TO_CONVERT, NODES, controlplane

pytestmark = pytest.mark.e2e

AVX512F = "feature.node.kubernetes.io/cpu-cpuid.AVX512F"


def wait_for(what: str, check, control_plane, timeout: float = 30.0):
    """Poll `check`; on timeout, fail with the components' last log lines."""
    return operator_testing.wait_for(what, check, timeout, interval=0.2, explain=control_plane.logs_tail)


def conversion_job(name: str, source: str) -> dict:
    """Shaped like the operator's conversion Job: `ovllm convert SOURCE --output DIR`."""
    container = {"name": "convert", "image": "ovllm:test", "command": ["ovllm"],
                 "args": ["convert", source, "--output", "/models/out"]}
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {
        "spec": {"restartPolicy": "Never", "containers": [container]}}}}


def job_condition(batch: client.BatchV1Api, namespace: str, name: str) -> str | None:
    conditions = batch.read_namespaced_job(name, namespace).status.conditions or []
    return next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)


def pod(name: str, **spec) -> dict:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "x"}], **spec}}


def test_fake_nodes_are_ready_with_nfd_labels_and_no_taints(kube):
    nodes = {node.metadata.name: node for node in client.CoreV1Api(kube).list_node().items}
    assert set(NODES) <= set(nodes)
    for name, features in NODES.items():
        node = nodes[name]
        assert {k for k in node.metadata.labels if k.startswith("feature.node.kubernetes.io/")} == set(features)
        assert all(node.metadata.labels[label] == "true" for label in features)
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        assert not node.spec.taints
        assert node.status.allocatable == {"cpu": "32", "memory": "128Gi", "pods": "110"}


def test_a_job_completes_and_a_fails_to_convert_job_fails(kube, namespace, control_plane):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    batch.create_namespaced_job(namespace, conversion_job("good", "Qwen/Qwen3-0.6B"))
    batch.create_namespaced_job(namespace, conversion_job("bad", FAILS_TO_CONVERT))
    assert wait_for("Job good to finish", lambda: job_condition(batch, namespace, "good"), control_plane) == "Complete"
    assert wait_for("Job bad to finish", lambda: job_condition(batch, namespace, "bad"), control_plane) == "Failed"
    (failed,) = core.list_namespaced_pod(namespace, label_selector="job-name=bad").items
    terminated = failed.status.container_statuses[0].state.terminated
    assert (failed.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 1, "Error")


def test_required_avx512_affinity_schedules_only_on_avx512_nodes(kube, namespace, control_plane):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": AVX512F, "operator": "In", "values": ["true"]}]}]}}}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "avx512"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "avx512"}}, "template": {
            "metadata": {"labels": {"app": "avx512"}}, "spec": pod("unused", affinity=affinity)["spec"]}}})

    def ready():
        return (apps.read_namespaced_deployment("avx512", namespace).status.ready_replicas or 0) == 6

    wait_for("6 ready replicas", ready, control_plane)
    placed = {p.spec.node_name for p in core.list_namespaced_pod(namespace, label_selector="app=avx512").items}
    assert placed <= {"avx512-a", "amx-a"}


def test_a_pod_that_fits_no_node_stays_pending(kube, namespace, control_plane):
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(namespace, pod("huge", containers=[
        {"name": "main", "image": "x", "resources": {"requests": {"cpu": "64"}}}]))

    def unschedulable():
        conditions = core.read_namespaced_pod("huge", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_for("the scheduler to give up on the pod", unschedulable, control_plane)
    assert core.read_namespaced_pod("huge", namespace).status.phase == "Pending"


def test_a_claim_binds_to_a_manual_hostpath_volume_and_its_pod_runs(kube, namespace, control_plane):
    core = client.CoreV1Api(kube)
    volume = f"pv-{namespace}"
    core.create_persistent_volume({"metadata": {"name": volume}, "spec": {
        "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
        "hostPath": {"path": f"/tmp/{volume}"}}})
    try:
        core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": "cache"}, "spec": {
            "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "1Gi"}}}})
        core.create_namespaced_pod(namespace, pod(
            "user", volumes=[{"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}]))
        wait_for("the claim to bind", lambda: core.read_namespaced_persistent_volume_claim(
            "cache", namespace).status.phase == "Bound", control_plane)
        assert core.read_namespaced_persistent_volume_claim("cache", namespace).spec.volume_name == volume
        wait_for("the pod to run", lambda: core.read_namespaced_pod("user", namespace).status.phase == "Running",
                 control_plane)
    finally:
        core.delete_persistent_volume(volume)


def test_the_garbage_collector_deletes_what_an_object_owns(kube, namespace, control_plane):
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "owned", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})
    core.delete_namespaced_config_map("owner", namespace)

    def gone():
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the owned ConfigMap to be collected", gone, control_plane)


# A Sapphire Rapids Xeon's flags (abridged), and an older server's without AVX-512.
SAPPHIRE_RAPIDS = ("processor\t: 0\nflags\t\t: fpu sse2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw "
                   "avx512vl avx512ifma avx512vbmi avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 "
                   "amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
BROADWELL = "processor\t: 0\nflags\t\t: fpu sse2 avx f16c fma avx2\n"


def test_the_real_nodes_cpu_labels_are_nfds_names_for_cpuinfo_flags():
    from ovllm_operator.isa import ISA_FEATURES, NFD_PREFIX

    realnode = controlplane.realnode
    labels = realnode.cpu_labels(SAPPHIRE_RAPIDS)
    assert set(labels.values()) == {"true"} and all(key.startswith(NFD_PREFIX) for key in labels)
    # Every feature ovllm's ISA levels ask for is labelled on the machine that has it...
    for features in ISA_FEATURES.values():
        assert {NFD_PREFIX + feature for feature in features} <= set(labels)
    assert NFD_PREFIX + "AMXINT8" in labels and NFD_PREFIX + "AVX512BF16" in labels
    # ...and none that it lacks (the first processor's flags count).
    older = realnode.cpu_labels(BROADWELL)
    assert set(older) == {NFD_PREFIX + name for name in ("AVX", "AVX2", "FMA3", "F16C")}
    assert realnode.cpu_labels("") == {}
