"""The operator's view of the cluster: kopf indexes over the OVLLMDeployments and every kind of
child, kept current by kopf's watches, so a reconcile reads memory instead of the API server.

Children are found by their `app.kubernetes.io/instance` label (the engine pods carry it too, though
a ReplicaSet owns them), and only the operator's own are watched at all: the API server filters on
`app.kubernetes.io/managed-by` (`label_selectors`). kopf calls no handler before every index has
its initial listing, so the first reconcile after a start already sees every existing child, as
client-go's WaitForCacheSync ensures (a child missed there would be "created" again).

An index is read only on kopf's event loop, where its watches update it: a snapshot (plain dicts)
is what crosses into a worker thread.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from ovllm_operator import names

INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWN = f"{MANAGED_BY}={names.FIELD_MANAGER}"

# (api_version, kind, plural) of each child kind the operator watches.
CHILD_KINDS: tuple[tuple[str, str, str], ...] = (
    ("apps/v1", "Deployment", "deployments"),
    ("v1", "Service", "services"),
    ("batch/v1", "Job", "jobs"),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    ("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
    ("v1", "Pod", "pods"),
)

Key = tuple[str, str]  # (namespace, OVLLMDeployment name)


def index_id(kind: str) -> str:
    """The kwarg name under which kopf hands an index to handlers."""
    return f"{kind.lower()}_index"


RESOURCE_INDEX = index_id(names.KIND)


def owner_key(namespace: str | None, labels: Mapping) -> Key | None:
    instance = labels.get(INSTANCE)
    return (namespace, instance) if namespace and instance else None


def trimmed(body: Mapping) -> dict:
    """A child as the cache keeps it: a plain copy without managedFields (the largest part, and
    never read)."""
    copied = {key: copy.deepcopy(value) for key, value in body.items() if key != "metadata"}
    copied["metadata"] = {key: copy.deepcopy(value) for key, value in body["metadata"].items()
                          if key != "managedFields"}
    return copied


def pod_summary(body: Mapping) -> dict:
    """What the operator reads of a pod (status.py's scheduling reasons, the autoscaler's targets):
    a fleet has many pods, so the cache keeps only this."""
    metadata, status = body["metadata"], body.get("status") or {}
    return {
        "metadata": {"name": metadata["name"], "labels": dict(metadata.get("labels") or {}),
                     "deletionTimestamp": metadata.get("deletionTimestamp")},
        "status": {"podIP": status.get("podIP"),
                   "conditions": [{key: condition.get(key) for key in ("type", "status", "message")}
                                  for condition in status.get("conditions") or []]},
    }


@dataclass
class Snapshot:
    """One resource and its children as the cache held them at one moment."""

    resource: dict | None  # None: deleted
    children: dict[str, dict[str, dict]] = field(default_factory=dict)  # kind -> name -> object
    confirmed: bool = False  # the resource was read from the API server and still exists

    def child(self, kind: str, name: str) -> dict | None:
        return self.children.get(kind, {}).get(name)

    def of_kind(self, kind: str) -> list[dict]:
        return list(self.children.get(kind, {}).values())

    def pods(self, selector: Mapping[str, str]) -> list[dict]:
        """Pods whose labels match every key of `selector`."""
        return [pod for pod in self.of_kind("Pod")
                if all(pod["metadata"]["labels"].get(key) == value for key, value in selector.items())]


def snapshot(indexes: Mapping, key: Key) -> Snapshot:
    """Copy one resource's entries out of the indexes (call on kopf's event loop)."""
    found = list(indexes[RESOURCE_INDEX].get(key, ()))
    children: dict[str, dict[str, dict]] = {}
    for _, kind, _ in CHILD_KINDS:
        index = indexes.get(index_id(kind))
        if index is None:
            continue
        store = index.get(key, ())
        if store:
            children[kind] = {obj["metadata"]["name"]: obj for obj in store}
    # Values in the indexes are replaced, never changed in place, by later events: sharing them
    # with a worker thread is safe as long as nobody mutates them (reconcile only reads).
    return Snapshot(found[0] if found else None, children)


def keys(indexes: Mapping) -> list[Key]:
    return list(indexes[RESOURCE_INDEX].keys())
