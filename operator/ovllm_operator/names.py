"""Names and labels of an OVLLMDeployment's children, in one place so builders, status and tests agree."""

from __future__ import annotations

import hashlib
import json
import re

GROUP = "ovllm.io"
VERSION = "v1alpha1"
PLURAL = "ovllmdeployments"
KIND = "OVLLMDeployment"
FIELD_MANAGER = "ovllm-operator"

ENGINE_PORT = 8000
MODELS_MOUNT = "/models"  # the model cache volume, in the conversion Job and the engine pods
SOURCE_MOUNT = "/source"  # a pvc source, read-only


def selector_labels(name: str) -> dict[str, str]:
    """What selects a resource's engine pods: stable for the resource's life (a Deployment's selector
    is immutable)."""
    return {"app.kubernetes.io/name": "ovllm-engine", "app.kubernetes.io/instance": name}


def labels(name: str, component: str = "engine") -> dict[str, str]:
    """Labels of a child. Only the engine's carry the engine selector: a conversion pod must never
    count as a replica, nor receive traffic from the Service."""
    return {
        "app.kubernetes.io/name": f"ovllm-{component}",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    }


def router_selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ovllm-router", "app.kubernetes.io/instance": name}


def router_name(name: str) -> str:
    """The router's Deployment, ServiceAccount, Role and RoleBinding."""
    return f"{name}-router"


def engines_service_name(name: str) -> str:
    """The headless Service of the engine pods, whose EndpointSlices the router watches."""
    return f"{name}-engines"


def selector_string(name: str) -> str:
    """The engine pods' selector as the scale subresource and HPAs read it (status.selector)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc:{port}/v1"


def digest(value) -> str:
    """A short, stable hash of any JSON value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def conversion_key(source: str, weight_format: str, trust_remote_code: bool) -> str:
    """Identifies one conversion's output: a change of any of these needs a new IR directory."""
    return digest([source, weight_format, trust_remote_code])


def model_dir_name(source: str, weight_format: str, key: str) -> str:
    """The IR directory's name on the cache volume: readable, and unique per conversion."""
    last = source.rstrip("/").rsplit("/", 1)[-1].split("@")[0] or "model"
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", last)[:60]
    return f"{slug}--{weight_format}--{key}"


def job_name(name: str, spec_digest: str) -> str:
    # A Job's name goes into its pods' job-name label, whose value may not exceed 63 characters.
    return f"{name[:40]}-convert-{spec_digest[:8]}"


def cache_claim_name(name: str) -> str:
    return f"{name}-model-cache"
