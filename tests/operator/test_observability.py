"""A real Prometheus (Debian's package) scrapes a real engine, a real router in front of it and a real
operator reconciling on the test control plane, while clients load them. Then every query of the
chart's Grafana dashboard and of vLLM's own dashboard must return data, every alert expression of
the chart's PrometheusRule must parse and evaluate, and `promtool` must parse every /metrics."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from operator_testing import CHART, Operator, create, run_helm, wait_for, wait_phase

from conftest import LoggedProcess, Server, free_port, require
from prometheus_testing import (
    prometheus_binary,
    promtool_binary,
    promtool_check_metrics,
    promtool_check_rules,
    running_prometheus,
)

pytestmark = pytest.mark.e2e

MODEL = "tiny"
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval for a 1 s scrape is 4 scrapes at least; one minute holds the load
# Every panel of vLLM's Grafana dashboard, restated from vLLM's
# examples/observability/prometheus_grafana/grafana.json (its `expr`s, with $model_name and
# $__rate_interval as Grafana fills them in): title -> queries.
VLLM_DASHBOARD = {
    "E2E Request Latency": [
        'histogram_quantile(0.99, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}'
        '[$__rate_interval])))',
        'rate(vllm:e2e_request_latency_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\n'
        'rate(vllm:e2e_request_latency_seconds_count{model_name="$model_name"}[$__rate_interval])'],
    "Token Throughput": [
        'rate(vllm:prompt_tokens_total{model_name="$model_name"}[$__rate_interval])',
        'rate(vllm:generation_tokens_total{model_name="$model_name"}[$__rate_interval])'],
    "Inter Token Latency": [
        'histogram_quantile(0.99, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}'
        '[$__rate_interval])))',
        'rate(vllm:inter_token_latency_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\n'
        'rate(vllm:inter_token_latency_seconds_count{model_name="$model_name"}[$__rate_interval])'],
    "Scheduler State": [
        'vllm:num_requests_running{model_name="$model_name"}',
        'vllm:num_requests_waiting{model_name="$model_name"}'],
    "Time To First Token Latency": [
        'histogram_quantile(0.99, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}'
        '[$__rate_interval])))',
        'rate(vllm:time_to_first_token_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\n'
        'rate(vllm:time_to_first_token_seconds_count{model_name="$model_name"}[$__rate_interval])'],
    "Cache Utilization": ['vllm:kv_cache_usage_perc{model_name="$model_name"}'],
    "Request Prompt Length": [
        'sum by(le) (increase(vllm:request_prompt_tokens_bucket{model_name="$model_name"}[$__rate_interval]))'],
    "Request Generation Length": [
        'sum by(le) (increase(vllm:request_generation_tokens_bucket{model_name="$model_name"}[$__rate_interval]))'],
    "Finish Reason": [
        'sum by(finished_reason) (increase(vllm:request_success_total{model_name="$model_name"}[$__rate_interval]))'],
    "Queue Time": ['rate(vllm:request_queue_time_seconds_sum{model_name="$model_name"}[$__rate_interval])'],
    "Requests Prefill and Decode Time": [
        'rate(vllm:request_prefill_time_seconds_sum{model_name="$model_name"}[$__rate_interval])',
        'rate(vllm:request_decode_time_seconds_sum{model_name="$model_name"}[$__rate_interval])'],
    "Max Generation Token in Sequence Group": [
        'rate(vllm:request_max_num_generation_tokens_sum{model_name="$model_name"}[$__rate_interval])'],
}
# Panels of vLLM's older dashboard (before V1) that read names V1 deprecated: ovllm keeps them.
VLLM_OLD_DASHBOARD = {
    "Time Per Output Token Latency": [
        'histogram_quantile(0.99, sum by(le) (rate(vllm:time_per_output_token_seconds_bucket'
        '{model_name="$model_name"}[$__rate_interval])))'],
    "Scheduler State (swapped)": ['vllm:num_requests_swapped{model_name="$model_name"}'],
    "Cache Utilization (GPU)": ['vllm:gpu_cache_usage_perc{model_name="$model_name"}'],
}
VARIABLE = re.compile(r"\$\{?(\w+)")


def fill(expr: str, model: str = MODEL) -> str:
    """A dashboard query as Grafana sends it: its variables replaced."""
    filled = expr.replace("$__rate_interval", RATE_INTERVAL).replace("${model_name}", model)
    filled = filled.replace("$model_name", model)
    left = VARIABLE.findall(filled)
    assert not left, f"unknown variables {left} in {expr!r}"
    return filled


def chart_objects(helm: Path) -> tuple[dict, list[dict]]:
    """The chart's dashboard (JSON) and its PrometheusRule's groups, as `helm template` renders them."""
    out = run_helm(helm, "template", "ovllm", str(CHART), "--namespace", "ovllm-system",
                   "--set", "dashboards.enabled=true", "--set", "alerts.enabled=true").stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get(
        "grafana_dashboard") == "1"]
    (dashboard_json,) = configmap["data"].values()
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return json.loads(dashboard_json), rule["spec"]["groups"]


def panels(dashboard: dict) -> dict[str, list[str]]:
    """Every panel with queries (rows nest theirs): title -> its targets' expressions."""
    found = {}
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs = [t["expr"] for t in inner.get("targets", []) if t.get("expr")]
            if exprs:
                found[inner["title"]] = exprs
    return found


