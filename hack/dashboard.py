"""Writes the chart's Grafana dashboard, charts/ovllm-operator/dashboards/ovllm.json, from the panel
list below (tests/operator/test_chart.py checks the file is what this writes).

    python hack/dashboard.py            # write it
    python hack/dashboard.py --print    # print it

Queries use only `$model_name` (a multi-value variable of the engines' model names), `$__rate_interval`
and the `$datasource` variable; tests/operator/test_observability.py evaluates every one against a
real Prometheus scraping a real engine, router and operator, and fails on any without data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "charts" / "ovllm-operator" / "dashboards" / "ovllm.json"
M = 'model_name=~"$model_name"'
RATE = "[$__rate_interval]"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def quantiles(metric: str, selector: str = M) -> list[tuple[str, str]]:
    matcher = f"{{{selector}}}" if selector else ""
    return [(f"p{int(q * 100)}", f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{matcher}{RATE})))")
            for q in (0.5, 0.99)]


def mean(metric: str, selector: str = M) -> tuple[str, str]:
    return ("mean", f"sum(rate({metric}_sum{{{selector}}}{RATE})) / sum(rate({metric}_count{{{selector}}}{RATE}))")


# (row, [(title, description, unit, [(legend, expr), ...]), ...])
ROWS = [
    ("Engines", [
        ("Token throughput", "Prompt tokens prefilled and tokens generated per second, all engines.", "short", [
            ("prompt {{model_name}}", f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{M}}}{RATE}))"),
            ("generation {{model_name}}", f"sum by (model_name) (rate(vllm:generation_tokens_total{{{M}}}{RATE}))")]),
        ("Requests running and waiting", "Sequences in the running batch and queued, all engines.", "short", [
            ("running {{model_name}}", f"sum by (model_name) (vllm:num_requests_running{{{M}}})"),
            ("waiting {{model_name}}", f"sum by (model_name) (vllm:num_requests_waiting{{{M}}})")]),
        ("Time to first token", "Arrival to first token.", "s",
         [*quantiles("vllm:time_to_first_token_seconds"), mean("vllm:time_to_first_token_seconds")]),
        ("Inter-token latency and TPOT", "Between successive tokens (ITL), and per request from first to last "
         "token (TPOT).", "s", [*quantiles("vllm:inter_token_latency_seconds"),
                                ("TPOT p50", "histogram_quantile(0.5, sum by (le) (rate("
                                 f"vllm:request_time_per_output_token_seconds_bucket{{{M}}}{RATE})))")]),
        ("End-to-end latency", "Arrival to the sequence's last token.", "s",
         quantiles("vllm:e2e_request_latency_seconds")),
        ("Queue, prefill and decode time", "Mean time per sequence waiting for the pipeline, to its first token, "
         "and generating.", "s", [(name, mean(f"vllm:request_{name}_time_seconds")[1])
                                  for name in ("queue", "prefill", "decode")]),
        ("KV cache usage", "Fraction of each engine's KV cache blocks in use (the OVLLMKVCacheNearlyFull alert "
         "fires above 0.9 for 10 minutes).", "percentunit", [
            ("{{instance}}", f"vllm:kv_cache_usage_perc{{{M}}}")]),
        ("Prefix cache hit rate", "Prompt tokens found in the prefix cache over those looked up.", "percentunit", [
            ("hit rate", f"sum(rate(vllm:prefix_cache_hits_total{{{M}}}{RATE})) / "
                         f"sum(rate(vllm:prefix_cache_queries_total{{{M}}}{RATE}))")]),
        ("Finish reasons", "Sequences ended per second: stop, length, abort (client gone), error.", "short", [
            ("{{finished_reason}}", f"sum by (finished_reason) (rate(vllm:request_success_total{{{M}}}{RATE}))")]),
        ("Refused at admission", "Requests answered 429 because the engine's queue was full.", "short", [
            ("{{reason}}", f"sum by (reason) (rate(ovllm:requests_rejected_total{{{M}}}{RATE}))")]),
        ("Tokens per engine step", "Tokens each step computed (prefill and decode).", "short",
         quantiles("vllm:iteration_tokens_total")),
    ]),
    ("Router", [
        ("Router requests by status", "Requests the router answered, by the HTTP status the client got.", "short", [
            ("{{code}}", f"sum by (code) (rate(ovllm_router_requests_total{RATE}))")]),
        ("Requests in flight per backend", "What the router has sent each engine and not yet seen end.", "short", [
            ("{{backend}}", "sum by (backend) (ovllm_router_backend_in_flight)")]),
        ("Retries", "Requests sent on to another backend, by why (0 when none was needed).", "short", [
            ("{{reason}}", f"sum by (reason) (rate(ovllm_router_retries_total{RATE})) or vector(0)")]),
        ("Prefix routing outcomes", "home: the prompt's own backend; spilled: moved on by the load bound; "
         "fallback: no prompt to hash.", "short", [
            ("{{outcome}}", f"sum by (outcome) (rate(ovllm_router_prefix_routes_total{RATE}))")]),
        ("Router latency", "Arrival at the router to the first byte forwarded, and to the response's end.", "s", [
            ("TTFT p99", "histogram_quantile(0.99, sum by (le) (rate("
                         f"ovllm_router_time_to_first_token_seconds_bucket{RATE})))"),
            ("duration p99", "histogram_quantile(0.99, sum by (le) (rate("
                             f"ovllm_router_request_duration_seconds_bucket{RATE})))")]),
        ("Backends", "Engines the router knows and has not ejected.", "short", [
            ("backends", "sum(ovllm_router_backends)")]),
    ]),
    ("Operator", [
        ("Reconciles", "OVLLMDeployment reconciles per second, by trigger and result.", "short", [
            ("{{trigger}} {{result}}", f"sum by (trigger, result) (rate(ovllm_operator_reconciles_total{RATE}))")]),
        ("Reconcile duration", "Time one reconcile took, API calls included.", "s",
         quantiles("ovllm_operator_reconcile_duration_seconds", selector="")),
        ("Autoscaler decisions", "Autoscaler steps by decision (MetricUnavailable: it holds the size, "
         "reading no engine).", "short", [
            ("{{reason}}", f"sum by (reason) (rate(ovllm_operator_autoscaler_steps_total{RATE}))")]),
        ("Scalings", "Times the autoscaler changed spec.replicas.", "short", [
            ("{{direction}}", f"sum by (direction) (increase(ovllm_operator_autoscaler_scalings_total{RATE}))")]),
        ("Children changed", "Children the operator created, updated or deleted.", "short", [
            ("{{kind}} {{action}}", f"sum by (kind, action) (increase(ovllm_operator_child_changes_total{RATE}))")]),
        ("Work queue", "Resources waiting for a reconcile worker (growing: raise --workers), and Events "
         "dropped for too many waiting.", "short", [
            ("waiting", "sum(ovllm_operator_workqueue_depth)"),
            ("events dropped", f"sum(increase(ovllm_operator_events_dropped_total{RATE}))")]),
    ]),
]


def dashboard() -> dict:
    panels, y, ids = [], 0, iter(range(1, 1000))
    for row, members in ROWS:
        panels.append({"type": "row", "title": row, "id": next(ids), "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        for index, (title, description, unit, queries) in enumerate(members):
            panels.append({
                "type": "timeseries", "title": title, "description": description, "id": next(ids),
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 8, "x": 8 * (index % 3), "y": y + 8 * (index // 3)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                            for i, (legend, expr) in enumerate(queries)],
            })
        y += 8 * -(-len(members) // 3)
    return {
        "uid": "ovllm-fleet", "title": "ovllm", "tags": ["ovllm", "vllm"], "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "description": "ovllm engines (vLLM's metric names), router and operator.",
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus"},
            {"type": "query", "name": "model_name", "label": "Model", "datasource": DATASOURCE,
             "query": {"query": "label_values(vllm:num_requests_running, model_name)", "refId": "models"},
             "definition": "label_values(vllm:num_requests_running, model_name)",
             "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--print"]:
        sys.stdout.write(render())
        sys.exit(0)
    if sys.argv[1:]:
        raise SystemExit(__doc__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
