"""The Helm chart with the real `helm` (built from its Go module by hack/controlplane.py): lint,
templates with default and other values, a wrong value refused, and an install into the real
control plane whose ServiceAccount's rights are enough to run the operator on the examples."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_testing import CHART, Operator, run_helm, service_account_kubeconfig, wait_for, wait_phase

from conftest import ROOT, create_namespace


def template(helm: Path, *values: str) -> list[dict]:
    out = run_helm(helm, "template", "ovllm", str(CHART), "--namespace", "ovllm-system", *values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def test_chart_crds_are_the_repository_crds():
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        assert (CHART / "crds" / path.name).read_bytes() == path.read_bytes(), f"charts/.../crds/{path.name} differs"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (ROOT / "crds").iterdir())


def test_lint_with_default_and_other_values(helm, tmp_path):
    run_helm(helm, "lint", "--strict", str(CHART))
    other = tmp_path / "values.yaml"
    other.write_text(yaml.safe_dump({"watchNamespaces": ["team-a", "team-b"], "replicaCount": 2,
                                     "metrics": {"port": 9090, "serviceMonitor": {"enabled": True}}}))
    run_helm(helm, "lint", "--strict", str(CHART), "-f", str(other))


def _rules(docs: list[dict]) -> list[dict]:
    return [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]


def test_default_install_is_cluster_wide_locked_down_and_least_privilege(helm):
    docs = template(helm)
    assert sorted(doc["kind"] for doc in docs) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["resources"]["limits"]
    assert container["command"] == ["ovllm"] and container["args"][0] == "operator"
    assert not any(arg.startswith("--namespace") for arg in container["args"])
    assert container["image"] == "ghcr.io/ovllm/ovllm-operator:0.1.0"
    for rule in _rules(docs):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule


def test_namespace_scoped_install_has_roles_only(helm):
    docs = template(helm, "--set", "watchNamespaces={team-a,team-b}", "--set", "metrics.serviceMonitor.enabled=true",
                    "--set", "replicaCount=2")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    assert sorted(role["metadata"]["namespace"] for role in by_kind(docs, "Role")) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCount=-1", "replicaCount"),
    ("logFormat=xml", "logFormat"),
    ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ("unknownValue=1", "unknownValue"),
    ("dashboards.enabled=yes", "dashboards/enabled"),
    ("alerts.queueThreshold=-1", "alerts/queueThreshold"),
])
def test_a_wrong_value_fails_at_install_time_naming_it(helm, value, message):
    result = run_helm(helm, "template", "ovllm", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_dashboard_configmap_for_grafanas_sidecar(helm):
    import json
    import re
    import subprocess
    import sys

    assert not [doc for doc in template(helm) if doc["kind"] in ("ConfigMap", "PrometheusRule")]  # off by default
    docs = template(helm, "--set", "dashboards.enabled=true", "--set", "dashboards.namespace=monitoring",
                    "--set", "dashboards.annotations.grafana_folder=LLM")
    (configmap,) = by_kind(docs, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    dashboard = json.loads(configmap["data"]["ovllm.json"])
    # the chart's file is what hack/dashboard.py writes
    written = subprocess.run([sys.executable, str(ROOT / "hack" / "dashboard.py"), "--print"], capture_output=True,
                             text=True)
    assert (CHART / "dashboards" / "ovllm.json").read_text() == written.stdout, written.stderr
    assert dashboard["uid"] == "ovllm-fleet"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Engines", "Router", "Operator"]
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 25
    variables = {v for expr in queries for v in re.findall(r"\$\{?(\w+)", expr)}
    assert variables <= {"model_name", "__rate_interval"}, variables
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model_name"}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert [t for t in panel["targets"] if t["expr"].strip()], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
    # nowhere else in the JSON either (legends, variable queries); $__all is Grafana's "All" as a value
    everywhere = set(re.findall(r"\$\{?(\w+)", configmap["data"]["ovllm.json"]))
    assert everywhere <= {"model_name", "__rate_interval", "datasource", "__all"}, everywhere
    (models,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model_name"]
    assert models["includeAll"] and models["allValue"] == ".*"
    assert models["definition"] == "label_values(vllm:num_requests_running, model_name)"
    # extra labels never replace the sidecar's
    docs = template(helm, "--set", "dashboards.enabled=true", "--set-string", "dashboards.labels.grafana_dashboard=0",
                    "--set", "dashboards.labels.team=ml")
    (configmap,) = by_kind(docs, "ConfigMap")
    labels = configmap["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "ml"
    assert configmap["metadata"]["namespace"] == "ovllm-system"


def test_prometheus_rule_alerts(helm):
    docs = template(helm, "--set", "alerts.enabled=true", "--set", "alerts.labels.release=prometheus",
                    "--set", "alerts.ruleLabels.team=ml", "--set", "alerts.queueThreshold=3")
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert sorted(alerts) == ["OVLLMAutoscalerMetricsMissing", "OVLLMConversionFailed", "OVLLMEngineDown",
                              "OVLLMKVCacheNearlyFull", "OVLLMQueueGrowing"]
    for alert in alerts.values():
        assert alert["labels"]["team"] == "ml" and alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert alerts["OVLLMKVCacheNearlyFull"]["for"] == "10m" and "> 0.9" in alerts["OVLLMKVCacheNearlyFull"]["expr"]
    assert "> 3" in alerts["OVLLMQueueGrowing"]["expr"]
    assert alerts["OVLLMEngineDown"]["expr"] == 'up{app_kubernetes_io_component="engine"} == 0'
    for alert in alerts.values():
        assert alert["for"] and alert["expr"], alert["alert"]
    assert "ConversionFailed" in alerts["OVLLMConversionFailed"]["expr"]
    assert 'reason="MetricUnavailable"' in alerts["OVLLMAutoscalerMetricsMissing"]["expr"]
    # a severity in ruleLabels replaces each alert's own (no duplicate keys); the selector is a value
    docs = template(helm, "--set", "alerts.enabled=true", "--set", "alerts.ruleLabels.severity=page",
                    "--set", "alerts.engineSelector=job=\"my-engines\"")
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {alert["labels"]["severity"] for alert in alerts.values()} == {"page"}
    assert alerts["OVLLMEngineDown"]["expr"] == 'up{job="my-engines"} == 0'


def local_args(deployment) -> list[str]:
    """The chart's operator arguments, with the ports moved off the ones this machine may use."""
    (container,) = deployment.spec.template.spec.containers
    return [arg for arg in container.args[1:] if not arg.startswith(("--liveness-port", "--metrics-port"))]