class Router(LoggedProcess):
    def __init__(self, backend: str, log_path: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__("ovllm router", [sys.executable, "-m", "ovllm_cli", "router", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--backend", backend], log_path)


def load(base_url: str, rounds: int = 3) -> None:
    """Plain, streamed, n=2 and repeated (prefix-cached) requests from 4 clients at once."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    shared = " ".join(f"word{i}" for i in range(60))
    errors: list[Exception] = []

    def one(index: int) -> None:
        try:
            for _ in range(rounds):
                client.completions.create(model=MODEL, prompt=shared + f" {index}", max_tokens=24, n=1 + index % 2,
                                          extra_body={"ignore_eos": index % 3 != 0})
                stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                        max_tokens=16, stream=True)
                for _ in stream:
                    pass
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.fixture
def fleet(helm, api, control_plane, namespace, tiny_ov_fp32, tmp_path):
    """An engine, a router in front of it, and an operator with one autoscaled resource; what
    Prometheus should scrape."""
    require(prometheus_binary() is not None and promtool_binary() is not None,
            "Debian's prometheus package (prometheus, promtool): run `make prometheus`")
    engine = Server(tiny_ov_fp32, "--served-model-name", MODEL, "--max-num-seqs", "4",
                    log_path=tmp_path / "engine.log", env={"VLLM_OPENVINO_KVCACHE_SPACE": "1"})
    operator = Operator(control_plane.kubeconfig, tmp_path / "operator.log", "--autoscale-seconds", "1")
    router = None
    try:
        engine.wait_ready()
        router = Router(engine.base_url, tmp_path / "router.log")
        router._wait_healthy(30)
        # one resource, autoscaled from 1 to its minimum of 2: the autoscaler scales, then holds
        # on metrics it cannot read (the kwok pods' addresses answer nothing)
        create(api, namespace, "observed", {"model": {"imagePath": "/opt/models/qwen"}, "cpu": {"memory": "8Gi"},
                                            "replicas": 1,
                                            "autoscaling": {"minReplicas": 2, "maxReplicas": 3, "target": 4}})
        wait_phase(api, namespace, "observed", "Ready", timeout=120)
        yield {"engine": engine, "router": router, "operator": operator}
    finally:
        for process in (router, engine):
            if process is not None:
                process.stop()
        operator.stop()


def test_dashboards_and_alerts_have_data_from_a_real_prometheus(helm, fleet, tmp_path):
    dashboard, groups = chart_objects(helm)
    ours = panels(dashboard)
    assert len(ours) >= 12, sorted(ours)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}))
    ok, output = promtool_check_rules(rules_file)
    assert ok, output

    engine, router, operator = fleet["engine"], fleet["router"], fleet["operator"]
    targets = {"ovllm-engine": [engine.base_url.removeprefix("http://")],
               "ovllm-router": [router.base_url.removeprefix("http://")],
               "ovllm-operator": [f"127.0.0.1:{operator.metrics_port}"]}
    # the labels the operator's ServiceMonitor (podTargetLabels) and annotation scrapes give engine targets
    labels = {"ovllm-engine": {"app_kubernetes_io_component": "engine", "app_kubernetes_io_instance": "observed"},
              "ovllm-router": {"app_kubernetes_io_component": "router", "app_kubernetes_io_instance": "observed"}}
    with running_prometheus(targets, rule_files=[rules_file], labels=labels) as prometheus:
        prometheus.wait_for('up{job="ovllm-engine"} == 1', 30)
        engine_down = next(rule["expr"] for group in groups for rule in group["rules"]
                           if rule.get("alert") == "OVLLMEngineDown")
        (selected,) = prometheus.query(engine_down.removesuffix(" == 0"))  # the alert watches this engine only
        assert selected["metric"]["job"] == "ovllm-engine"
        prometheus.wait_for('ovllm_operator_autoscaler_steps_total{reason="MetricUnavailable"}', 60)
        load(router.base_url)
        time.sleep(3)  # a few scrapes after the last request

        for job, url in (("engine", engine.base_url), ("router", router.base_url),
                         ("operator", f"http://127.0.0.1:{operator.metrics_port}")):
            import httpx

            ok, output = promtool_check_metrics(httpx.get(url + "/metrics", timeout=10).text)
            assert "error" not in output.lower(), f"promtool check metrics on the {job}'s /metrics: {output}"

        empty = [(title, expr) for title, exprs in {**ours, **VLLM_DASHBOARD, **VLLM_OLD_DASHBOARD}.items()
                 for expr in exprs if not prometheus.query(fill(expr))]
        assert not empty, "queries without data:\n" + "\n".join(f"{t}: {e}" for t, e in empty)

        alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
        assert len(alerts) == 5
        for rule in alerts:
            prometheus.query(rule["expr"])  # raises with Prometheus's message when it does not parse

        def evaluated() -> dict[str, dict]:
            rules = {r["name"]: r for g in prometheus.rules() for r in g["rules"]}
            done = all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules.values())
            return rules if len(rules) == len(alerts) and done else None

        rules = wait_for("Prometheus to evaluate every rule of the chart without error", evaluated, 30)
        # the autoscaler holds on metrics it cannot read (kwok's pods answer nothing): that alert is pending
        assert rules["OVLLMAutoscalerMetricsMissing"]["state"] == "pending", rules["OVLLMAutoscalerMetricsMissing"]
        # the engine answers: its down alert is not
        assert rules["OVLLMEngineDown"]["state"] == "inactive"
