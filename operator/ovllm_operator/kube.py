"""The operator's few verbs on the Kubernetes API: server-side apply, create, delete, status, scale,
Events. Reads come from the watch cache (cache.py), never from here: the only GETs left are the
Secrets the spec names and discovery.

Server-side apply with the operator's own field manager is what makes reconciling idempotent: the
API server merges the desired object into the live one, and `force` takes back fields another
client changed (someone's `kubectl edit` of a managed field). The request is made only when the
cached object differs from the desired one (`differs`), so an unchanged cluster costs no writes.

Requests go through the kubernetes client's ApiClient with plain dicts on both sides: its dynamic
client would run discovery and wrap every answer in objects, costing CPU on every write.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from ovllm_operator import names
from ovllm_operator.cache import CHILD_KINDS

log = logging.getLogger(__name__)

# Each kind the operator writes or reads -> its plural in the API's paths: its children's (cache.py)
# and those it reads or writes without watching.
PLURALS: dict[tuple[str, str], str] = {
    **{(api_version, kind): plural for api_version, kind, plural in CHILD_KINDS},
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    (f"{names.GROUP}/{names.VERSION}", names.KIND): names.PLURAL,
}

# The hash of the desired object, kept on each child: a child whose hash matches and whose fields
# hold the desired values needs no write. The hash notices what a field comparison cannot: a field
# the desired object no longer has (server-side apply removes it once applied without it).
APPLIED_HASH = f"{names.GROUP}/applied-hash"
REQUEST_TIMEOUT = 30  # seconds for one API call: a hung connection must not hold a worker forever


@dataclass(frozen=True)
class Applied:
    """An applied object and what applying it did: created, updated, unchanged or deleted."""

    object: dict
    action: str


def path(api_version: str, kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base, "namespaces", namespace, PLURALS[(api_version, kind)], name, subresource]
    return "/".join(part for part in parts if part)


def with_hash(body: dict) -> dict:
    """The desired object with its own hash among its annotations."""
    metadata = body["metadata"]
    annotations = {**(metadata.get("annotations") or {}), APPLIED_HASH: names.digest(body)}
    return {**body, "metadata": {**metadata, "annotations": annotations}}


def differs(desired: dict, live: dict | None) -> str | None:
    """Why applying `desired` (carrying its hash) could change `live`, or None when it could not:
    it is absent, was applied from another desired object, or a field it sets holds another value
    (drift)."""
    if live is None:
        return "absent"
    hashes = [(obj["metadata"].get("annotations") or {}).get(APPLIED_HASH) for obj in (desired, live)]
    if hashes[0] != hashes[1]:
        return "a new desired state"
    return difference(live, desired)


def difference(live, desired, where: str = "") -> str | None:
    """The first field of `desired` whose value `live` lacks (lists item by item), or None. Fields
    the API server fills in (defaults, status) are ignored; empty desired values match absent ones;
    quantities match by value (the API server writes 1Gi for 1024Mi). Strict enough for what the
    operator writes: a false difference costs one no-op apply, a missed one would hide drift."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return where or "."
        for key, value in desired.items():
            field = f"{where}.{key}"
            found = difference(live[key], value, field) if key in live else None if _empty(value) else field
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return where
        for position, (item, wanted) in enumerate(zip(live, desired, strict=True)):
            if found := difference(item, wanted, f"{where}[{position}]"):
                return found
        return None
    if desired == live:
        return None
    if isinstance(desired, str) and isinstance(live, str):
        try:
            return None if parse_quantity(desired) == parse_quantity(live) else where
        except ValueError:
            return where
    return where


def _empty(value) -> bool:
    """A desired value the API server leaves out of what it returns (omitempty fields)."""
    return value is None or value in ({}, [], "", 0)  # 0 == False too