@pytest.mark.e2e
def test_helm_install_runs_the_examples_with_the_charts_rights_and_uninstalls_cleanly(
        helm, control_plane, kube, api, tmp_path):
    release_namespace = f"ovllm-system-{uuid.uuid4().hex[:6]}"
    kubeconfig = str(control_plane.kubeconfig)
    run_helm(helm, "install", "ovllm", str(CHART), "--kubeconfig", kubeconfig, "--namespace", release_namespace,
             "--create-namespace", "--wait", "--timeout", "120s")
    apps = client.AppsV1Api(kube)
    deployment = apps.read_namespaced_deployment("ovllm-ovllm-operator", release_namespace)
    assert deployment.status.available_replicas == 1  # kwok runs the pod
    client.ApiextensionsV1Api(kube).read_custom_resource_definition("ovllmdeployments.ovllm.io")

    examples_namespace = create_namespace(api.core, f"examples-{uuid.uuid4().hex[:6]}")
    as_chart = service_account_kubeconfig(kube, control_plane.kubeconfig, release_namespace, "ovllm-ovllm-operator",
                                          tmp_path / "operator-kubeconfig")
    operator = Operator(as_chart, tmp_path / "operator.log", *local_args(deployment))
    try:
        names = []
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                doc["metadata"]["namespace"] = examples_namespace
                if doc["kind"] == "Secret":
                    api.core.create_namespaced_secret(examples_namespace, doc)
                else:
                    api.custom.create_namespaced_custom_object("ovllm.io", "v1alpha1", examples_namespace,
                                                               "ovllmdeployments", doc)
                    names.append(doc["metadata"]["name"])
        assert len(names) == 4
        for name in names:
            ready = wait_phase(api, examples_namespace, name, "Ready", 120)
            assert ready["status"]["readyReplicas"] == ready["spec"]["replicas"]
        # kopf logs a refused request as APIForbiddenError(..., status=403).
        assert "Forbidden" not in operator.log() and "status=403" not in operator.log()
    finally:
        operator.stop()
        print(operator.log()[-4000:])
        api.core.delete_namespace(examples_namespace)

    run_helm(helm, "uninstall", "ovllm", "--kubeconfig", kubeconfig, "--namespace", release_namespace, "--wait")
    rbac = client.RbacAuthorizationV1Api(kube)
    leftovers = []
    for what, call in (
        ("Deployment", lambda: apps.read_namespaced_deployment("ovllm-ovllm-operator", release_namespace)),
        ("ServiceAccount", lambda: api.core.read_namespaced_service_account("ovllm-ovllm-operator", release_namespace)),
        ("Service", lambda: api.core.read_namespaced_service("ovllm-ovllm-operator-metrics", release_namespace)),
        ("ClusterRole", lambda: rbac.read_cluster_role("ovllm-ovllm-operator")),
        ("ClusterRoleBinding", lambda: rbac.read_cluster_role_binding("ovllm-ovllm-operator")),
    ):
        try:
            call()
            leftovers.append(what)
        except ApiException as exc:
            assert exc.status == 404
    assert leftovers == []
    # The CRD stays, as Helm keeps every chart's crds/: removing it would delete every user's resources.
    client.ApiextensionsV1Api(kube).read_custom_resource_definition("ovllmdeployments.ovllm.io")
    api.core.delete_namespace(release_namespace)


