"""Status from observations: phases, conditions and their transition times, without a cluster."""

from __future__ import annotations

import datetime

from ovllm_operator import status
from ovllm_operator.status import JobState, Observed

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def deployment(replicas=2, ready=2, updated=2, generation=1, observed_generation=1, progressing=None) -> dict:
    conditions = [progressing] if progressing else []
    return {"metadata": {"generation": generation},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
                       "observedGeneration": observed_generation, "conditions": conditions}}


def observed(**fields) -> Observed:
    return Observed(generation=3, model="Qwen/Qwen2.5-0.5B-Instruct", replicas=2, endpoint="http://x.y.svc:8000/v1",
                    selector="a=b", **fields)


def by_type(result: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def test_ready_when_every_replica_is_ready():
    result = status.compute(observed(conversion="job", job=JobState("j", "succeeded"), deployment=deployment()), None)
    assert result["phase"] == "Ready"
    assert (result["replicas"], result["readyReplicas"], result["observedGeneration"]) == (2, 2, 3)
    assert by_type(result) == {"ModelReady": ("True", "Converted"), "Available": ("True", "EnginesReady"),
                               "Progressing": ("False", "UpToDate"), "Degraded": ("False", "AsExpected")}


def test_converting_before_any_pod():
    result = status.compute(observed(conversion="job", job=JobState("chat-convert-1", "running")), None)
    assert result["phase"] == "Converting"
    assert by_type(result)["ModelReady"] == ("False", "Converting")
    assert "chat-convert-1" in result["conditions"][0]["message"]


def test_failed_conversion_shows_the_jobs_reason():
    job = JobState("chat-convert-1", "failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    result = status.compute(observed(conversion="job", job=job), None)
    assert result["phase"] == "Failed"
    conditions = {c["type"]: c for c in result["conditions"]}
    assert conditions["ModelReady"]["reason"] == "ConversionFailed"
    assert "BackoffLimitExceeded" in conditions["Degraded"]["message"]
    # With the last model still served, the resource is degraded, not failed.
    serving = status.compute(observed(conversion="job", job=job, deployment=deployment()), None)
    assert serving["phase"] == "Degraded"


def test_rolling_out_while_pods_are_updated():
    result = status.compute(observed(conversion="image", deployment=deployment(ready=1, updated=1)), None)
    assert result["phase"] == "Progressing"
    assert by_type(result)["Progressing"] == ("True", "RollingOut")
    assert by_type(result)["Available"] == ("True", "EnginesReady")
    stale = status.compute(observed(conversion="image", deployment=deployment(generation=2)), None)
    assert stale["phase"] == "Progressing"


def test_progress_deadline_is_degraded():
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    result = status.compute(observed(conversion="image", deployment=deployment(ready=0, progressing=stuck)), None)
    assert by_type(result)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    assert result["phase"] == "Failed"


def test_invalid_spec_is_reported():
    result = status.compute(observed(spec_error="spec.cpu.memory: 1Gi cannot hold"), None)
    assert result["phase"] == "Failed"
    assert by_type(result)["Degraded"] == ("True", "InvalidSpec")
    assert "spec.cpu.memory" in result["conditions"][3]["message"]


def test_missing_secret_is_degraded():
    result = status.compute(observed(conversion="image", deployment=deployment(),
                                     problems=["spec.apiKeySecretRef: Secret keys does not exist"]), None)
    assert by_type(result)["Degraded"] == ("True", "MissingReference")
    assert result["phase"] == "Degraded"


def test_unschedulable_pods_say_why():
    waiting = ["pod p cannot be scheduled: 0/5 nodes are available: 5 node(s) didn't match Pod's node affinity"]
    result = status.compute(observed(conversion="image", deployment=deployment(ready=0), engine_pods_waiting=waiting),
                            None)
    conds = {c["type"]: c for c in result["conditions"]}
    assert conds["Degraded"]["reason"] == "Unschedulable" and "node affinity" in conds["Degraded"]["message"]
    assert "node affinity" in conds["Available"]["message"]
    assert result["phase"] == "Degraded"
    converting = status.compute(observed(conversion="job", job=JobState("j", "running"),
                                         job_pods_waiting=["pod j-1 cannot be scheduled: unbound claim"]), None)
    assert "unbound claim" in converting["conditions"][0]["message"]


def test_scaled_to_zero_is_ready():
    result = status.compute(Observed(generation=1, replicas=0, conversion="image", deployment=deployment(0, 0, 0)),
                            None)
    assert result["phase"] == "Ready" and by_type(result)["Available"] == ("False", "ScaledToZero")


def test_transition_time_moves_only_when_status_changes():
    first = status.compute(observed(conversion="image", deployment=deployment(ready=1, updated=1)), None, T0)
    second = status.compute(observed(conversion="image", deployment=deployment()), first, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Available"] == "2026-01-01T00:00:00Z"  # True before and after
    assert times["Progressing"] == "2026-01-01T00:05:00Z"  # True -> False
    changed = [c["type"] for c in status.transitions(first, second)]
    assert changed == ["Progressing"]
    assert status.transitions(second, status.compute(observed(conversion="image", deployment=deployment()),
                                                     second, T1)) == []


def test_job_state_reads_job_conditions():
    job = {"metadata": {"name": "j"}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]}}
    assert status.job_state(job) == JobState("j", "failed", "BackoffLimitExceeded", "m")
    assert status.job_state({"metadata": {"name": "j"}, "status": {}}).state == "running"
    done = {"metadata": {"name": "j"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert status.job_state(done).state == "succeeded"


def test_with_a_router_the_fleet_is_available_only_once_a_router_pod_is_ready():
    waiting = status.compute(observed(deployment=deployment(), router=deployment(replicas=1, ready=0)), None)
    assert by_type(waiting)["Available"] == ("False", "NoReadyRouter")
    assert waiting["router"] == {"replicas": 1, "readyReplicas": 0}
    ready = status.compute(observed(deployment=deployment(), router=deployment(replicas=1, ready=1)), None)
    assert by_type(ready)["Available"] == ("True", "EnginesReady") and ready["phase"] == "Ready"
    # Without a router the key is null, which the status patch turns into its removal.
    assert status.compute(observed(deployment=deployment()), None)["router"] is None
