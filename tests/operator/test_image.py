"""The operator image as the chart deploys it: `helm install` with the built image's reference, then
the chart's own pod template (command, arguments, environment, user, read-only root, dropped
capabilities, emptyDir) run by Docker with what the kubelet would add, a ServiceAccount token mounted
where every pod has it and KUBERNETES_SERVICE_HOST/PORT, against the test control plane. It must
log in in-cluster with the chart's rights alone and reconcile an OVLLMDeployment into its Deployment
and status."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from urllib.parse import urlparse

import pytest
from operator_testing import CHART, create, run_helm, service_account_token, wait_phase

from conftest import free_port
from images_testing import empty_dir, image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _service_account_volume(path, kube, control_plane, namespace: str, name: str):
    """What the kubelet mounts into a pod of this ServiceAccount: token, CA and namespace."""
    path.mkdir()
    kubeconfig = json.loads(control_plane.kubeconfig.read_text())
    ca = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    (path / "ca.crt").write_bytes(ca)
    (path / "token").write_text(service_account_token(kube, namespace, name))
    (path / "namespace").write_text(namespace)
    for item in (path, *path.iterdir()):
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def test_the_operator_image_runs_as_the_chart_deploys_it(docker_images, helm, control_plane, kube, api,
                                                          namespace, tmp_path):
    docker = docker_images
    release, release_namespace = "img", f"ovllm-img-{uuid.uuid4().hex[:6]}"
    repository, tag = image("operator").split(":")
    run_helm(helm, "install", release, str(CHART), "--kubeconfig", str(control_plane.kubeconfig), "--namespace",
             release_namespace, "--create-namespace", "--set", f"image.repository={repository}", "--set",
             f"image.tag={tag}", "--wait", "--timeout", "120s")
    try:
        deployment = api.apps.read_namespaced_deployment(f"{release}-ovllm-operator", release_namespace)
        pod = kube.sanitize_for_serialization(deployment.spec.template.spec)
        (container,) = pod["containers"]
        assert container["image"] == image("operator")

        # Host network (the API server listens on loopback): move the probe and metrics ports off the
        # ones this machine may use; everything else is the chart's.
        liveness, metrics = free_port(), free_port()
        args = [arg for arg in container["args"] if not arg.startswith(("--liveness-port", "--metrics-port"))]
        args += [f"--liveness-port={liveness}", f"--metrics-port={metrics}"]
        account = _service_account_volume(tmp_path / "serviceaccount", kube, control_plane, release_namespace,
                                          pod["serviceAccountName"])
        server = urlparse(control_plane.server)
        container = {**container, "env": [*container.get("env", []),
                                          {"name": "KUBERNETES_SERVICE_HOST", "value": server.hostname},
                                          {"name": "KUBERNETES_SERVICE_PORT", "value": str(server.port)}],
                     "volumeMounts": [*container["volumeMounts"],
                                      {"name": "token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}]}
        name = f"{docker.network}-operator"
        docker.run_pod_container(pod, container, {"tmp": empty_dir(tmp_path / "tmp"), "token": account}, name=name,
                                 detach=True, network="host", args=args)

        docker.wait_answering(name, f"http://127.0.0.1:{liveness}/healthz", timeout=60)  # the chart's probe

        create(api, namespace, "chat", {"model": {"hub": "Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": 2})
        ready = wait_phase(api, namespace, "chat", "Ready", 120)
        assert ready["status"]["readyReplicas"] == 2
        engines = api.apps.read_namespaced_deployment("chat", namespace)
        assert engines.spec.replicas == 2 and engines.spec.template.spec.containers[0].args[0] == "serve"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
            assert b"ovllm_operator_reconciles_total{" in answer.read()  # a sample, not only its HELP
        log = docker.logs(name)
        assert "Forbidden" not in log and "status=403" not in log, log
        assert "Traceback" not in log, log

        docker("stop", "--time", str(pod.get("terminationGracePeriodSeconds", 30)), name, timeout=120)
        assert docker.state(name)["ExitCode"] == 0, docker.logs(name)
    finally:
        run_helm(helm, "uninstall", release, "--kubeconfig", str(control_plane.kubeconfig), "--namespace",
                 release_namespace, "--wait", check=False)
        api.core.delete_namespace(release_namespace)
