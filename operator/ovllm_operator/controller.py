"""The operator's control loop, built as Kubernetes' own controllers are (sample-controller, KubeAI's
model controller): watches keep a cache, every event is mapped to the OVLLMDeployment it concerns,
a work queue hands each such key to one worker at a time, and the worker reconciles from the cache,
writing only what differs. An idle cluster therefore costs no requests; a child deleted or edited
by hand, a pod that becomes ready or unready, a Job that finishes: each is seen within a second.

kopf provides the watches (its indexes are the cache: cache.py), peering (a standby replica's
watches, timers and so its queue stay still) and the liveness endpoint. Per resource two kopf
timers remain: the safety resync (default every 10 minutes: what no event reports, such as a
Secret created later), and the autoscaler's step for resources that autoscale.

Everything here runs on kopf's event loop except the reconciles and the autoscaler's decisions,
which block on the Kubernetes client and run in a thread pool of `workers` threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import kopf

from ovllm_operator import autoscaler, cache, engine_metrics, metrics, names
from ovllm_operator.cache import Key
from ovllm_operator.events import EventRecorder
from ovllm_operator.kube import Kube
from ovllm_operator.reconcile import ResourceGone, Result, reconcile
from ovllm_operator.spec import OVLLMDeploymentSpec, SpecError, parse_spec

log = logging.getLogger(__name__)
CHILD_DELETED_DELAY = 0.5  # seconds


@dataclass(frozen=True)
class Config:
    resync_seconds: float = 600.0  # the safety resync of every resource
    autoscale_seconds: float = 15.0  # the autoscaler's step of each autoscaled resource
    workers: int = 4  # reconciles at once


class Controller:
    def __init__(self, config: Config, kube: Kube):
        self.config = config
        self.kube = kube
        self.indexes: Mapping = {}
        self.queue = None  # a WorkQueue, made on kopf's loop at startup
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="reconcile")
        self.events = EventRecorder(kube)
        self._workers: list[asyncio.Task] = []
        # The generation whose Secrets were all there: re-read only on a spec change, a resync, or
        # while one is missing (Secrets are not the operator's, so they are not watched).
        self._secrets_seen: dict[Key, int] = {}
        self._specs: dict[str, tuple[int, OVLLMDeploymentSpec | None]] = {}  # uid -> (generation, parsed)
        self._metric_slots: asyncio.Semaphore | None = None

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Every handler, on `registry` (kopf.run(registry=...)): nothing is registered by importing."""
        group, version, plural = names.GROUP, names.VERSION, names.PLURAL
        # kopf's own login from the kubernetes client's config (in-cluster or kubeconfig), which
        # only kopf's default registry has on its own.
        kopf.on.login(registry=registry)(kopf.login_via_client)
        kopf.on.startup(registry=registry)(self._start)
        kopf.on.cleanup(registry=registry)(self._stop)
        kopf.index(group, version, plural, id=cache.RESOURCE_INDEX, registry=registry)(_index_resource)
        kopf.on.event(group, version, plural, registry=registry)(self._resource_event)
        own = {cache.MANAGED_BY: names.FIELD_MANAGER}
        for api_version, kind, child_plural in cache.CHILD_KINDS:
            child_group, _, child_version = api_version.rpartition("/")
            indexer = _index_pod if kind == "Pod" else _index_child
            kopf.index(child_group, child_version, child_plural, id=cache.index_id(kind), labels=own,
                       registry=registry)(indexer)
            kopf.on.event(child_group, child_version, child_plural, labels=own, registry=registry)(self._child_event)
        kopf.timer(group, version, plural, id="resync", interval=self.config.resync_seconds,
                   initial_delay=self.config.resync_seconds, registry=registry)(self._resync)
        kopf.timer(group, version, plural, id="autoscale", interval=self.config.autoscale_seconds,
                   initial_delay=self.config.autoscale_seconds, when=_autoscaling_matters,
                   registry=registry)(self._autoscale)

    # --- kopf's handlers (on its event loop) ---

    async def _start(self, settings: kopf.OperatorSettings, **kwargs) -> None:
        from ovllm_operator.workqueue import WorkQueue

        settings.posting.level = logging.WARNING  # our own Events say what changed (kube.event)
        # A cluster-wide operator watches CRDs to notice one installed later (ServiceMonitor); one
        # restricted to namespaces has only Roles there and relies on discovery at startup.
        settings.scanning.disabled = not settings.peering.clusterwide
        for api_version, _, child_plural in cache.CHILD_KINDS:
            # Filtered by the API server: a cluster's other pods and Deployments never reach us.
            settings.watching.label_selectors[api_version.rpartition("/")[0], child_plural] = cache.OWN
        self.indexes = {name: kwargs[name] for name in kwargs if name.endswith("_index")}
        self.queue = WorkQueue()
        self._metric_slots = asyncio.Semaphore(engine_metrics.MAX_PARALLEL)
        self._workers = [asyncio.create_task(self._work(), name=f"reconcile-{n}") for n in range(self.config.workers)]

    async def _stop(self, **_) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.events.stop()

    async def _resource_event(self, event: Mapping, namespace: str, name: str, body: kopf.Body, **_) -> None:
        key = (namespace, name)
        if event.get("type") == "DELETED":
            self.queue.forget(key)
            self._secrets_seen.pop(key, None)
            autoscaler.RECOMMENDER.forget(body["metadata"]["uid"])
            self._specs.pop(body["metadata"]["uid"], None)
            return
        self.queue.add(key, "resource")

    async def _child_event(self, event: Mapping, namespace: str, labels: Mapping, **_) -> None:
        key = cache.owner_key(namespace, labels)
        if key is None:
            return
        if event.get("type") == "DELETED":
            # Deleted by hand, or by the garbage collector because the resource itself is gone: its
            # own DELETED event comes through another watch, a moment later or sooner. Waiting a
            # moment spares making children again for a resource that no longer exists.
            self.queue.add_after(key, "child", CHILD_DELETED_DELAY)
        else:
            self.queue.add(key, "child")

    async def _resync(self, namespace: str, name: str, **_) -> None:
        self.queue.add((namespace, name), "resync")

    # --- the workers ---

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key, reason = await self.queue.get()
            try:
                snapshot = cache.snapshot(self.indexes, key)
                if snapshot.resource is None:  # deleted since it was queued
                    continue
                generation = snapshot.resource["metadata"].get("generation", 0)
                check_secrets = reason in ("resync", "recheck", "retry") or self._secrets_seen.get(key) != generation
                try:
                    result = await loop.run_in_executor(self._pool, self._reconcile, snapshot, reason, check_secrets)
                except Exception as exc:  # noqa: BLE001 (any failure: logged, retried with backoff)
                    if _namespace_terminating(exc):  # its children go with it: nothing to retry
                        log.info("%s/%s: its namespace is being deleted", *key)
                        continue
                    if isinstance(exc, ResourceGone):  # its own DELETED event is on its way
                        continue
                    delay = self.queue.retry(key)
                    log.error("reconcile of %s/%s failed, retrying in %.0fs: %s", *key, delay, _describe(exc))
                    continue
                self.queue.succeeded(key)
                if result.secrets_checked:
                    self._secrets_seen[key] = generation
                elif check_secrets:
                    self._secrets_seen.pop(key, None)
                if result.recheck_after:
                    self.queue.add_after(key, "recheck", result.recheck_after)
            finally:
                self.queue.done(key)
                metrics.QUEUE_DEPTH.set(len(self.queue))

    def _reconcile(self, snapshot: cache.Snapshot, reason: str, check_secrets: bool) -> Result:
        """One reconcile and its status write (in a worker thread)."""
        body = snapshot.resource
        started = time.monotonic()
        try:
            result = reconcile(snapshot, self.kube, self._emitter(body), check_secrets=check_secrets)
            old = body.get("status") or {}
            changed = {key: value for key, value in result.status.items() if old.get(key) != value}
            if changed:
                self.kube.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], changed)
        except ResourceGone:
            metrics.RECONCILES.labels(reason, "gone").inc()
            raise
        except Exception:
            metrics.RECONCILES.labels(reason, "error").inc()
            raise
        metrics.RECONCILES.labels(reason, "ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        return result

    def _emitter(self, body: Mapping):
        return lambda type_, reason, message: self.events.record(body, type_, reason, message)

    # --- the autoscaler ---

    async def _autoscale(self, body: kopf.Body, namespace: str, name: str, **_) -> None:
        """One resource's step: read its ready pods' /metrics (at most MAX_PARALLEL reads at once
        across every resource, each bounded by its timeout), then decide and write in a thread."""
        snapshot = cache.snapshot(self.indexes, (namespace, name))
        if snapshot.resource is None:
            return
        spec = self._spec(snapshot.resource)
        if spec is None:  # an invalid spec: the reconcile reports it; nothing to scale on meanwhile
            return
        readings: list[engine_metrics.Reading] = []
        if spec.autoscaled:
            targets = autoscaler.metrics_targets(snapshot.pods(names.selector_labels(name)))
            started = time.monotonic()
            readings = await engine_metrics.read_all_async(targets, spec.autoscaling.metric,
                                                           timeout=autoscaler.READ_TIMEOUT, slots=self._metric_slots)
            metrics.AUTOSCALE_READ_SECONDS.observe(time.monotonic() - started)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._autoscale_step, snapshot.resource, spec, readings)

    def _autoscale_step(self, body: Mapping, spec: OVLLMDeploymentSpec, readings: list) -> None:
        new = autoscaler.step(body, spec, readings, self.kube, self._emitter(body))
        written = None if new is None else {key: value for key, value in new.items() if value is not None}
        if (body.get("status") or {}).get("autoscaling") != written:
            # None values remove those keys (a merge patch); None alone removes status.autoscaling
            self.kube.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], {"autoscaling": new})

    def _spec(self, body: Mapping) -> OVLLMDeploymentSpec | None:
        """The parsed spec, once per generation (the autoscaler asks every few seconds)."""
        metadata = body["metadata"]
        generation = metadata.get("generation", 0)
        cached = self._specs.get(metadata["uid"])
        if cached is None or cached[0] != generation:
            try:
                cached = (generation, parse_spec(dict(body.get("spec") or {})))
            except SpecError:
                cached = (generation, None)
            self._specs[metadata["uid"]] = cached
        return cached[1]


def _autoscaling_matters(spec: Mapping, status: Mapping, **_) -> bool:
    """The autoscale timer runs for resources that autoscale, and once more for those that stopped
    (to remove status.autoscaling)."""
    scaling = spec.get("autoscaling")
    return (scaling is not None and scaling.get("enabled", True) is not False) or bool(status.get("autoscaling"))


def _index_resource(namespace: str, name: str, body: kopf.Body, **_) -> dict:
    return {(namespace, name): cache.trimmed(body)}


def _index_child(namespace: str, labels: Mapping, body: kopf.Body, **_) -> dict:
    key = cache.owner_key(namespace, labels)
    return {key: cache.trimmed(body)} if key else {}


def _index_pod(namespace: str, labels: Mapping, body: kopf.Body, **_) -> dict:
    key = cache.owner_key(namespace, labels)
    return {key: cache.pod_summary(body)} if key else {}


def _namespace_terminating(exc: Exception) -> bool:
    """The API server refuses new objects in a namespace being deleted (403, "being terminated")."""
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, ApiException) and exc.status == 403 and "being terminated" in (exc.body or "")


def _describe(exc: Exception) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return f"Kubernetes API: {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
