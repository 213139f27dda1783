"""The resource's status from what the operator observed: pure, so every state is unit-tested.

Conditions follow Kubernetes conventions: a condition's lastTransitionTime changes only when its
status does; reasons are CamelCase words; messages are sentences for a person.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

CONDITION_TYPES = ("ModelReady", "Available", "Progressing", "Degraded")


@dataclass(frozen=True)
class JobState:
    name: str
    state: str  # "running", "succeeded" or "failed"
    reason: str = ""
    message: str = ""


@dataclass
class Observed:
    """What one reconcile saw; the input of compute()."""

    generation: int
    spec_error: str | None = None
    model: str = ""
    model_path: str | None = None  # what the Deployment serves
    wanted_path: str | None = None  # what the spec asks for (differs while converting)
    conversion: str = "image"  # "image" (served as it is), "pod" (each pod converts) or "job"
    job: JobState | None = None
    replicas: int = 0  # spec.replicas
    deployment: dict | None = None  # the Deployment as read back
    endpoint: str = ""
    selector: str = ""
    problems: list[str] = field(default_factory=list)  # e.g. a missing Secret
    job_pods_waiting: list[str] = field(default_factory=list)  # the scheduler's reasons
    engine_pods_waiting: list[str] = field(default_factory=list)
    router: dict | None = None  # the router's Deployment as read back, when spec.router is enabled


def job_state(job: dict) -> JobState:
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition["type"] == "Complete":
            return JobState(name, "succeeded")
        if condition["type"] == "Failed":
            return JobState(name, "failed", condition.get("reason", ""), condition.get("message", ""))
    return JobState(name, "running")


def _condition(type_: str, status: bool | None, reason: str, message: str) -> dict:
    return {"type": type_, "status": {True: "True", False: "False", None: "Unknown"}[status],
            "reason": reason, "message": message}


def _deployment_numbers(deployment: dict | None) -> dict:
    status = (deployment or {}).get("status") or {}
    return {key: status.get(key) or 0 for key in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")}


def _deployment_condition(deployment: dict | None, type_: str) -> dict:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition
    return {}


def conditions(observed: Observed) -> list[dict]:
    if observed.spec_error:
        message = f"invalid spec: {observed.spec_error}"
        return [_condition("ModelReady", None, "InvalidSpec", message),
                _condition("Available", False, "InvalidSpec", message),
                _condition("Progressing", False, "InvalidSpec", message),
                _condition("Degraded", True, "InvalidSpec", message)]

    numbers = _deployment_numbers(observed.deployment)
    deployment = observed.deployment
    ready, wanted = numbers["readyReplicas"], observed.replicas
    generation_seen = deployment is not None and (deployment.get("status") or {}).get(
        "observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    rolled = generation_seen and numbers["updatedReplicas"] == wanted and numbers["replicas"] == wanted
    job = observed.job

    if observed.conversion == "image":
        model = _condition("ModelReady", True, "ServedAsIs",
                           f"{observed.model} is served as it is (OpenVINO IR, or a GGUF file the engine reads)")
    elif observed.conversion == "pod":
        model = (_condition("ModelReady", True, "LoadedInPods", f"{observed.model} is loaded by {ready} pod(s)")
                 if ready else _condition("ModelReady", None, "ConvertingInPods",
                                          f"each pod downloads and converts {observed.model} itself "
                                          "(no spec.modelCache)"))
    elif job is None or job.state == "running":
        waiting = "; ".join(observed.job_pods_waiting)
        model = _condition("ModelReady", False, "Converting",
                           f"Job {job.name if job else ''} is converting {observed.model}".replace("  ", " ")
                           + (f" ({waiting})" if waiting else ""))
    elif job.state == "failed":
        model = _condition("ModelReady", False, "ConversionFailed",
                           f"Job {job.name} failed ({job.reason}): {job.message}; delete the Job to retry")
    else:
        model = _condition("ModelReady", True, "Converted", f"{observed.model} is converted in {observed.wanted_path}")

    if deployment is None:
        available = _condition("Available", False, "NoEnginePods", "no engine pods yet: the model is not ready")
    elif wanted == 0:
        available = _condition("Available", False, "ScaledToZero", "spec.replicas is 0")
    elif ready >= 1 and observed.router is not None and not _deployment_numbers(observed.router)["readyReplicas"]:
        available = _condition("Available", False, "NoReadyRouter",
                               f"{ready} of {wanted} engine pod(s) ready, but no router pod is ready yet")
    elif ready >= 1:
        through = " behind the router" if observed.router is not None else ""
        available = _condition("Available", True, "EnginesReady", f"{ready} of {wanted} engine pod(s) ready{through}")
    else:
        waiting = "; ".join(observed.engine_pods_waiting[:3])
        available = _condition("Available", False, "NoReadyEngines", f"0 of {wanted} engine pod(s) ready"
                               + (f" ({waiting})" if waiting else ""))

    converting = model["reason"] == "Converting"
    if converting:
        progressing = _condition("Progressing", True, "Converting", model["message"])
    elif deployment is not None and not (rolled and ready == wanted):
        progressing = _condition("Progressing", True, "RollingOut",
                                 f"{numbers['updatedReplicas']} of {wanted} pod(s) updated, {ready} ready")
    elif deployment is None:
        progressing = _condition("Progressing", False, "WaitingForModel", "the engine pods wait for the model")
    else:
        progressing = _condition("Progressing", False, "UpToDate", f"all {wanted} pod(s) updated and ready")

    deadline = _deployment_condition(deployment, "Progressing")
    if model["reason"] == "ConversionFailed":
        degraded = _condition("Degraded", True, "ConversionFailed", model["message"])
    elif deadline.get("reason") == "ProgressDeadlineExceeded":
        degraded = _condition("Degraded", True, "ProgressDeadlineExceeded", deadline.get("message", ""))
    elif observed.problems:
        degraded = _condition("Degraded", True, "MissingReference", "; ".join(observed.problems))
    elif observed.engine_pods_waiting:
        degraded = _condition("Degraded", True, "Unschedulable", "; ".join(observed.engine_pods_waiting[:3]))
    else:
        degraded = _condition("Degraded", False, "AsExpected", "nothing is wrong")
    return [model, available, progressing, degraded]


def phase(conds: list[dict]) -> str:
    by_type = {c["type"]: c for c in conds}
    if by_type["Degraded"]["reason"] == "InvalidSpec":
        return "Failed"
    if by_type["Degraded"]["status"] == "True":
        # Failed: it cannot get better without a person. Degraded: serving less, or waiting for a
        # Secret or a node that may still come.
        fatal = by_type["Degraded"]["reason"] in ("ConversionFailed", "ProgressDeadlineExceeded")
        return "Failed" if fatal and by_type["Available"]["status"] != "True" else "Degraded"
    if by_type["Progressing"]["reason"] == "Converting" and by_type["Available"]["status"] != "True":
        return "Converting"
    if by_type["Progressing"]["status"] == "True":
        return "Progressing"
    if by_type["Available"]["status"] == "True" or by_type["Available"]["reason"] == "ScaledToZero":
        return "Ready"
    return "Pending"


def compute(observed: Observed, previous: dict | None, now: datetime.datetime | None = None) -> dict:
    """The new status; conditions keep their lastTransitionTime unless their status changed."""
    now = now or datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    conds = conditions(observed)
    for condition in conds:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"]
        condition["lastTransitionTime"] = old.get("lastTransitionTime", stamp) if same else stamp
        condition["observedGeneration"] = observed.generation
    numbers = _deployment_numbers(observed.deployment)
    status = {
        "observedGeneration": observed.generation,
        "phase": phase(conds),
        "model": observed.model,
        "replicas": numbers["replicas"],
        "readyReplicas": numbers["readyReplicas"],
        "selector": observed.selector,
        "endpoint": observed.endpoint,
        "conditions": conds,
    }
    if observed.model_path:
        status["modelPath"] = observed.model_path
    # None removes the key (a merge patch) once the router is turned off.
    router = _deployment_numbers(observed.router) if observed.router is not None else None
    status["router"] = {"replicas": router["replicas"], "readyReplicas": router["readyReplicas"]} if router else None
    return status


def transitions(previous: dict | None, current: dict) -> list[dict]:
    """Conditions whose status or reason changed: each becomes an Event."""
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    changed = []
    for condition in current["conditions"]:
        old = before.get(condition["type"], {})
        if (old.get("status"), old.get("reason")) != (condition["status"], condition["reason"]):
            changed.append(condition)
    return changed


def is_warning(condition: dict) -> bool:
    return (condition["type"] == "Degraded" and condition["status"] == "True") or condition["reason"] in (
        "ConversionFailed",)
