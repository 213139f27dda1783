"""kopf peering: replicas of the operator find each other through one peering object, and only the
one with the highest priority works. kopf expects the object to exist; the operator makes it."""

from __future__ import annotations

import logging

from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
GROUP, VERSION = "kopf.dev", "v1"


def ensure_peering(api: CustomObjectsApi, name: str, namespaces: list[str]) -> None:
    """Create the ClusterKopfPeering (cluster-wide) or one KopfPeering per namespace, unless present."""
    for namespace in namespaces or [None]:
        try:
            if namespace is None:
                api.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings",
                                                 _body("ClusterKopfPeering", name))
            else:
                api.create_namespaced_custom_object(GROUP, VERSION, namespace, "kopfpeerings",
                                                    _body("KopfPeering", name))
        except ApiException as exc:
            if exc.status != 409:
                # Without the object (or the right to make it) kopf still runs, uncoordinated.
                log.warning("cannot create the peering object %s (%s %s): is crds/kopf-peering.yaml applied?",
                            name, exc.status, exc.reason)


def _body(kind: str, name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
