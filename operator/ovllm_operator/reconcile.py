"""One reconcile of one OVLLMDeployment: build the desired children (builders.py), apply those that
differ from the cached ones (kube.py), and return the status (status.py) and when to look again.

The same function serves creation, updates, child events, the operator's restart and the safety
resync: it looks only at the resource and at its children as the watch cache (cache.py) holds them,
never at what happened before, so running it again is always safe and an unchanged resource
costs no request at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from ovllm_operator import builders, metrics, names, router_builders, status
from ovllm_operator.cache import Snapshot
from ovllm_operator.kube import Applied, Kube
from ovllm_operator.spec import SpecError

log = logging.getLogger(__name__)

# emit(type, reason, message): an Event on the resource.
Emit = Callable[[str, str, str], None]
# How soon a resource whose spec names a missing Secret is looked at again: nothing else tells the
# operator that a Secret appeared (Secrets are not watched: they are not the operator's).
MISSING_SECRET_RECHECK_SECONDS = 30.0


@dataclass
class Result:
    status: dict  # the status to write (the caller writes what changed)
    recheck_after: float | None = None  # seconds; None: wait for an event or the safety resync
    secrets_checked: bool = False  # the Secrets the spec names were read, and all are there


def reconcile(snapshot: Snapshot, kube: Kube, emit: Emit, check_secrets: bool = True) -> Result:
    """Bring the children in line with the spec. check_secrets: read the Secrets the spec names
    (on a spec change, a resync, or while one is missing; otherwise they were there a moment ago)."""
    body = snapshot.resource
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    previous = dict(body.get("status") or {})
    observed = status.Observed(
        generation=metadata.get("generation", 0),
        replicas=(body.get("spec") or {}).get("replicas") or 0,
        selector=names.selector_string(name),
    )
    try:
        resource = builders.Resource.from_body(body)  # parsed and checked
    except SpecError as exc:
        observed.spec_error = str(exc)
        raw = (body.get("spec") or {}).get("model") or {}
        observed.model = str(raw.get("hub") or raw.get("imagePath") or (raw.get("pvc") or {}).get("claimName") or "")
        return Result(_finish(observed, previous, [], emit))

    spec = resource.spec
    plan = builders.model_plan(resource)
    observed.model = spec.model.source
    observed.endpoint = names.endpoint(name, namespace, spec.service.port)
    observed.wanted_path = plan.serve_path
    observed.conversion = "job" if plan.uses_job else "pod" if plan.convert_in_pod else "image"
    if check_secrets:
        observed.problems = missing_secrets(resource, kube)

    applied = [apply(kube, snapshot, builders.service(resource))]
    applied += sync_optional(kube, snapshot, resource, builders.pod_disruption_budget(resource), "policy/v1",
                             "PodDisruptionBudget")
    if kube.serves("monitoring.coreos.com", "v1", "ServiceMonitor"):
        applied += sync_optional(kube, snapshot, resource, builders.service_monitor(resource),
                                 "monitoring.coreos.com/v1", "ServiceMonitor")
    router_applied, observed.router = sync_router(kube, snapshot, resource)
    applied += router_applied
    if claim := builders.cache_claim(resource):
        applied.append(create_if_absent(kube, snapshot, claim))

    current = snapshot.child("Deployment", name)
    serving = builders.served(resource, plan)
    if plan.uses_job:
        job = create_if_absent(kube, snapshot, builders.conversion_job(resource, plan))
        applied.append(job)
        observed.job = status.job_state(job.object)
        if observed.job.state == "succeeded":
            applied += remove_other_jobs(kube, snapshot, resource, keep=observed.job.name)
        else:
            if observed.job.state == "running":  # only a pending conversion has a scheduler's reason
                observed.job_pods_waiting = unschedulable(snapshot.pods({"job-name": observed.job.name}))
            # Until the new conversion is done, the pods keep serving the last converted model and draft.
            serving = served_now(current)
    if serving:
        deployment = apply(kube, snapshot, builders.deployment(resource, plan, serving))
        applied.append(deployment)
        current = deployment.object
    observed.deployment = current
    observed.model_path = serving.model if serving else None
    if current is not None:
        observed.engine_pods_waiting = unschedulable(snapshot.pods(names.selector_labels(name)))
    recheck = MISSING_SECRET_RECHECK_SECONDS if observed.problems else None
    return Result(_finish(observed, previous, applied, emit), recheck,
                  secrets_checked=check_secrets and not observed.problems)


def apply(kube: Kube, snapshot: Snapshot, body: dict) -> Applied:
    return kube.apply(body, cached_or_confirmed(kube, snapshot, body))


def create_if_absent(kube: Kube, snapshot: Snapshot, body: dict) -> Applied:
    return kube.create_if_absent(body, cached_or_confirmed(kube, snapshot, body))


def cached_or_confirmed(kube: Kube, snapshot: Snapshot, body: dict) -> dict | None:
    """The cached child of `body`'s kind and name; when there is none, the resource is confirmed
    to exist first (it is about to be made)."""
    cached = snapshot.child(body["kind"], body["metadata"]["name"])
    if cached is None:
        confirm_resource(kube, snapshot)
    return cached


class ResourceGone(Exception):
    """The resource was deleted, though the cache still held it."""


def confirm_resource(kube: Kube, snapshot: Snapshot) -> None:
    """Before making a child the cache lacks, read the resource itself, once per reconcile: the
    garbage collector deleting a deleted resource's children sends their events through other
    watches than the resource's own, and one may arrive first. Making children again then would
    only make work for the garbage collector."""
    if snapshot.confirmed:
        return
    metadata = snapshot.resource["metadata"]
    live = kube.get(f"{names.GROUP}/{names.VERSION}", names.KIND, metadata["namespace"], metadata["name"])
    if live is None or live["metadata"]["uid"] != metadata["uid"] or live["metadata"].get("deletionTimestamp"):
        raise ResourceGone(f"{metadata['namespace']}/{metadata['name']}")
    snapshot.confirmed = True


def _finish(observed: status.Observed, previous: dict, applied: list[Applied], emit: Emit) -> dict:
    new = status.compute(observed, previous)
    for item in applied:
        if item.action != "unchanged":
            kind, child = item.object["kind"], item.object["metadata"]["name"]
            log.info("%s %s/%s %s", kind, item.object["metadata"]["namespace"], child, item.action)
            metrics.CHILD_CHANGES.labels(kind, item.action).inc()
            emit("Normal", item.action.capitalize(), f"{kind} {child} {item.action}")
    for condition in status.transitions(previous, new):
        metrics.TRANSITIONS.labels(condition["type"], condition["status"], condition["reason"]).inc()
        emit("Warning" if status.is_warning(condition) else "Normal", condition["reason"],
             f"{condition['type']}={condition['status']}: {condition['message']}")
    return new


def served_now(deployment: dict | None) -> builders.Served | None:
    """What a Deployment's engine serves: the argument after `serve`, and its --speculative-config."""
    if not deployment:
        return None
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "engine":
            args = container["args"]
            flag = builders.SPECULATIVE_CONFIG
            config = args[args.index(flag) + 1] if flag in args else None
            return builders.Served(args[1], config)
    return None


