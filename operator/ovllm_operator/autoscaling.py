"""How many engine replicas the load asks for: Kubernetes HPA v2's algorithm, on the engines' own metrics.

Pure: the caller reads the pods (engine_metrics.read_all) and passes the readings and the time, so
every rule below is unit-tested with explicit clocks.

Each decision, for one OVLLMDeployment with `current` replicas (its spec.replicas):

1. Out of bounds first. If current is below minReplicas or above maxReplicas (replicas set by hand,
   or the bounds changed), the answer is the nearest bound at once (`BelowMinimum`, `AboveMaximum`).
2. No data, no change. If no pod could be read (none ready, or every read failed) replicas stay as
   they are (`MetricUnavailable`); missing data never scales down.
3. The recommendation: replicas = ceil(sum of the readable pods' values / target), where target is
   the wanted average per replica (waiting requests, in-flight requests, or a KV cache fraction
   such as 0.8). If the average is within `tolerance` (10%) of the target, the recommendation is
   the current count, so that a load hovering around the target does not flap. It is then kept
   within [minReplicas, maxReplicas].
4. Partial data scales up, never down. If some pods could not be read, what was read may still
   ask for more replicas; a smaller count is refused (`PartialMetrics`), since the unread pods may
   be the busy ones.
5. Stabilisation windows, as HPA's `behavior`: each recommendation is remembered with its time.
   Scaling up goes to the smallest recommendation of the last scaleUpWindow seconds, so a spike
   shorter than the window does not scale up (with a window of 0 it scales up at once). Scaling
   down goes to the largest recommendation of the last scaleDownWindow seconds, so replicas are
   removed only after the load has stayed low for the whole window, and only as far as the busiest
   moment in it allows. Otherwise replicas hold: `Stabilizing` while a window holds back a
   change, `WithinTarget` when none is wanted.
6. After the operator starts, the first decision for a resource remembers the current count as
   if it had been recommended just then: the operator does not know the load before it started,
   so a restart never scales down (or up) before the window has passed.

The metrics (engine_metrics.METRICS): `waitingRequests` counts requests an engine holds beyond the
sequences it runs, so it rises only once an engine is saturated (--max-num-seqs or its KV cache
full); `inFlightRequests` is running plus waiting; `kvCacheUsage` is the fraction of the KV cache in
use (0 to 1). Averages are over the pods that could be read, i.e. the ready ones.

`now` is any clock in seconds that only goes forward (time.monotonic()); a recommendation exactly
a window old no longer counts, as in HPA. The history lives in memory, per resource; `forget` drops
it when the resource is deleted. With minReplicas 0 and no replica there is nothing to read, so a
resource scaled to zero stays there (MetricUnavailable) until someone scales it up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ovllm_operator.engine_metrics import Reading

REASONS = ("BelowMinimum", "AboveMaximum", "MetricUnavailable", "PartialMetrics", "ScaleUp", "ScaleDown",
           "Stabilizing", "WithinTarget")


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    metric: str  # a key of engine_metrics.METRICS
    target: float  # the wanted average per replica
    scale_up_window: float  # seconds
    scale_down_window: float  # seconds
    tolerance: float = 0.1

    def __post_init__(self):
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= minReplicas ({self.min_replicas}) <= maxReplicas ({self.max_replicas})")
        if self.target <= 0:
            raise ValueError(f"the target must be above 0, not {self.target}")
        if min(self.scale_up_window, self.scale_down_window, self.tolerance) < 0:
            raise ValueError("windows and tolerance must not be negative")

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    value: float | None  # the average over the readable pods; None when none was readable
    readable: int
    unreadable: int
    reason: str
    message: str

    @property
    def scales(self) -> bool:
        return self.desired != self.current


def _num(x: float) -> str:
    return f"{round(x, 3):g}"


def _errors(unread: list[Reading], limit: int = 3) -> str:
    named = "; ".join(f"{r.pod}: {r.error}" for r in unread[:limit])
    return named + (f"; and {len(unread) - limit} more" if len(unread) > limit else "")


class Recommender:
    """Decisions for many resources, each keyed (e.g. namespace/name) with its own history."""

    def __init__(self):
        self._history: dict[str, list[tuple[float, int]]] = {}  # key -> [(time, recommendation)]

    def forget(self, key: str) -> None:
        self._history.pop(key, None)

    def decide(self, key: str, policy: Policy, current: int, readings: list[Reading], now: float) -> Decision:
        self._history.setdefault(key, [(now, current)])  # seeds the first decision: rule 6
        read = [r for r in readings if r.value is not None]
        unread = [r for r in readings if r.value is None]

        def decision(desired: int, reason: str, message: str, average: float | None = None) -> Decision:
            return Decision(current, desired, average, len(read), len(unread), reason, message)

        if current < policy.min_replicas:
            return decision(policy.min_replicas, "BelowMinimum",
                            f"{current} replica(s) is below minReplicas {policy.min_replicas}: scaling up to it")
        if current > policy.max_replicas:
            return decision(policy.max_replicas, "AboveMaximum",
                            f"{current} replica(s) is above maxReplicas {policy.max_replicas}: scaling down to it")
        if not read:
            why = _errors(unread) if unread else "no ready engine pod to read"
            return decision(current, "MetricUnavailable",
                            f"no {policy.metric} readable ({why}): holding {current} replica(s)")

        total = sum(r.value for r in read)
        average = total / len(read)
        observed = (f"average {policy.metric} {_num(average)} per ready replica over {len(read)} pod(s), "
                    f"target {_num(policy.target)}")
        if abs(average / policy.target - 1) <= policy.tolerance:
            wanted = current
            observed += f" (within the {_num(policy.tolerance * 100)}% tolerance)"
        else:
            # The epsilon keeps float noise (0.6000000000000001 / 0.2) from asking for one replica more.
            wanted = math.ceil(total / policy.target - 1e-9)
            observed += f": {wanted} replica(s) wanted"
            if wanted > policy.max_replicas:
                observed += f", capped at maxReplicas {policy.max_replicas}"
            elif wanted < policy.min_replicas:
                observed += f", raised to minReplicas {policy.min_replicas}"
        recommendation = policy.clamp(wanted)
        partial_hold = bool(unread) and recommendation < current
        # A refused scale-down is remembered as a hold, so that the down window cannot reach past it.
        recorded = current if partial_hold else recommendation
        up = policy.clamp(min(r for _, r in self._within(key, now, policy.scale_up_window, recorded)))
        down = policy.clamp(max(r for _, r in self._within(key, now, policy.scale_down_window, recorded)))
        self._remember(key, policy, now, recorded)
        if unread:
            observed += f"; {len(unread)} pod(s) unreadable ({_errors(unread)})"
        if partial_hold:
            return decision(current, "PartialMetrics", f"{observed}; not scaling down on partial data", average)

        if current < up:
            return decision(up, "ScaleUp", f"{observed}; scaling up from {current} to {up}", average)
        if current > down:
            return decision(down, "ScaleDown", f"{observed}; scaling down from {current} to {down}", average)
        if recommendation > current:
            return decision(current, "Stabilizing",
                            f"{observed}; holding {current}: the last {_num(policy.scale_up_window)}s "
                            f"(scale-up window) also recommended {up}", average)
        if recommendation < current:
            return decision(current, "Stabilizing",
                            f"{observed}; holding {current}: the last {_num(policy.scale_down_window)}s "
                            f"(scale-down window) also recommended {down}", average)
        return decision(current, "WithinTarget", f"{observed}; keeping {current} replica(s)", average)

    def _within(self, key: str, now: float, window: float, recommendation: int) -> list[tuple[float, int]]:
        """The recommendations of the last `window` seconds, now's included. As in HPA, only those newer
        than the cutoff count, so a window of 0 holds just now's (and the seed expires with it)."""
        return [(t, r) for t, r in self._history[key] if t > now - window] + [(now, recommendation)]

    def _remember(self, key: str, policy: Policy, now: float, recommendation: int) -> None:
        """Keep now's recommendation; drop those older than the longest window: no rule looks further back."""
        longest = max(policy.scale_up_window, policy.scale_down_window)
        self._history[key] = self._within(key, now, longest, recommendation)
