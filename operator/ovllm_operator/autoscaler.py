"""One autoscaling step of one OVLLMDeployment: given the load its ready engine pods reported on
their own /metrics (engine_metrics.py; controller.py reads every resource's pods at once), decide
(autoscaling.py), write spec.replicas through the scale subresource, and say what it decided in
status.autoscaling and in Events.

The scale subresource is the one door for every writer of replicas (`kubectl scale`, an HPA, this
autoscaler); the spec change it makes runs the ordinary reconcile, which resizes the Deployment.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping

from ovllm_operator import autoscaling, engine_metrics, metrics, names
from ovllm_operator.kube import Kube
from ovllm_operator.spec import OVLLMDeploymentSpec

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]
RECOMMENDER = autoscaling.Recommender()  # recommendations of the stabilisation windows, per resource
READ_TIMEOUT = 2.0  # seconds for one pod's /metrics: a slow pod must not stall the others' step


def metrics_targets(pods: list[dict]) -> list[tuple[str, str]]:
    """(pod, /metrics URL) of each ready engine pod that is not going away."""
    targets = []
    for pod in pods:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        address = status.get("podIP")
        if ready and address and not pod["metadata"].get("deletionTimestamp"):
            host = f"[{address}]" if ":" in address else address
            targets.append((pod["metadata"]["name"], f"http://{host}:{names.ENGINE_PORT}/metrics"))
    return targets


def policy_of(spec) -> autoscaling.Policy:
    scaling = spec.autoscaling
    return autoscaling.Policy(min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
                              metric=scaling.metric, target=scaling.target,
                              scale_up_window=scaling.scale_up_stabilization_seconds,
                              scale_down_window=scaling.scale_down_stabilization_seconds)


def step(body: Mapping, spec: OVLLMDeploymentSpec, readings: list[engine_metrics.Reading], kube: Kube,
         emit: Emit, now: float | None = None) -> dict | None:
    """Scale one resource if its pods' `readings` say so; return its new status.autoscaling (None:
    it has none, autoscaling being off)."""
    metadata = body["metadata"]
    name, namespace, uid = metadata["name"], metadata["namespace"], metadata["uid"]
    previous = dict((body.get("status") or {}).get("autoscaling") or {})
    if not spec.autoscaled:
        RECOMMENDER.forget(uid)
        return None
    policy = policy_of(spec)
    current = spec.replicas
    decision = RECOMMENDER.decide(uid, policy, current, readings, time.monotonic() if now is None else now)
    metrics.AUTOSCALE_STEPS.labels(decision.reason).inc()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = {
        "metric": policy.metric,
        "target": policy.target,
        "currentAverage": None if decision.value is None else round(decision.value, 3),
        "readablePods": decision.readable,
        "unreadablePods": decision.unreadable,
        "desiredReplicas": decision.desired,
        "lastDecisionReason": decision.reason,
        "lastDecisionMessage": decision.message,
        "lastDecisionTime": previous.get("lastDecisionTime") or stamp,
        "lastScaleTime": previous.get("lastScaleTime"),
    }
    if (previous.get("lastDecisionReason"), previous.get("desiredReplicas")) != (decision.reason, decision.desired):
        new["lastDecisionTime"] = stamp
        log.info("%s/%s autoscaling: %s: %s", namespace, name, decision.reason, decision.message)
        if decision.reason == "MetricUnavailable":
            emit("Warning", "MetricUnavailable", decision.message)
    if decision.desired != current:
        kube.scale(namespace, name, decision.desired)
        direction = "ScaledUp" if decision.desired > current else "ScaledDown"
        metrics.SCALINGS.labels(direction).inc()
        emit("Normal", direction, f"replicas {current} -> {decision.desired}: {decision.message}")
        new["lastScaleTime"] = stamp
    return new
