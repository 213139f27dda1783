"""What decides whether a child is written: the cached object against the desired one (kube.py),
and the work queue's guarantees (workqueue.py). Pure: no cluster."""

from __future__ import annotations

import asyncio
import copy

from ovllm_operator import builders, kube
from ovllm_operator.builders import Resource
from ovllm_operator.workqueue import WorkQueue

BODY = {"metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"}}}


def deployment() -> dict:
    resource = Resource.from_body(BODY)
    return kube.with_hash(builders.deployment(resource, builders.model_plan(resource)))


def as_served(desired: dict) -> dict:
    """The object as the API server returns it: defaults filled in, omitempty fields dropped,
    quantities in canonical form, status and metadata added."""
    live = copy.deepcopy(desired)
    live["metadata"] |= {"uid": "x", "resourceVersion": "7", "generation": 1, "managedFields": []}
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["resources"]["limits"]["memory"] = "8192Mi"  # the same quantity, another spelling
    for mount in container["volumeMounts"]:
        if mount.get("readOnly") is False:
            del mount["readOnly"]  # omitempty
    live["status"] = {"replicas": 1, "readyReplicas": 1}
    return live


def test_an_object_as_the_api_server_returns_it_needs_no_write():
    desired = deployment()
    assert kube.differs(desired, as_served(desired)) is None


def test_drift_a_new_desired_state_and_absence_need_a_write():
    desired = deployment()
    drifted = as_served(desired)
    drifted["spec"]["template"]["spec"]["containers"][0]["args"].append("--max-num-seqs=1")
    assert kube.differs(desired, drifted) == ".spec.template.spec.containers[0].args"
    edited = as_served(desired)
    edited["spec"]["replicas"] = 5
    assert kube.differs(desired, edited) == ".spec.replicas"
    # A field the desired object no longer has shows only in the hash: applying removes it.
    fewer = copy.deepcopy(desired)
    del fewer["metadata"]["annotations"][kube.APPLIED_HASH]
    fewer["spec"].pop("revisionHistoryLimit")
    assert kube.differs(kube.with_hash(fewer), as_served(desired)) == "a new desired state"
    assert kube.differs(desired, None) == "absent"


def test_quantities_compare_by_value_and_other_strings_exactly():
    assert kube.difference({"memory": "1Gi"}, {"memory": "1024Mi"}) is None
    assert kube.difference({"cpu": "2"}, {"cpu": "2000m"}) is None
    assert kube.difference({"cpu": "2"}, {"cpu": "3"}) == ".cpu"
    assert kube.difference({"image": "a:1"}, {"image": "a:2"}) == ".image"


def test_the_queue_holds_a_key_once_and_one_worker_at_a_time():
    async def scenario() -> list:
        queue, seen = WorkQueue(), []
        for reason in ("resource", "child", "child"):
            queue.add(("ns", "a"), reason)
        queue.add(("ns", "b"), "child")
        key, reason = await queue.get()
        seen.append((key, reason))
        queue.add(("ns", "a"), "child")  # while a worker holds it: queued again after done()
        assert len(queue) == 1  # b only
        seen.append(await queue.get())  # b
        queue.done(("ns", "a"))
        seen.append(await queue.get())  # a again, for the change that came meanwhile
        queue.add_after(("ns", "c"), "recheck", 0.01)
        seen.append(await asyncio.wait_for(queue.get(), 1))
        return seen

    assert asyncio.run(scenario()) == [(("ns", "a"), "resource"), (("ns", "b"), "child"), (("ns", "a"), "child"),
                                       (("ns", "c"), "recheck")]


def test_failures_back_off_doubling_up_to_a_cap():
    async def delays() -> list[float]:
        queue = WorkQueue()
        found = [queue.retry("k", base=1.0, cap=8.0) for _ in range(5)]
        queue.succeeded("k")
        found.append(queue.retry("k", base=1.0, cap=8.0))
        queue.forget("k")
        return found

    assert asyncio.run(delays()) == [1.0, 2.0, 4.0, 8.0, 8.0, 1.0]
