"""Autoscaling decisions from readings, with explicit clocks: HPA v2's rules on the engines' metrics."""

from __future__ import annotations

import pytest

from ovllm_operator.autoscaling import REASONS, Decision, Policy, Recommender
from ovllm_operator.engine_metrics import Reading

KEY = "ns/chat"


def policy(**fields) -> Policy:
    defaults = {"min_replicas": 1, "max_replicas": 10, "metric": "waitingRequests", "target": 1.0,
                "scale_up_window": 0.0, "scale_down_window": 0.0}
    return Policy(**{**defaults, **fields})


def readings(*values: float | None) -> list[Reading]:
    return [Reading(f"pod-{i}", v, "" if v is not None else "connection refused") for i, v in enumerate(values)]


def decide(recommender: Recommender, current: int, values: tuple, now: float, **fields) -> Decision:
    result = recommender.decide(KEY, policy(**fields), current, readings(*values), now)
    assert result.reason in REASONS
    return result


def test_recommendation_is_load_over_target():
    result = decide(Recommender(), 2, (3, 4), now=0)
    assert (result.desired, result.reason, result.scales) == (7, "ScaleUp", True)
    assert (result.value, result.readable, result.unreadable) == (3.5, 2, 0)
    assert result.message == ("average waitingRequests 3.5 per ready replica over 2 pod(s), target 1: "
                              "7 replica(s) wanted; scaling up from 2 to 7")


def test_within_tolerance_holds_both_ways():
    # average 2.1 and 1.9 against a target of 2 are within 10%: ceil would give 5 or 4 of 2 replicas
    for values in ((2.1, 2.1), (1.9, 1.9)):
        result = decide(Recommender(), 2, values, now=0, target=2)
        assert (result.desired, result.reason, result.scales) == (2, "WithinTarget", False), values
        assert "within the 10% tolerance" in result.message
    # just outside it: 2.3 per pod asks for ceil(4.6 / 2) = 3
    assert decide(Recommender(), 2, (2.3, 2.3), now=0, target=2).desired == 3
    # a wider tolerance absorbs it
    assert decide(Recommender(), 2, (2.3, 2.3), now=0, target=2, tolerance=0.2).desired == 2


def test_recommendation_is_clamped_to_the_bounds():
    result = decide(Recommender(), 2, (3, 4), now=0, max_replicas=3)
    assert (result.desired, result.reason) == (3, "ScaleUp")
    assert result.message == ("average waitingRequests 3.5 per ready replica over 2 pod(s), target 1: "
                              "7 replica(s) wanted, capped at maxReplicas 3; scaling up from 2 to 3")
    result = decide(Recommender(), 3, (0, 0, 0), now=0, min_replicas=2)
    assert (result.desired, result.reason) == (2, "ScaleDown")
    assert "0 replica(s) wanted, raised to minReplicas 2" in result.message


def test_replicas_outside_the_bounds_move_to_them_at_once():
    # whatever the load and the windows say: someone set spec.replicas by hand, or the bounds changed
    result = decide(Recommender(), 0, (), now=0, min_replicas=2, scale_up_window=300)
    assert (result.desired, result.reason, result.value) == (2, "BelowMinimum", None)
    result = decide(Recommender(), 9, (50, 50), now=0, max_replicas=4, scale_down_window=300)
    assert (result.desired, result.reason) == (4, "AboveMaximum")
    assert result.message == "9 replica(s) is above maxReplicas 4: scaling down to it"


def test_min_equals_max_never_moves():
    recommender = Recommender()
    for now, values in enumerate(((100, 100), (0, 0), (None, None), (5, None))):
        result = decide(recommender, 3, values, now=now, min_replicas=3, max_replicas=3)
        assert (result.desired, result.scales) == (3, False), result


def test_no_readable_pod_holds():
    recommender = Recommender()
    result = decide(recommender, 4, (None, None), now=0)
    assert (result.desired, result.reason, result.value, result.unreadable) == (4, "MetricUnavailable", None, 2)
    assert result.message == ("no waitingRequests readable (pod-0: connection refused; pod-1: connection "
                              "refused): holding 4 replica(s)")
    result = decide(recommender, 4, (), now=1)
    assert (result.desired, result.reason) == (4, "MetricUnavailable")
    assert "no ready engine pod" in result.message


def test_error_list_is_shortened():
    result = decide(Recommender(), 5, (None,) * 5, now=0)
    assert result.message.count("connection refused") == 3
    assert "and 2 more" in result.message


def test_partial_metrics_scale_up_but_never_down():
    # the readable pod alone asks for 6: more replicas are allowed on what was read
    result = decide(Recommender(), 2, (6, None), now=0)
    assert (result.desired, result.reason, result.readable, result.unreadable) == (6, "ScaleUp", 1, 1)
    assert "1 pod(s) unreadable (pod-1: connection refused)" in result.message
    # an idle readable pod would ask for 1: refused, the unread pod may be the busy one
    result = decide(Recommender(), 3, (0, None, 0), now=0)
    assert (result.desired, result.reason, result.value) == (3, "PartialMetrics", 0)
    assert "pod-1: connection refused" in result.message
    assert "not scaling down on partial data" in result.message