@pytest.mark.e2e
def test_a_namespace_scoped_install_works_with_roles_alone(helm, control_plane, kube, api, tmp_path):
    watched = create_namespace(api.core, f"team-{uuid.uuid4().hex[:6]}")
    release_namespace = f"ovllm-ns-{uuid.uuid4().hex[:6]}"
    run_helm(helm, "install", "scoped", str(CHART), "--kubeconfig", str(control_plane.kubeconfig),
             "--namespace", release_namespace, "--create-namespace", "--set", f"watchNamespaces={{{watched}}}",
             "--wait", "--timeout", "120s")
    deployment = client.AppsV1Api(kube).read_namespaced_deployment("scoped-ovllm-operator", release_namespace)
    as_chart = service_account_kubeconfig(kube, control_plane.kubeconfig, release_namespace, "scoped-ovllm-operator",
                                          tmp_path / "kubeconfig")
    operator = Operator(as_chart, tmp_path / "operator.log", *local_args(deployment), "--autoscale-seconds", "1")
    try:
        api.custom.create_namespaced_custom_object("ovllm.io", "v1alpha1", watched, "ovllmdeployments", {
            "apiVersion": "ovllm.io/v1alpha1", "kind": "OVLLMDeployment", "metadata": {"name": "scoped"},
            "spec": {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"},
                     "podDisruptionBudget": {"minAvailable": 0}, "router": {"enabled": True},
                     "autoscaling": {"minReplicas": 2, "maxReplicas": 3, "target": 8}}})
        # Below minReplicas: the autoscaler scales up through the scale subresource at once, and
        # the router's Role is granted, with the Roles alone.
        wait_for("the autoscaler to reach minReplicas", lambda: api.custom.get_namespaced_custom_object(
            "ovllm.io", "v1alpha1", watched, "ovllmdeployments", "scoped")["spec"]["replicas"] == 2, 60)
        ready = wait_phase(api, watched, "scoped", "Ready")
        assert ready["status"]["router"]["readyReplicas"] == 1
        assert "Forbidden" not in operator.log()
    finally:
        operator.stop()
        print(operator.log()[-4000:])
        api.core.delete_namespace(watched)
    run_helm(helm, "uninstall", "scoped", "--kubeconfig", str(control_plane.kubeconfig), "--namespace",
             release_namespace, "--wait")
    api.core.delete_namespace(release_namespace)
