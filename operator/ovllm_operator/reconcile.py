"""One reconcile of one OVLLMDeployment: build the desired children (builders.py), apply them
(kube.py), read back what exists, and return the status (status.py).

The same function serves creation, updates, the operator's restart and the periodic resync: it
looks only at the resource and the cluster, never at what happened before, so running it again is
always safe and an unchanged resource writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from kubernetes.client.exceptions import ApiException

from ovllm_operator import builders, metrics, names, status
from ovllm_operator.kube import Applied, Kube
from ovllm_operator.spec import SpecError

log = logging.getLogger(__name__)

# emit(type, reason, message): an Event on the resource.
Emit = Callable[[str, str, str], None]


def reconcile(body: Mapping, kube: Kube, emit: Emit) -> dict:
    """Bring the children in line with the spec; return the status to write."""
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
        return _finish(observed, previous, [], emit)

    spec = resource.spec
    plan = builders.model_plan(resource)
    observed.model = spec.model.source
    observed.endpoint = names.endpoint(name, namespace, spec.service.port)
    observed.wanted_path = plan.serve_path
    observed.conversion = "job" if plan.uses_job else "pod" if plan.convert_in_pod else "image"
    observed.problems = missing_secrets(resource, kube)

    applied = [kube.apply(builders.service(resource))]
    applied += sync_optional(kube, resource, builders.pod_disruption_budget(resource), "policy/v1",
                             "PodDisruptionBudget")
    if kube.serves("monitoring.coreos.com", "v1", "ServiceMonitor"):
        applied += sync_optional(kube, resource, builders.service_monitor(resource), "monitoring.coreos.com/v1",
                                 "ServiceMonitor")
    router_applied, observed.router = sync_router(kube, resource, had_router=bool(previous.get("router")))
    applied += router_applied
    if claim := builders.cache_claim(resource):
        applied.append(kube.create_if_absent(claim))

    current = kube.get("apps/v1", "Deployment", namespace, name)
    serve_path = plan.serve_path
    if plan.uses_job:
        job = kube.create_if_absent(builders.conversion_job(resource))
        applied.append(job)
        observed.job = status.job_state(job.object)
        if observed.job.state == "succeeded":
            remove_other_jobs(kube, resource, keep=observed.job.name)
        else:
            if observed.job.state == "running":  # only a pending conversion has a scheduler's reason
                observed.job_pods_waiting = unschedulable(kube, namespace, f"job-name={observed.job.name}")
            # Until the new conversion is done, the pods keep serving the last converted model.
            serve_path = serving_path(current)
    if serve_path:
        deployment = kube.apply(builders.deployment(resource, serve_path), before=current)
        applied.append(deployment)
        current = deployment.object
    observed.deployment = current
    observed.model_path = serve_path
    if current is not None:
        observed.engine_pods_waiting = unschedulable(kube, namespace, names.selector_string(name))
    return _finish(observed, previous, applied, emit)


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


def serving_path(deployment: dict | None) -> str | None:
    """The model directory a Deployment's engine serves (the argument after `serve`)."""
    if not deployment:
        return None
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "engine":
            return container["args"][1]
    return None


def sync_optional(kube: Kube, resource: builders.Resource, body: dict | None, api_version: str,
                  kind: str) -> list[Applied]:
    """Apply a child the spec asks for; delete ours when the spec no longer asks for it."""
    if body is not None:
        return [kube.apply(body)]
    return remove_owned(kube, resource, api_version, kind, resource.name)


def remove_owned(kube: Kube, resource: builders.Resource, api_version: str, kind: str, name: str) -> list[Applied]:
    """Delete a child if it exists and is ours (never an object someone else made with that name)."""
    existing = kube.get(api_version, kind, resource.namespace, name)
    if existing and _owned_by(existing, resource):
        kube.delete(api_version, kind, resource.namespace, name)
        return [Applied(existing, "deleted")]
    return []


# The router's children, in the order they are removed when spec.router is turned off.
ROUTER_CHILDREN = (("apps/v1", "Deployment", names.router_name), ("v1", "Service", names.engines_service_name),
                   ("rbac.authorization.k8s.io/v1", "RoleBinding", names.router_name),
                   ("rbac.authorization.k8s.io/v1", "Role", names.router_name),
                   ("v1", "ServiceAccount", names.router_name))


def sync_router(kube: Kube, resource: builders.Resource, had_router: bool) -> tuple[list[Applied], dict | None]:
    """Apply the router's children when it is enabled, and return its Deployment as read back.
    Turned off, they are removed once (the status still showing a router is the sign to look: a
    resource that never had one costs no reads)."""
    if resource.spec.router.enabled:
        applied = [kube.apply(body) for body in builders.router_children(resource)]
        return applied, applied[-1].object
    removed: list[Applied] = []
    if had_router:
        for api_version, kind, name_of in ROUTER_CHILDREN:
            removed += remove_owned(kube, resource, api_version, kind, name_of(resource.name))
    return removed, None


def remove_other_jobs(kube: Kube, resource: builders.Resource, keep: str) -> None:
    """Older conversion Jobs of this resource, once a newer one succeeded."""
    selector = f"app.kubernetes.io/instance={resource.name},app.kubernetes.io/component=converter"
    for job in kube.list("batch/v1", "Job", resource.namespace, selector):
        if job["metadata"]["name"] != keep and _owned_by(job, resource):
            kube.delete("batch/v1", "Job", resource.namespace, job["metadata"]["name"])


def unschedulable(kube: Kube, namespace: str, selector: str) -> list[str]:
    """The scheduler's reason for each pod it cannot place (no node with the ISA, too little memory,
    an unbound claim): the one thing a person needs to read when nothing starts."""
    waiting = []
    for pod in kube.list("v1", "Pod", namespace, selector):
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                waiting.append(f"pod {pod['metadata']['name']} cannot be scheduled: {condition.get('message', '')}")
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
