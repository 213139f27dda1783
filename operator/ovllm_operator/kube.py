"""The operator's few verbs on the Kubernetes API: server-side apply, create-if-absent, read, delete.

Server-side apply with the operator's own field manager is what makes reconciling idempotent: the
API server merges the desired object into the live one, writes nothing when nothing changed, and
`force` takes back fields another client changed (someone's `kubectl edit` of a managed field).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from ovllm_operator.names import FIELD_MANAGER

log = logging.getLogger(__name__)


_UNREAD = object()  # apply() was not given the live object


@dataclass(frozen=True)
class Applied:
    """An applied object and what applying it did: created, updated or unchanged."""

    object: dict
    action: str


class Kube:
    def __init__(self, api_client: k8s.ApiClient | None = None):
        self.api_client = api_client or k8s.ApiClient()
        self.dynamic = DynamicClient(self.api_client)
        self._served: dict[str, tuple[float, bool]] = {}

    def _resource(self, api_version: str, kind: str):
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict]:
        found = self._resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
        return [item.to_dict() for item in found.items]

    def apply(self, body: dict, before: dict | None | object = _UNREAD) -> Applied:
        """Server-side apply; `action` compares resourceVersions, so an unchanged object reads as such.
        `before`: the live object if the caller just read it (None: absent), to save a read."""
        meta = body["metadata"]
        if before is _UNREAD:
            before = self.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
        after = self._resource(body["apiVersion"], body["kind"]).server_side_apply(
            body=body, namespace=meta["namespace"], field_manager=FIELD_MANAGER, force_conflicts=True
        ).to_dict()
        if before is None:
            action = "created"
        elif before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]:
            action = "unchanged"
        else:
            action = "updated"
        return Applied(after, action)

    def create_if_absent(self, body: dict) -> Applied:
        """For objects whose spec is immutable or must not be changed once made (Jobs, claims)."""
        meta = body["metadata"]
        existing = self.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
        if existing is not None:
            return Applied(existing, "unchanged")
        try:
            created = self._resource(body["apiVersion"], body["kind"]).create(
                body=body, namespace=meta["namespace"], field_manager=FIELD_MANAGER
            ).to_dict()
        except ApiException as exc:
            if exc.status != 409:  # made by a concurrent reconcile: read it
                raise
            return Applied(self.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"]), "unchanged")
        return Applied(created, "created")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents too); False when it was already gone."""
        try:
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"}
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def scale(self, group: str, version: str, plural: str, namespace: str, name: str, replicas: int) -> None:
        """Set replicas through the scale subresource, as `kubectl scale` and HPAs do."""
        k8s.CustomObjectsApi(self.api_client).patch_namespaced_custom_object_scale(
            group, version, namespace, plural, name, {"spec": {"replicas": replicas}})

    def serves(self, group: str, version: str, kind: str, cache_seconds: float = 30.0) -> bool:
        """Whether the API server serves a kind (say, ServiceMonitor once its CRD is installed).
        Asks discovery, which every client may read, so a namespace-scoped operator needs no
        cluster role; cached briefly, since every reconcile asks."""
        key, now = f"{group}/{version}/{kind}", time.monotonic()
        checked = self._served.get(key)
        if checked and now - checked[0] < cache_seconds:
            return checked[1]
        try:
            listing = k8s.CustomObjectsApi(self.api_client).get_api_resources(group, version)
            served = any(resource.kind == kind for resource in listing.resources or [])
        except ApiException as exc:
            if exc.status != 404:
                raise
            served = False
        if served and not (checked and checked[1]):
            self.dynamic.resources.invalidate_cache()  # the dynamic client must learn the new kind
        self._served[key] = (now, served)
        return served
