"""The autoscaler's step outside the decision itself: which pods it reads."""

from __future__ import annotations

from ovllm_operator.autoscaler import metrics_targets


def pod(name: str, ip: str | None, ready: bool = True, deleting: bool = False) -> dict:
    metadata = {"name": name, **({"deletionTimestamp": "2026-11-21T00:00:00Z"} if deleting else {})}
    return {"metadata": metadata, "status": {"podIP": ip, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_only_ready_pods_with_an_address_that_are_not_going_away_are_read():
    pods = [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False), pod("c", None),
            pod("d", "10.0.0.4", deleting=True), pod("e", "fd00::5")]
    assert metrics_targets(pods) == [("a", "http://10.0.0.1:8000/metrics"), ("e", "http://[fd00::5]:8000/metrics")]
