"""The real operator (`ovllm operator`) against a real control plane (tests/operator/conftest.py):
kube-apiserver with the CRD, the scheduler placing pods on kwok's fake NFD-labelled nodes, the Job,
Deployment and garbage collector controllers doing their real work."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from operator_testing import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    conditions,
    create,
    engine_pods,
    resource,
    settled,
    wait_events,
    wait_for,
    wait_phase,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


@pytest.fixture
def operator(control_plane, api, tmp_path):
    """A fresh operator per test (kopf starts in about a second); its log is printed if the test fails."""
    running = Operator(control_plane.kubeconfig, tmp_path / "operator.log")
    yield running
    running.stop()
    print(running.log()[-6000:])


CACHED = {
    "model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "weightFormat": "int4", "servedModelName": "qwen"},
    "replicas": 2,
    "engine": {"image": "ovllm/engine:test", "kvCacheSpaceGiB": 6, "kvCachePrecision": "f16",
               "maxNumBatchedTokens": 1024},
    "cpu": {"minISA": "avx512", "cores": 3},
    "modelCache": {"storageClassName": "manual", "size": "10Gi"},
    "podDisruptionBudget": {"maxUnavailable": 1},
}


def test_a_resource_becomes_a_converted_model_and_a_ready_fleet_on_the_right_cpus(api, operator, namespace):
    create(api, namespace, "qwen", CACHED)
    ready = wait_phase(api, namespace, "qwen", "Ready", 90)
    status = ready["status"]
    assert status["replicas"] == 2 and status["readyReplicas"] == 2
    assert status["endpoint"] == f"http://qwen.{namespace}.svc:8000/v1"
    assert status["selector"] == "app.kubernetes.io/instance=qwen,app.kubernetes.io/name=ovllm-engine"
    assert {t: c["status"] for t, c in conditions(ready).items()} == {
        "ModelReady": "True", "Available": "True", "Progressing": "False", "Degraded": "False"}

    # One conversion Job ran `ovllm convert` into the claim the operator created and the PV binder bound.
    (job,) = api.batch.list_namespaced_job(namespace).items
    assert job.status.succeeded == 1
    convert = job.spec.template.spec.containers[0]
    assert convert.args[:2] == ["convert", "Qwen/Qwen2.5-0.5B-Instruct"] and "int4" in convert.args
    claim = api.core.read_namespaced_persistent_volume_claim("qwen-model-cache", namespace)
    assert claim.status.phase == "Bound"

    # Pods only on nodes with AVX-512 (avx512-a, amx-a), never on the AVX2-only or plain ones.
    pods = engine_pods(api, namespace, "qwen")
    assert len(pods) == 2
    assert {pod.spec.node_name for pod in pods} <= {"avx512-a", "amx-a"}
    for pod in pods:
        (engine,) = pod.spec.containers
        env = {item.name: item.value for item in engine.env}
        assert env == {"VLLM_OPENVINO_KVCACHE_SPACE": "6", "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "f16",
                       "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": "OFF", "OVLLM_INFERENCE_THREADS": "3",
                       "HF_HOME": "/cache/huggingface", "HOME": "/tmp"}
        assert engine.resources.requests == engine.resources.limits == {"cpu": "3", "memory": "9Gi"}
        assert engine.args[1] == convert.args[3]  # serves what the Job wrote
        assert "--max-num-batched-tokens" in engine.args and "1024" in engine.args
        assert pod.status.qos_class == "Guaranteed"

    service = api.core.read_namespaced_service("qwen", namespace)
    assert service.spec.ports[0].port == 8000 and service.spec.selector["app.kubernetes.io/instance"] == "qwen"
    endpoints = wait_for("the Service's endpoints", lambda: [
        address for s in api.core.read_namespaced_endpoints("qwen", namespace).subsets or [] for address in
        s.addresses or []])
    assert len(endpoints) == 2
    assert api.policy.read_namespaced_pod_disruption_budget("qwen", namespace).spec.max_unavailable == 1
    wait_events(api, namespace, "qwen", lambda found: {"Created", "Converting", "Converted", "EnginesReady"} <= {
        reason for _, reason, _ in found})


def test_scale_subresource_and_an_hpa_target(api, operator, namespace, control_plane):
    create(api, namespace, "scaled", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
    wait_phase(api, namespace, "scaled", "Ready")
    kubectl = Path(control_plane.bin_dir) / "kubectl"
    subprocess.run([str(kubectl), "--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, "scale",
                    "ovllmdeployment/scaled", "--replicas=3"], check=True, capture_output=True)
    wait_for("3 ready replicas", lambda: (resource(api, namespace, "scaled").get("status") or {}).get(
        "readyReplicas") == 3)
    assert api.apps.read_namespaced_deployment("scaled", namespace).spec.replicas == 3
    scale = api.custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "scaled")
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/instance=scaled,app.kubernetes.io/name=ovllm-engine"

    # The HPA controller reads the resource's scale subresource (no metrics here, so it scales nothing).
    api.autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, {
        "metadata": {"name": "scaled"},
        "spec": {"scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OVLLMDeployment", "name": "scaled"},
                 "minReplicas": 1, "maxReplicas": 4,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 80}}}]},
    })

    def able_to_scale():
        hpa = api.autoscaling.read_namespaced_horizontal_pod_autoscaler("scaled", namespace)
        return [(c.status, c.reason, c.message) for c in hpa.status.conditions or [] if c.type == "AbleToScale"]

    # Until the controller-manager's discovery learns the CRD (installed moments before on a fresh
    # control plane) its first try may say `no matches for kind`; it tries again every 15 s.
    wait_for("the HPA to read the scale subresource",
             lambda: [(status, reason) for status, reason, _ in able_to_scale()] == [("True", "SucceededGetScale")],
             90, explain=lambda: f"AbleToScale: {able_to_scale()}")


def test_a_pod_spec_change_rolls_the_pods_and_a_service_change_restarts_nothing(api, operator, namespace):
    create(api, namespace, "rolling", {"model": {"imagePath": "/opt/models/qwen"}, "replicas": 2,
                                       "cpu": {"memory": "8Gi"}})
    wait_phase(api, namespace, "rolling", "Ready")
    before = api.apps.read_namespaced_deployment("rolling", namespace)
    old_pods = {pod.metadata.name for pod in engine_pods(api, namespace, "rolling")}

    patch = {"spec": {"service": {"annotations": {"team": "search"}}}}
    api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "rolling", patch)
    wait_for("the Service annotation", lambda: (api.core.read_namespaced_service(
        "rolling", namespace).metadata.annotations or {}).get("team") == "search")
    wait_phase(api, namespace, "rolling", "Ready")
    after = api.apps.read_namespaced_deployment("rolling", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert {pod.metadata.name for pod in engine_pods(api, namespace, "rolling")} == old_pods

    patch = {"spec": {"engine": {"kvCacheSpaceGiB": 5}}}
    api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "rolling", patch)

    def rolled():
        pods = [p for p in engine_pods(api, namespace, "rolling") if p.metadata.deletion_timestamp is None]
        fresh = [p for p in pods if p.metadata.name not in old_pods]
        spaces = {next(e.value for e in p.spec.containers[0].env if e.name == "VLLM_OPENVINO_KVCACHE_SPACE")
                  for p in fresh}
        return len(fresh) == 2 and len(pods) == 2 and spaces == {"5"}

    wait_for("the pods to roll", rolled, 60)
    wait_phase(api, namespace, "rolling", "Ready")


def test_deleting_the_resource_garbage_collects_its_children(api, operator, namespace):
    create(api, namespace, "doomed", {**CACHED, "replicas": 1, "router": {"enabled": True}})
    wait_phase(api, namespace, "doomed", "Ready", 90)
    ours = "app.kubernetes.io/instance=doomed"
    assert api.core.list_namespaced_service_account(namespace, label_selector=ours).items  # the router's
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")

    def gone():
        left = [kind for kind, items in (
            ("Deployment", api.apps.list_namespaced_deployment(namespace).items),
            ("Service", api.core.list_namespaced_service(namespace).items),
            ("Job", api.batch.list_namespaced_job(namespace).items),
            ("PersistentVolumeClaim", api.core.list_namespaced_persistent_volume_claim(namespace).items),
            ("PodDisruptionBudget", api.policy.list_namespaced_pod_disruption_budget(namespace).items),
            ("ServiceAccount", api.core.list_namespaced_service_account(namespace, label_selector=ours).items),
            ("Role", api.rbac.list_namespaced_role(namespace).items),
            ("RoleBinding", api.rbac.list_namespaced_role_binding(namespace).items),
        ) if items]
        return not left or None

    wait_for("the garbage collector to delete every child", gone, 90)


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "engine": {"tensorParallelSize": 2}},
     "tensor parallelism is not supported"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "engine": {"extraArgs": ["--pipeline-parallel-size=2"]}},
     "tensor and pipeline parallelism are not supported"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "imagePath": "/m"}}, "set exactly one source"),
    ({"model": {"imagePath": "/m", "ggufFile": "m.gguf"}}, "spec.model.ggufFile names a file in a hub repo"),
    ({"model": {"hub": "Qwen/Qwen2.5-7B-Instruct-GGUF", "ggufFile": "../etc/passwd.gguf"}}, "spec.model.ggufFile"),
    ({"model": {"pvc": {"claimName": "w", "path": "a.gguf"}, "ggufFile": "b.gguf"}},
     "spec.model.pvc.path already names a GGUF file"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "cpu": {"minISA": "sse4"}}, "spec.cpu.minISA"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": -1}, "spec.replicas"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "engine": {"kvCachePrecision": "int3"}},
     "spec.engine.kvCachePrecision"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"},
      "engine": {"enableChunkedPrefill": False, "maxModelLen": 4096, "maxNumBatchedTokens": 512}},
     "spec.engine.maxNumBatchedTokens must be at least spec.engine.maxModelLen"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"},
      "engine": {"extraEnv": [{"name": "VLLM_OPENVINO_KVCACHE_SPACE", "value": "1"}]}},
     "spec.engine.extraEnv"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "autoscaling": {"minReplicas": 4, "maxReplicas": 2,
                                                                       "target": 8}},
     "spec.autoscaling.maxReplicas must be at least minReplicas"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "autoscaling": {"maxReplicas": 2, "metric": "kvCacheUsage",
                                                                       "target": 80}},
     "a kvCacheUsage target is a fraction"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "autoscaling": {"maxReplicas": 2}},
     "spec.autoscaling.target: Required value"),
    ({"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "router": {"enabled": True, "strategy": "random"}},
     "spec.router.strategy"),
])
def test_the_api_server_rejects_invalid_specs_naming_the_field(api, namespace, spec, message):
    with pytest.raises(ApiException) as caught:
        create(api, namespace, "invalid", spec)
    assert caught.value.status == 422
    assert message in json.loads(caught.value.body)["message"]


def test_a_spec_only_the_operator_can_refuse_is_reported_and_blocks_nothing(api, operator, namespace):
    create(api, namespace, "too-small", {"model": {"imagePath": "/opt/models/qwen"},
                                         "engine": {"kvCacheSpaceGiB": 16}, "cpu": {"memory": "4Gi"}})
    create(api, namespace, "fine", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
    failed = wait_phase(api, namespace, "too-small", "Failed")
    degraded = conditions(failed)["Degraded"]
    assert degraded["reason"] == "InvalidSpec" and "spec.cpu.memory: 4Gi" in degraded["message"]
    wait_events(api, namespace, "too-small", lambda found: ("Warning", "InvalidSpec") in {e[:2] for e in found})
    with pytest.raises(ApiException):
        api.apps.read_namespaced_deployment("too-small", namespace)
    wait_phase(api, namespace, "fine", "Ready")
    assert operator.process.poll() is None


def test_a_failed_conversion_shows_the_jobs_reason(api, operator, namespace):
    create(api, namespace, "broken", {"model": {"hub": "ovllm-test/fails-to-convert", "parametersBillions": 0.5},
                                      "modelCache": {"storageClassName": "manual"}})
    failed = wait_phase(api, namespace, "broken", "Failed", 120)
    model = conditions(failed)["ModelReady"]
    assert (model["status"], model["reason"]) == ("False", "ConversionFailed")
    assert "BackoffLimitExceeded" in model["message"]
    wait_events(api, namespace, "broken", lambda found: ("Warning", "ConversionFailed") in {e[:2] for e in found})
    with pytest.raises(ApiException):
        api.apps.read_namespaced_deployment("broken", namespace)


def test_a_missing_api_key_secret_is_reported_until_it_exists(api, operator, namespace):
    create(api, namespace, "keyed", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"},
                                     "apiKeySecretRef": {"name": "keys"}})
    obj = wait_for("MissingReference", lambda: (lambda o: conditions(o).get("Degraded", {}).get("reason") ==
                                                "MissingReference" and o)(resource(api, namespace, "keyed")))
    assert "Secret keys does not exist" in conditions(obj)["Degraded"]["message"]
    api.core.create_namespaced_secret(namespace, {"metadata": {"name": "keys"}, "stringData": {"api-key": "s3cret"}})
    wait_phase(api, namespace, "keyed", "Ready")
    (engine,) = api.apps.read_namespaced_deployment("keyed", namespace).spec.template.spec.containers
    (key,) = [e for e in engine.env if e.name == "VLLM_API_KEY"]
    assert (key.value_from.secret_key_ref.name, key.value_from.secret_key_ref.key) == ("keys", "api-key")


def test_a_service_monitor_once_its_crd_exists(api, operator, namespace):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
           "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                    "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    try:
        api.ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    create(api, namespace, "watched", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"},
                                       "metrics": {"serviceMonitorLabels": {"release": "prometheus"}}})

    def monitor():
        return api.custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "servicemonitors",
                                                       "watched")

    found = wait_for("the ServiceMonitor", monitor, 60)
    assert found["metadata"]["labels"]["release"] == "prometheus"
    assert found["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert found["metadata"]["ownerReferences"][0]["kind"] == "OVLLMDeployment"


def test_restarting_the_operator_changes_nothing_that_was_right(api, operator, namespace, control_plane, tmp_path):
    create(api, namespace, "steady", {**CACHED, "replicas": 1})
    wait_phase(api, namespace, "steady", "Ready", 90)
    # The last status write has landed once the status stays put for a while.
    wait_for("a settled status", lambda: settled(api, namespace, "steady"), 30)

    def versions() -> dict:
        found = {}
        for kind, items in (("Deployment", api.apps.list_namespaced_deployment(namespace).items),
                            ("Service", api.core.list_namespaced_service(namespace).items),
                            ("Job", api.batch.list_namespaced_job(namespace).items),
                            ("PVC", api.core.list_namespaced_persistent_volume_claim(namespace).items),
                            ("PDB", api.policy.list_namespaced_pod_disruption_budget(namespace).items),
                            ("Pod", engine_pods(api, namespace, "steady"))):
            for item in items:
                found[f"{kind}/{item.metadata.name}"] = item.metadata.resource_version
        found["status"] = json.dumps(resource(api, namespace, "steady")["status"], sort_keys=True)
        return found

    before = versions()
    operator.stop()
    # A resync every second: the restarted operator reconciles at start and then a few times more.
    second = Operator(control_plane.kubeconfig, tmp_path / "operator-2.log", "--resync-seconds", "1")
    try:
        wait_for("the restarted operator to reconcile at start and resync",
                 lambda: second.metric("ovllm_operator_reconciles_total", trigger="resync", result="ok") >= 3, 60)
        assert versions() == before
        assert second.metric("ovllm_operator_child_changes_total") == 0
        assert second.process.poll() is None
    finally:
        second.stop()


def test_liveness_json_logs_and_one_active_replica(api, operator, control_plane, namespace, tmp_path):
    def alive():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:  # not listening yet
            return False

    wait_for("the liveness endpoint", alive, 30)
    records = [json.loads(line) for line in operator.log().splitlines() if line.strip()]
    assert records and all("message" in record for record in records)

    # A second replica with a lower priority waits while the first works, and takes over when it stops.
    standby = Operator(control_plane.kubeconfig, tmp_path / "standby.log", "--priority", "-1",
                       peering=operator.peering)
    try:
        wait_for("the standby to start", lambda: "Initial authentication has finished" in standby.log(), 30)
        create(api, namespace, "first", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
        wait_phase(api, namespace, "first", "Ready")
        first = f"Deployment {namespace}/first created"
        assert first in operator.log() and f"{namespace}/first" not in standby.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
            samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                       for family in text_string_to_metric_families(response.read().decode())
                       for sample in family.samples}
        assert samples[("ovllm_operator_reconciles_total", (("result", "ok"), ("trigger", "resource")))] >= 1
        assert samples[("ovllm_operator_child_changes_total", (("action", "created"), ("kind", "Deployment")))] >= 1
        assert samples[("ovllm_operator_reconcile_duration_seconds_count", ())] >= 1
        operator.stop()
        wait_for("the standby to resume", lambda: "Resuming operations after the pause" in standby.log(), 60)
        create(api, namespace, "second", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
        wait_phase(api, namespace, "second", "Ready")
        assert f"Deployment {namespace}/second created" in standby.log()
    finally:
        standby.stop()


def test_no_node_with_the_isa_means_pending_pods_and_a_status_that_says_why(api, operator, namespace):
    # plain-a has no AVX2: with it as the only allowed node, nothing may run.
    create(api, namespace, "nowhere", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"},
                                       "nodeSelector": {"kubernetes.io/hostname": "plain-a"}})

    def degraded():
        obj = resource(api, namespace, "nowhere")
        return conditions(obj).get("Degraded", {}).get("reason") == "Unschedulable" and obj

    obj = wait_for("an Unschedulable status", degraded, 60)
    assert "node affinity" in conditions(obj)["Degraded"]["message"]
    assert obj["status"]["phase"] == "Degraded"
    assert all(pod.spec.node_name is None for pod in engine_pods(api, namespace, "nowhere"))


def test_a_namespace_scoped_operator_leaves_other_namespaces_alone(api, control_plane, namespace, tmp_path):
    other = f"{namespace}-other"
    api.core.create_namespace({"metadata": {"name": other}})
    scoped = Operator(control_plane.kubeconfig, tmp_path / "scoped.log", "--namespace", namespace,
                      "--resync-seconds", "1")
    try:
        create(api, other, "outside", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
        create(api, namespace, "inside", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}})
        wait_phase(api, namespace, "inside", "Ready")
        # Its peering object is a namespaced KopfPeering, made by the operator itself.
        api.custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", scoped.peering)
        time.sleep(3)  # a few resyncs
        assert "status" not in resource(api, other, "outside")
        with pytest.raises(ApiException):
            api.apps.read_namespaced_deployment("outside", other)
    finally:
        scoped.stop()
        api.core.delete_namespace(other)
