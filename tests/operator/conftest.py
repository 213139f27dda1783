"""Fixtures for the operator's tests: a real Kubernetes control plane (hack/controlplane.py: etcd,
kube-apiserver, controller-manager, scheduler, kwok's fake NFD-labelled nodes), a client for it and
a fresh namespace per test.

The binaries are built by `make controlplane`; nothing here downloads or builds anything. Set
OVLLM_TEST_KUBECONFIG to the kubeconfig of a running cluster (e.g. one from
`python hack/controlplane.py up --dir DIR`) to reuse it instead of starting one per session.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    """Import a file as module `name`, once. Why not `from conftest import ...`: this file is itself
    imported as module `conftest` (pytest drops tests/conftest.py from sys.modules first), so the
    name would resolve to this half-imported file."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


_shared = _load("ovllm_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
# Re-exported: test modules collected after this file that do `from conftest import ...` get this one.
ROOT, IN_CI, require, require_module = _shared.ROOT, _shared.IN_CI, _shared.require, _shared.require_module
free_port, Server, LoggedProcess = _shared.free_port, _shared.Server, _shared.LoggedProcess
controlplane = _load("ovllm_controlplane", ROOT / "hack" / "controlplane.py")
NODES = controlplane.NODES
FAILS_TO_CONVERT = controlplane.FAILS_TO_CONVERT


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """A running control plane for the whole session: `.kubeconfig` (a path), `.bin_dir` (kubectl's
    directory) and `.logs_tail()` (every component's last log lines, for failure messages)."""
    existing = os.environ.get("OVLLM_TEST_KUBECONFIG")
    if existing:
        require(Path(existing).is_file(), f"OVLLM_TEST_KUBECONFIG={existing} is not a file")
        yield controlplane.attach(existing)
        return
    lacking = controlplane.missing()
    require(not lacking, f"control plane binaries ({', '.join(lacking)}) in {controlplane.install_dir()}; "
                         "build them with `make controlplane` (python hack/controlplane.py install)")
    plane = controlplane.start(tmp_path_factory.mktemp("controlplane"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary, built from its Go module by `make controlplane`."""
    path = controlplane.helm_path()
    require(path.is_file(), f"helm at {path}; build it with `make controlplane` "
                            "(python hack/controlplane.py install --helm)")
    return path


@pytest.fixture(scope="session")
def kube(control_plane):
    """A kubernetes.client.ApiClient for the control plane, as its admin."""
    require_module("kubernetes", "operator")
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield api_client
    api_client.close()


def create_namespace(core, name: str) -> str:
    """Create a namespace and return its name once its default ServiceAccount exists: until then the
    API server refuses pods created in it."""
    from kubernetes.client.exceptions import ApiException

    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def namespace(kube, request) -> str:
    """A fresh namespace (its name), deleted with everything in it after the test."""
    from kubernetes import client

    core = client.CoreV1Api(kube)
    test = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = create_namespace(core, f"t-{test}-{uuid.uuid4().hex[:6]}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def api(control_plane, kube):
    """The CRDs installed, volumes for model caches, and the typed API clients."""
    import yaml
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from operator_testing import GROUP, PLURAL, wait_for

    extensions = client.ApiextensionsV1Api(kube)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            try:
                extensions.create_custom_resource_definition(crd)
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def established():
        crd = extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for("the CRD to be established", established, 30)

    class Api:
        custom = client.CustomObjectsApi(kube)
        core = client.CoreV1Api(kube)
        apps = client.AppsV1Api(kube)
        batch = client.BatchV1Api(kube)
        policy = client.PolicyV1Api(kube)
        autoscaling = client.AutoscalingV2Api(kube)
        rbac = client.RbacAuthorizationV1Api(kube)
        ext = extensions

    # Volumes for model caches: the claims the operator creates bind to them (the PV binder is real),
    # through a default storage class as a cluster would have (examples name no class).
    Api.storage = client.StorageV1Api(kube)
    try:
        Api.storage.create_storage_class({
            "metadata": {"name": "manual", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"})
    except ApiException as exc:
        if exc.status != 409:
            raise
    for index in range(16):
        try:
            Api.core.create_persistent_volume({
                "metadata": {"name": f"cache-{index}"},
                "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"],
                         "storageClassName": "manual", "hostPath": {"path": f"/tmp/ovllm-cache-{index}"}},
            })
        except ApiException as exc:
            if exc.status != 409:
                raise
    return Api
