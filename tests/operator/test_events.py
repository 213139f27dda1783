"""The operator reacts to events, not to a clock: with the safety resync an hour away, a child
deleted or edited by hand, a pod going unready, a conversion Job finishing or failing, each shows
in the resource's children and status at once (within the polling timeouts here, far below the
resync). And an idle resource costs no API requests: the operator makes no write and no read.

Real control plane (hack/controlplane.py): the Deployment, ReplicaSet, Job and garbage collector
controllers and kwok's pods do their real work."""

from __future__ import annotations

import time

import pytest
from kubernetes.client.exceptions import ApiException
from operator_testing import Operator, conditions, create, resource, settled, wait_for, wait_phase

pytestmark = pytest.mark.e2e

RESYNC_SECONDS = 3600  # never within a test: whatever happens below happens through events
SMALL = {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}}
REACTION = 20  # seconds a test waits for a reaction (events arrive in well under a second)


@pytest.fixture
def operator(control_plane, api, tmp_path):
    running = Operator(control_plane.kubeconfig, tmp_path / "operator.log", "--resync-seconds",
                       str(RESYNC_SECONDS))
    yield running
    running.stop()
    print(running.log()[-6000:])


def ready_status(api, namespace: str, name: str) -> dict:
    return (resource(api, namespace, name).get("status") or {})


def test_a_deployment_deleted_by_hand_is_made_again(api, operator, namespace):
    create(api, namespace, "chat", SMALL)
    wait_phase(api, namespace, "chat", "Ready")
    old = api.apps.read_namespaced_deployment("chat", namespace).metadata.uid
    api.apps.delete_namespaced_deployment("chat", namespace)

    def remade():
        return api.apps.read_namespaced_deployment("chat", namespace).metadata.uid != old

    wait_for("a new Deployment", remade, REACTION)
    wait_phase(api, namespace, "chat", "Ready")
    assert operator.metric("ovllm_operator_reconciles_total", trigger="resync") == 0


def test_a_service_deleted_and_a_deployment_edited_by_hand_are_set_back(api, operator, namespace):
    create(api, namespace, "chat", SMALL)
    wait_phase(api, namespace, "chat", "Ready")
    api.core.delete_namespaced_service("chat", namespace)
    wait_for("the Service again", lambda: api.core.read_namespaced_service("chat", namespace), REACTION)

    # Someone edits a field the operator manages (the engine's arguments): it is set back.
    deployment = api.apps.read_namespaced_deployment("chat", namespace)
    args = deployment.spec.template.spec.containers[0].args
    api.apps.patch_namespaced_deployment("chat", namespace, [
        {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": [*args, "--max-num-seqs", "1"]}])
    wait_for("the engine's arguments set back", lambda: api.apps.read_namespaced_deployment(
        "chat", namespace).spec.template.spec.containers[0].args == args, REACTION)
    assert operator.metric("ovllm_operator_child_changes_total", kind="Deployment", action="updated") >= 1
    assert operator.metric("ovllm_operator_reconciles_total", trigger="resync") == 0


def test_a_pod_going_unready_and_ready_shows_in_status(api, operator, namespace):
    create(api, namespace, "chat", {**SMALL, "replicas": 2})
    wait_phase(api, namespace, "chat", "Ready")
    selector = "app.kubernetes.io/instance=chat,app.kubernetes.io/name=ovllm-engine"
    pod = api.core.list_namespaced_pod(namespace, label_selector=selector).items[0]
    # What a kubelet reports when a readiness probe fails (kwok leaves a pod's status alone once Running).
    unready = [{"type": "Ready", "status": "False", "reason": "ReadinessProbeFailed"},
               {"type": "ContainersReady", "status": "False", "reason": "ReadinessProbeFailed"}]
    api.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"conditions": unready}})
    wait_for("readyReplicas 1 in status", lambda: ready_status(api, namespace, "chat").get("readyReplicas") == 1,
             REACTION, explain=lambda: ready_status(api, namespace, "chat"))
    ready = [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]
    api.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"conditions": ready}})
    wait_for("readyReplicas 2 in status", lambda: ready_status(api, namespace, "chat").get("readyReplicas") == 2,
             REACTION, explain=lambda: ready_status(api, namespace, "chat"))
    assert operator.metric("ovllm_operator_reconciles_total", trigger="resync") == 0


def test_a_conversion_job_succeeding_or_failing_shows_in_status(api, operator, namespace):
    cache = {"storageClassName": "manual", "size": "10Gi"}
    create(api, namespace, "converted", {"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct", "weightFormat": "int4"},
                                         "modelCache": cache, "cpu": {"memory": "8Gi"}})
    create(api, namespace, "broken", {"model": {"hub": "ovllm-test/fails-to-convert", "parametersBillions": 0.5},
                                      "modelCache": {**cache, "claimName": "broken-cache"}})
    done = wait_phase(api, namespace, "converted", "Ready", 90)
    assert conditions(done)["ModelReady"]["reason"] == "Converted"
    failed = wait_phase(api, namespace, "broken", "Failed", 120)
    assert conditions(failed)["ModelReady"]["reason"] == "ConversionFailed"
    assert operator.metric("ovllm_operator_reconciles_total", trigger="resync") == 0


def test_an_idle_resource_costs_no_requests(api, operator, namespace):
    """Once Ready and settled, more events about it (its own status, a no-op label on a child) are
    reconciled from the cache: no child is written, no status is patched."""
    create(api, namespace, "quiet", SMALL)
    wait_phase(api, namespace, "quiet", "Ready")
    wait_for("a settled status", lambda: settled(api, namespace, "quiet"), 30)
    before = operator.metric("ovllm_operator_reconciles_total", result="ok")
    writes = operator.metric("ovllm_operator_child_changes_total")
    # An event about a child that changes nothing the operator manages: reconciled, nothing written.
    api.apps.patch_namespaced_deployment("quiet", namespace, {"metadata": {"labels": {"team": "search"}}})
    wait_for("a reconcile of the event", lambda: operator.metric(
        "ovllm_operator_reconciles_total", result="ok") > before, REACTION)
    assert settled(api, namespace, "quiet")
    assert operator.metric("ovllm_operator_child_changes_total") == writes
    assert api.apps.read_namespaced_deployment("quiet", namespace).metadata.labels["team"] == "search"


def test_a_resource_deleted_takes_its_children_and_leaves_no_work(api, operator, namespace):
    create(api, namespace, "gone", SMALL)
    wait_phase(api, namespace, "gone", "Ready")
    # Service and Deployment, and a ServiceMonitor where an earlier test installed its CRD
    created = operator.metric("ovllm_operator_child_changes_total", action="created")
    assert created >= 2
    api.custom.delete_namespaced_custom_object("ovllm.io", "v1alpha1", namespace, "ovllmdeployments", "gone")

    def gone(read) -> bool:
        try:
            read("gone", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    def collected() -> bool:
        return gone(api.apps.read_namespaced_deployment) and gone(api.core.read_namespaced_service)

    wait_for("the garbage collector to delete the children", collected, 60)
    # Their deletions are events too: they find no resource and make nothing again.
    time.sleep(2)
    assert collected()
    assert operator.metric("ovllm_operator_child_changes_total", action="created") == created
