"""The router's children, when spec.router is enabled: a Deployment of `ovllm router` pods in front
of the engines, the headless Service whose EndpointSlices tell it where the engines are, and the
ServiceAccount, Role and RoleBinding that let it read those and nothing else. Pure functions, as
builders.py's; the pods share its security and placement rules (pods.py).
"""

from __future__ import annotations

from ovllm_operator import names, pods
from ovllm_operator.builders import PRESTOP_SECONDS, TERMINATION_GRACE_SECONDS, Resource


def engines_service(resource: Resource) -> dict:
    """A headless Service of the engine pods: its EndpointSlices list the ready engines, which the
    router watches, and Prometheus scrapes the engines through it while the main Service fronts
    the router."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": resource.metadata(names.engines_service_name(resource.name)),
        "spec": {
            "clusterIP": "None",
            "selector": names.selector_labels(resource.name),
            "ports": [{"name": "http", "port": names.ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def router_args(resource: Resource) -> list[str]:
    router = resource.spec.router
    return ["router", "--host", "0.0.0.0", "--port", str(names.ENGINE_PORT),
            "--service", names.engines_service_name(resource.name), "--namespace", resource.namespace,
            "--strategy", router.strategy, "--prefix-chars", str(router.prefix_chars),
            "--load-factor", str(router.load_factor)]


def router_deployment(resource: Resource) -> dict:
    """The router's pods: small, anywhere a pod of the resource may run (no instruction-set floor),
    with a token to watch EndpointSlices and nothing else."""
    spec, router = resource.spec, resource.spec.router
    limits = {"cpu": router.cpu, "memory": router.memory}
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": "router",
        "image": router.image,
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["ovllm"],
        "args": router_args(resource),
        "ports": [{"name": "http", "containerPort": names.ENGINE_PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(limits), "limits": limits},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
        # The router stops listening on SIGTERM: first let the Service's endpoints drop this pod.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "serviceAccountName": names.router_name(resource.name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": pods.pod_security(fs_group=False),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        # Streams in flight finish before the pod goes.
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        **pods.placement(spec),
    }
    metadata = {"labels": names.labels(resource.name, "router")}
    if spec.metrics.enabled:
        metadata["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(names.ENGINE_PORT),
                                   "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": resource.metadata(names.router_name(resource.name), component="router"),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": names.router_selector_labels(resource.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {"metadata": metadata, "spec": pod_spec},
        },
    }


def router_access(resource: Resource) -> list[dict]:
    """The router's ServiceAccount, and a Role that lets it read EndpointSlices in its namespace
    only (the operator can grant no more than it holds itself)."""
    name = names.router_name(resource.name)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": resource.metadata(name, component="router"),
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": resource.metadata(name, component="router"),
         "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": resource.metadata(name, component="router"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": resource.namespace}]},
    ]


def router_children(resource: Resource) -> list[dict]:
    """Everything the router needs, in the order to apply it (access before the pods use it)."""
    return [*router_access(resource), engines_service(resource), router_deployment(resource)]