class Kube:
    def __init__(self, api_client: k8s.ApiClient | None = None):
        self.api_client = api_client or k8s.ApiClient()
        self._served: dict[str, tuple[float, bool]] = {}

    def _call(self, method: str, url: str, body=None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None) -> dict:
        method, url, headers, body, post = self.api_client.param_serialize(
            method, url, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": content_type})
        response = self.api_client.call_api(method, url, header_params=headers, body=body, post_params=post,
                                            _request_timeout=REQUEST_TIMEOUT)
        response.read()
        if not 200 <= response.status <= 299:
            error = ApiException(http_resp=response)
            error.reason = f"{error.reason} ({method} {url.split('?')[0]})"  # which call, in the logs
            raise error
        return json.loads(response.data) if response.data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, body: dict, cached: dict | None) -> Applied:
        """Server-side apply `body` unless the cached live object already is what it asks for."""
        desired = with_hash(body)
        why = differs(desired, cached)
        if why is None:
            return Applied(cached, "unchanged")
        meta = desired["metadata"]
        log.debug("applying %s %s/%s: %s", desired["kind"], meta["namespace"], meta["name"], why)
        after = self._call("PATCH", path(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"]),
                           body=desired, content_type="application/apply-patch+yaml",
                           query=[("fieldManager", names.FIELD_MANAGER), ("force", "true")])
        if cached is None:
            action = "created"
        elif cached["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]:
            action = "unchanged"  # the cache was a moment behind: the object already was right
            log.info("%s %s/%s was already as desired (%s differed in the cache)", desired["kind"],
                     meta["namespace"], meta["name"], why)
        else:
            action = "updated"
            log.info("%s %s/%s: %s differed", desired["kind"], meta["namespace"], meta["name"], why)
        return Applied(after, action)

    def create_if_absent(self, body: dict, cached: dict | None) -> Applied:
        """For objects whose spec is immutable or must not be changed once made (Jobs, claims)."""
        if cached is not None:
            return Applied(cached, "unchanged")
        meta = body["metadata"]
        try:
            created = self._call("POST", path(body["apiVersion"], body["kind"], meta["namespace"]), body=body,
                                 query=[("fieldManager", names.FIELD_MANAGER)])
        except ApiException as exc:
            if exc.status != 409:  # made a moment ago, and not yet in the cache: read it
                raise
            return Applied(self.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"]), "unchanged")
        return Applied(created, "created")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents too); False when it was already gone."""
        try:
            self._call("DELETE", path(api_version, kind, namespace, name), body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        """A merge patch of an OVLLMDeployment's status (None values remove keys)."""
        self._call("PATCH", path(f"{names.GROUP}/{names.VERSION}", names.KIND, namespace, name, "status"),
                   body={"status": status}, content_type="application/merge-patch+json")

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set replicas through the scale subresource, as `kubectl scale` and HPAs do."""
        self._call("PATCH", path(f"{names.GROUP}/{names.VERSION}", names.KIND, namespace, name, "scale"),
                   body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")

    def event(self, involved: Mapping, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on an object, as `kubectl describe` shows them. Failing to post one is
        logged, never raised: an Event is a notice, the reconcile's work is done either way."""
        metadata = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion", f"{names.GROUP}/{names.VERSION}"),
                               "kind": involved.get("kind", names.KIND), "name": metadata["name"],
                               "namespace": metadata["namespace"], "uid": metadata["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": names.FIELD_MANAGER}, "reportingComponent": names.FIELD_MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "count": 1,
        }
        try:
            self._call("POST", path("v1", "Event", metadata["namespace"]), body=body)
        except ApiException as exc:
            if exc.status == 403 and "being terminated" in (exc.body or ""):
                return  # its namespace is being deleted, and the Event with it
            log.warning("cannot post Event %s on %s/%s: %s %s", reason, metadata["namespace"], metadata["name"],
                        exc.status, exc.reason)

    def serves(self, group: str, version: str, kind: str, cache_seconds: float = 30.0) -> bool:
        """Whether the API server serves a kind (say, ServiceMonitor once its CRD is installed).
        Asks discovery, which every client may read, so a namespace-scoped operator needs no
        cluster role; cached briefly, since every reconcile asks."""
        key, now = f"{group}/{version}/{kind}", time.monotonic()
        checked = self._served.get(key)
        if checked and now - checked[0] < cache_seconds:
            return checked[1]
        try:
            listing = self._call("GET", f"/apis/{group}/{version}")
            served = any(resource.get("kind") == kind for resource in listing.get("resources") or [])
        except ApiException as exc:
            if exc.status != 404:
                raise
            served = False
        self._served[key] = (now, served)
        return served