def test_partial_hold_counts_in_the_down_window():
    recommender = Recommender()
    decide(recommender, 4, (4, 0, 0, 0), now=0, scale_down_window=60)  # seeds 4, recommends 4
    decide(recommender, 4, (0, 0, 0, None), now=30, scale_down_window=60)  # partial: held at 4
    # at 70 the seed has left the window but the partial hold at 30 has not
    result = decide(recommender, 4, (0, 0, 0, 0), now=70, scale_down_window=60)
    assert (result.desired, result.reason) == (4, "Stabilizing")
    result = decide(recommender, 4, (0, 0, 0, 0), now=91, scale_down_window=60)
    assert (result.desired, result.reason) == (1, "ScaleDown")


def test_up_window_ignores_a_short_spike():
    recommender = Recommender()
    assert decide(recommender, 2, (1, 1), now=0, scale_up_window=60).reason == "WithinTarget"
    spike = decide(recommender, 2, (5, 5), now=10, scale_up_window=60)
    assert (spike.desired, spike.reason) == (2, "Stabilizing")
    assert "scale-up window" in spike.message
    assert decide(recommender, 2, (1, 1), now=20, scale_up_window=60).reason == "WithinTarget"
    # the spike never lasted the window: no scale-up
    assert decide(recommender, 2, (5, 5), now=75, scale_up_window=60).desired == 2


def test_up_window_scales_to_the_smallest_sustained_recommendation():
    recommender = Recommender()
    decide(recommender, 2, (1, 1), now=0, scale_up_window=60)
    for now, values in ((10, (4, 4)), (30, (3, 3)), (50, (5, 5))):
        assert decide(recommender, 2, values, now=now, scale_up_window=60).desired == 2
    # at 65 the last recommendation of 2 (at 0) has left the window: up to the window's smallest, 6
    result = decide(recommender, 2, (6, 6), now=65, scale_up_window=60)
    assert (result.desired, result.reason) == (6, "ScaleUp")


def test_up_window_zero_scales_up_at_once():
    recommender = Recommender()
    decide(recommender, 2, (1, 1), now=0)
    assert decide(recommender, 2, (4, 4), now=0.5).desired == 8


def test_down_window_waits_then_goes_to_the_windows_largest():
    recommender = Recommender()
    kwargs = {"scale_down_window": 300}
    assert decide(recommender, 6, (1,) * 6, now=0, **kwargs).reason == "WithinTarget"
    assert decide(recommender, 6, (0.5,) * 6, now=100, **kwargs).desired == 6  # recommends 3
    held = decide(recommender, 6, (0,) * 6, now=200, **kwargs)  # recommends 1
    assert (held.desired, held.reason) == (6, "Stabilizing")
    assert "scale-down window" in held.message and "also recommended 6" in held.message
    # at 301 the 6 from time 0 is out of the window; its largest is the 3 from time 100
    result = decide(recommender, 6, (0,) * 6, now=301, **kwargs)
    assert (result.desired, result.reason) == (3, "ScaleDown")
    assert decide(recommender, 3, (0,) * 3, now=350, **kwargs).desired == 3
    assert decide(recommender, 3, (0,) * 3, now=401, **kwargs).desired == 1


def test_first_decision_after_start_never_scales_down_at_once():
    # an operator that just started knows no earlier load: the current count counts as recommended now
    recommender = Recommender()
    kwargs = {"scale_down_window": 300}
    held = decide(recommender, 5, (0,) * 5, now=1000, **kwargs)
    assert (held.desired, held.reason) == (5, "Stabilizing")
    assert decide(recommender, 5, (0,) * 5, now=1299, **kwargs).desired == 5
    assert decide(recommender, 5, (0,) * 5, now=1300.5, **kwargs).desired == 1
    # with a down window of 0, nothing is held back
    assert decide(Recommender(), 5, (0,) * 5, now=1000).desired == 1


def test_forget_starts_over_and_keys_are_separate():
    recommender = Recommender()
    kwargs = {"scale_down_window": 300}
    decide(recommender, 5, (0,) * 5, now=0, **kwargs)
    other = recommender.decide("ns/other", policy(**kwargs), 5, readings(0, 0, 0, 0, 0), 400)
    assert other.desired == 5  # its own history: seeded at 400
    assert decide(recommender, 5, (0,) * 5, now=400, **kwargs).desired == 1
    recommender.forget(KEY)
    assert decide(recommender, 5, (0,) * 5, now=401, **kwargs).desired == 5  # seeded again


def test_kv_cache_usage_targets_a_fraction():
    kwargs = {"metric": "kvCacheUsage", "target": 0.6}
    # 3 pods at 0.9 of their KV cache: 2.7 / 0.6 = 4.5 -> 5 replicas
    result = decide(Recommender(), 3, (0.9, 0.9, 0.9), now=0, **kwargs)
    assert (result.desired, result.value) == (5, pytest.approx(0.9))
    assert result.message.startswith("average kvCacheUsage 0.9 per ready replica over 3 pod(s), target 0.6")
    # (0.2 + 0.2 + 0.2) / 0.3 is 2.0000000000000004 in floats: still 2 replicas, not 3
    assert decide(Recommender(), 4, (0.2, 0.2, 0.2), now=0, metric="kvCacheUsage", target=0.3).desired == 2
    assert decide(Recommender(), 2, (0.62, 0.58), now=0, **kwargs).reason == "WithinTarget"


def test_in_flight_requests_sum_over_pods():
    result = decide(Recommender(), 2, (10, 2), now=0, metric="inFlightRequests", target=4)
    assert (result.desired, result.value) == (3, 6)


def test_policy_rejects_impossible_settings():
    for fields in ({"min_replicas": 3, "max_replicas": 2}, {"target": 0}, {"scale_down_window": -1},
                   {"min_replicas": -1}):
        with pytest.raises(ValueError):
            policy(**fields)
