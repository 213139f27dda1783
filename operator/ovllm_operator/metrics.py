"""The operator's own Prometheus metrics (`ovllm operator --metrics-port`), for its ServiceMonitor."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "ovllm_operator_reconciles_total", "Reconciles of OVLLMDeployment resources", ["trigger", "result"]
)
RECONCILE_SECONDS = Histogram(
    "ovllm_operator_reconcile_duration_seconds", "Time one reconcile took, API calls included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHILD_CHANGES = Counter(
    "ovllm_operator_child_changes_total", "Children the operator created, updated or deleted", ["kind", "action"]
)
TRANSITIONS = Counter(
    "ovllm_operator_condition_transitions_total", "Status condition changes", ["type", "status", "reason"]
)
SCALINGS = Counter(
    "ovllm_operator_autoscaler_scalings_total", "Times the autoscaler changed spec.replicas", ["direction"]
)
AUTOSCALE_STEPS = Counter(
    "ovllm_operator_autoscaler_steps_total", "Autoscaler steps by decision reason", ["reason"]
)
QUEUE_DEPTH = Gauge(
    "ovllm_operator_workqueue_depth", "OVLLMDeployments waiting for a reconcile worker"
)
AUTOSCALE_READ_SECONDS = Histogram(
    "ovllm_operator_autoscaler_read_duration_seconds",
    "Time to read one resource's engine pods' /metrics (bounded by the per-pod timeout)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
)
EVENTS_DROPPED = Counter(
    "ovllm_operator_events_dropped_total", "Events not posted because too many were waiting"
)
