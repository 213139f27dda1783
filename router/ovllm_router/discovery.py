"""Where the backends are: a fixed list (--backend), or the ready endpoints of a Kubernetes Service
found through its EndpointSlices (--service).

The EndpointSlice side lists the slices labelled kubernetes.io/service-name=NAME, then watches them
from the list's resourceVersion; after an error it waits a little and lists again. The kubernetes
client blocks, so the watch runs in a thread and hands each new set of backends to the event loop
with call_soon_threadsafe. Turning slices into URLs is the pure function `backends_from_slices`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def slice_backends(endpoint_slice: dict) -> set[str]:
    """The URLs of one EndpointSlice's serving endpoints (API field names, as `kubectl get -o json` shows).

    The port is the one named "http", else the slice's first. An endpoint serves when its `ready`
    condition is not false (unset means unknown, which Kubernetes asks consumers to take as ready)
    and it is not terminating.
    """
    ports = [p for p in endpoint_slice.get("ports") or [] if p.get("port")]
    if not ports:
        return set()
    port = next((p for p in ports if p.get("name") == PORT_NAME), ports[0])["port"]
    ipv6 = endpoint_slice.get("addressType") == "IPv6"
    urls = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ipv6 else address
            urls.add(f"http://{host}:{port}")
    return urls


def backends_from_slices(slices: dict[str, dict]) -> list[str]:
    """Every serving URL of a Service's slices (keyed by slice name), sorted, each once."""
    urls: set[str] = set()
    for endpoint_slice in slices.values():
        urls |= slice_backends(endpoint_slice)
    return sorted(urls)


def apply_event(slices: dict[str, dict], event_type: str, endpoint_slice: dict) -> dict[str, dict]:
    """The slices after one watch event (ADDED, MODIFIED or DELETED)."""
    name = endpoint_slice["metadata"]["name"]
    slices = dict(slices)
    if event_type == "DELETED":
        slices.pop(name, None)
    elif event_type in ("ADDED", "MODIFIED"):
        slices[name] = endpoint_slice
    return slices


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else "default"."""
    try:
        with open(NAMESPACE_FILE) as file:
            return file.read().strip() or "default"
    except OSError:
        return "default"


class EndpointSliceWatch:
    """Calls on_change(backends) on the event loop whenever the Service's serving endpoints change."""

    def __init__(self, service: str, namespace: str, on_change: Callable[[list[str]], None],
                 loop: asyncio.AbstractEventLoop, backoff: float = 2.0, watch_seconds: int = 300):
        self.service, self.namespace, self.on_change, self.loop = service, namespace, on_change, loop
        self.backoff, self.watch_seconds = backoff, watch_seconds
        self._stop = threading.Event()
        self._watch = None
        self._last: list[str] | None = None
        self._thread = threading.Thread(target=self._run, name=f"endpointslices-{service}", daemon=True)

    def start(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()  # $KUBECONFIG, else ~/.kube/config
        self._api = client.DiscoveryV1Api()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _publish(self, slices: dict[str, dict]) -> None:
        backends = backends_from_slices(slices)
        if backends != self._last:
            self._last = backends
            log.info("service %s/%s: %d ready endpoints %s", self.namespace, self.service, len(backends), backends)
            self.loop.call_soon_threadsafe(self.on_change, backends)

    def _run(self) -> None:
        from kubernetes import watch

        selector = f"{SERVICE_LABEL}={self.service}"
        while not self._stop.is_set():
            try:
                # raw JSON (not the client's models): the same dicts the watch hands over as raw_object
                listed = json.loads(self._api.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=selector, _preload_content=False).data)
                slices = {item["metadata"]["name"]: item for item in listed.get("items") or []}
                self._publish(slices)
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():  # each watch ends after watch_seconds; go on from `version`
                    self._watch = watch.Watch()
                    for event in self._watch.stream(
                            self._api.list_namespaced_endpoint_slice, self.namespace, label_selector=selector,
                            resource_version=version, timeout_seconds=self.watch_seconds,
                            allow_watch_bookmarks=True):
                        kind, obj = event["type"], event["raw_object"]
                        if kind == "ERROR":  # e.g. 410 Gone: the version is too old; list again
                            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind != "BOOKMARK":
                            slices = apply_event(slices, kind, obj)
                            self._publish(slices)
            except Exception as exc:  # any failure: keep the backends we have, list again shortly
                if self._stop.is_set():
                    break
                log.warning("watching EndpointSlices of %s/%s failed (%s); listing again in %gs",
                            self.namespace, self.service, exc, self.backoff)
                self._stop.wait(self.backoff)
