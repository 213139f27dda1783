"""kopf handlers: every event of an OVLLMDeployment (creation, a spec change, the operator's start,
and a periodic resync that notices finished Jobs, ready pods and drift) runs the same reconcile.

Handlers are synchronous (the kubernetes client blocks), so kopf runs them in its thread pool; a
lock per resource keeps a resync and a change handler from reconciling one resource at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict

import kopf
from kubernetes.client.exceptions import ApiException

from ovllm_operator import autoscaler, metrics, names
from ovllm_operator.kube import Kube
from ovllm_operator.reconcile import reconcile

RESYNC_SECONDS = float(os.environ.get("OVLLM_RESYNC_SECONDS", "10"))
AUTOSCALE_SECONDS = float(os.environ.get("OVLLM_AUTOSCALE_SECONDS", "15"))

_kube: Kube | None = None
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Keep kopf's bookkeeping in annotations under our own prefix: status belongs to the resource's
    # schema, which has no room for kopf's fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # A cluster-wide operator watches CRDs to notice its own being installed later; one restricted to
    # namespaces has only Roles there (no cluster-wide rights) and relies on discovery at startup.
    settings.scanning.disabled = not settings.peering.clusterwide
    settings.execution.max_workers = int(os.environ.get("OVLLM_OPERATOR_WORKERS", "8"))


def _load_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _client() -> Kube:
    global _kube
    if _kube is None:
        _load_config()
        _kube = Kube()
    return _kube


def custom_objects_api():
    from kubernetes.client import CustomObjectsApi

    return CustomObjectsApi(_client().api_client)


def _run(body: kopf.Body, patch: kopf.Patch, trigger: str) -> None:
    started = time.monotonic()
    with _locks[body["metadata"]["uid"]]:
        try:
            new = reconcile(body, _client(), lambda type_, reason, message: kopf.event(
                body, type=type_, reason=reason, message=message))
        except ApiException as exc:
            metrics.RECONCILES.labels(trigger, "error").inc()
            # The API server is briefly unavailable, or a write conflicted: try again soon.
            raise kopf.TemporaryError(f"Kubernetes API: {exc.status} {exc.reason}", delay=5) from exc
        except Exception:
            metrics.RECONCILES.labels(trigger, "error").inc()
            raise
    metrics.RECONCILES.labels(trigger, "ok").inc()
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    old = dict(body.get("status") or {})
    for key, value in new.items():
        if old.get(key) != value:
            patch.status[key] = value


@kopf.on.resume(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.create(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.update(names.GROUP, names.VERSION, names.PLURAL)
def on_change(body: kopf.Body, patch: kopf.Patch, reason: str, **_) -> None:
    _run(body, patch, str(reason))


@kopf.timer(names.GROUP, names.VERSION, names.PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, patch: kopf.Patch, **_) -> None:
    _run(body, patch, "resync")


@kopf.timer(names.GROUP, names.VERSION, names.PLURAL, interval=AUTOSCALE_SECONDS, initial_delay=AUTOSCALE_SECONDS)
def autoscale(body: kopf.Body, patch: kopf.Patch, **_) -> None:
    """Every resource, autoscaled or not: one whose autoscaling was turned off loses its
    status.autoscaling here."""
    try:
        new = autoscaler.step(body, _client(), lambda type_, reason, message: kopf.event(
            body, type=type_, reason=reason, message=message))
    except ApiException as exc:
        raise kopf.TemporaryError(f"Kubernetes API: {exc.status} {exc.reason}", delay=5) from exc
    written = None if new is None else {key: value for key, value in new.items() if value is not None}
    if (body.get("status") or {}).get("autoscaling") != written:
        patch.status["autoscaling"] = new  # its None values remove those keys (a merge patch)


@kopf.on.delete(names.GROUP, names.VERSION, names.PLURAL, optional=True)  # optional: no finalizer
def forget(body: kopf.Body, **_) -> None:
    autoscaler.RECOMMENDER.forget(body["metadata"]["uid"])