def sync_optional(kube: Kube, snapshot: Snapshot, resource: builders.Resource, body: dict | None,
                  api_version: str, kind: str) -> list[Applied]:
    """Apply a child the spec asks for; delete ours when the spec no longer asks for it."""
    if body is not None:
        return [apply(kube, snapshot, body)]
    return remove_owned(kube, snapshot, resource, api_version, kind, resource.name)


def remove_owned(kube: Kube, snapshot: Snapshot, resource: builders.Resource, api_version: str, kind: str,
                 name: str) -> list[Applied]:
    """Delete a child if it exists and is ours (never an object someone else made with that name)."""
    existing = snapshot.child(kind, name)
    if existing and _owned_by(existing, resource):
        kube.delete(api_version, kind, resource.namespace, name)
        return [Applied(existing, "deleted")]
    return []


# The router's children, in the order they are removed when spec.router is turned off.
ROUTER_CHILDREN = (("apps/v1", "Deployment", names.router_name), ("v1", "Service", names.engines_service_name),
                   ("rbac.authorization.k8s.io/v1", "RoleBinding", names.router_name),
                   ("rbac.authorization.k8s.io/v1", "Role", names.router_name),
                   ("v1", "ServiceAccount", names.router_name))


def sync_router(kube: Kube, snapshot: Snapshot, resource: builders.Resource) -> tuple[list[Applied], dict | None]:
    """Apply the router's children when it is enabled, and return its Deployment as read back;
    turned off, remove those that are left."""
    if resource.spec.router.enabled:
        applied = [apply(kube, snapshot, body) for body in router_builders.router_children(resource)]
        return applied, applied[-1].object
    removed: list[Applied] = []
    for api_version, kind, name_of in ROUTER_CHILDREN:
        removed += remove_owned(kube, snapshot, resource, api_version, kind, name_of(resource.name))
    return removed, None


def remove_other_jobs(kube: Kube, snapshot: Snapshot, resource: builders.Resource, keep: str) -> list[Applied]:
    """Older conversion Jobs of this resource, once a newer one succeeded."""
    removed = []
    for job in snapshot.of_kind("Job"):
        job_name = job["metadata"]["name"]
        if job_name != keep and _owned_by(job, resource) and kube.delete("batch/v1", "Job", resource.namespace,
                                                                          job_name):
            removed.append(Applied(job, "deleted"))
    return removed


def unschedulable(pods: list[dict]) -> list[str]:
    """The scheduler's reason for each pod it cannot place (no node with the ISA, too little memory,
    an unbound claim): the one thing a person needs to read when nothing starts."""
    waiting = []
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                waiting.append(f"pod {pod['metadata']['name']} cannot be scheduled: {condition.get('message') or ''}")
    return waiting


def missing_secrets(resource: builders.Resource, kube: Kube) -> list[str]:
    """Secrets the spec names that do not exist: pods would never start, so say which."""
    spec, problems = resource.spec, []
    refs = [("spec.apiKeySecretRef", spec.api_key_secret_ref), ("spec.model.hubTokenSecretRef",
                                                                spec.model.hub_token_secret_ref)]
    for field, ref in refs:
        if ref is None:
            continue
        try:
            secret = kube.get("v1", "Secret", resource.namespace, ref.name)
        except ApiException as exc:
            if exc.status != 403:
                raise
            continue  # not allowed to read Secrets here: the pods will tell
        if secret is None:
            problems.append(f"{field}: Secret {ref.name} does not exist")
        elif ref.key not in (secret.get("data") or {}):
            problems.append(f"{field}: Secret {ref.name} has no key {ref.key}")
    return problems


def _owned_by(obj: dict, resource: builders.Resource) -> bool:
    return any(ref.get("uid") == resource.uid for ref in obj["metadata"].get("ownerReferences") or [])
