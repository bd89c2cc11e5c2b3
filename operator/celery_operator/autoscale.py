"""The autoscaling policy: a pure function from measurements and history to replicas.

No I/O and no clock: the caller passes `now` and keeps the returned `History` for the next call.

Semantics (mirroring the Kubernetes HPA, with KEDA-style activation for scale to/from zero):

* depth = ready messages (+ in-flight messages when `countInFlight` and the count is known).
* on depth (`targetMessagesPerReplica`): ceil(depth / targetMessagesPerReplica).
* on wait (`targetWaitSeconds`, the wait of `waits.py`): like the HPA's utilization ratio,
  ceil(workers * wait / targetWaitSeconds), where workers are the pool's ready replicas (the ones
  whose consuming produced that wait; the current count when unknown). While the wait exceeds the
  target this is never below the current count: replicas still starting would otherwise read as a
  reason to scale down, and a wait that keeps growing while they start does not compound. An unknown
  wait (a backlog without timestamps or drain rate yet) recommends the current count: it never
  scales down, and leaves scaling up to the depth target if there is one.
* raw recommendation = clamp(the larger of the two, min, max) (only the targets that are set).
* Activation applies only when ``minReplicas == 0``: while depth <= activationMessages the raw
  recommendation is 0 (idle), so a pool at zero stays there and a running pool goes to zero only
  once the scale-down window has passed; above activation it is at least 1. With ``minReplicas > 0``
  the pool never goes below min, so activation has nothing to decide.
* Stabilization (HPA ``stabilizeRecommendation``): every raw recommendation is recorded with its
  time. Scale up goes only to the LOWEST recommendation made within the scale-up window, scale
  down only to the HIGHEST made within the scale-down window; a window of 0 means "immediately".
  A recommendation made at ``t`` is inside a window ``w`` while ``now - t < w``.
* The first decision for a pool (history ``None``, e.g. after an operator restart) seeds the
  history with the current replica count (clamped to [min, max]) as the HPA does, so a restart
  never causes an immediate scale-down.
* The stabilized count is finally clamped to [min, max].
* Missing data (depth ``None``: broker unreachable) never scales down: the result is
  ``max(current, min)``. That is the one case where the result may lie outside [min, max]:
  a current count above max is held until depth is known again. History is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from celery_operator.models import Autoscaling
from celery_operator.waits import Wait

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True)
class Recommendation:
    at: float  # seconds (any epoch, as long as the caller is consistent)
    replicas: int


@dataclass(frozen=True)
class History:
    """Raw recommendations of one pool, oldest first, kept for max(window) seconds."""

    entries: tuple[Recommendation, ...] = ()

    def within(self, now: float, seconds: float) -> tuple[int, ...]:
        """Replica counts recommended in the last `seconds` (a window of 0 holds nothing)."""
        return tuple(r.replicas for r in self.entries if 0 <= now - r.at < seconds)

    def record(self, now: float, replicas: int, keep_seconds: float) -> History:
        """A new history with `replicas` recorded at `now`, minus entries no window can reach."""
        kept = tuple(r for r in self.entries if 0 <= now - r.at < keep_seconds)
        if keep_seconds > 0:
            kept += (Recommendation(now, replicas),)
        return History(kept)

    def to_pairs(self) -> list[tuple[float, int]]:
        return [(r.at, r.replicas) for r in self.entries]

    @classmethod
    def of_pairs(cls, pairs: list[tuple[float, int]] | tuple[tuple[float, int], ...]) -> History:
        return cls(tuple(Recommendation(float(at), int(n)) for at, n in sorted(pairs)))


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    history: History | None  # None only when it was None and data was missing
    reason: str
    raw: int | None = None  # the unstabilized recommendation; None when data was missing

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def direction(self) -> Direction:
        if self.desired > self.current:
            return "up"
        return "down" if self.desired < self.current else "none"


def clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


def measured_depth(policy: Autoscaling, ready: int, in_flight: int | None) -> int:
    """Messages the pool should be sized for."""
    counted = in_flight if policy.count_in_flight and in_flight is not None else 0
    return ready + counted


def wait_recommendation(policy: Autoscaling, wait: Wait | None, workers: int | None, current: int) -> int | None:
    """Replicas for the wait target; None when the policy has none."""
    target = policy.target_wait_seconds
    if target is None:
        return None
    if wait is None:
        return current
    base = workers if workers is not None else current
    wanted = math.ceil(round(base * wait.seconds / target, 9))
    return max(wanted, current) if wait.seconds > target else wanted


def raw_recommendation(policy: Autoscaling, ready: int, in_flight: int | None, wait: Wait | None = None,
                       workers: int | None = None, current: int = 0) -> int:
    """clamp(the larger target's replicas, min, max), with activation deciding 0 vs >= 1 when min is 0."""
    depth = measured_depth(policy, ready, in_flight)
    if policy.min_replicas == 0 and depth <= policy.activation_messages:
        return 0
    wanted = [n for n in (_depth_recommendation(policy, depth), wait_recommendation(policy, wait, workers, current))
              if n is not None]
    return clamp(max(wanted), max(policy.min_replicas, 1), policy.max_replicas)


def _depth_recommendation(policy: Autoscaling, depth: int) -> int | None:
    target = policy.target_messages_per_replica
    return None if target is None else math.ceil(depth / target)


def total_depth(queues: Iterable[tuple[int | None, int | None]]) -> tuple[int | None, int | None]:
    """Sum (ready, in_flight) over a pool's queues. One unknown queue makes the sum unknown: a
    partial count would look like a smaller backlog and scale the pool down."""
    ready: int | None = 0
    in_flight: int | None = 0
    for r, f in queues:
        ready = None if ready is None or r is None else ready + r
        in_flight = None if in_flight is None or f is None else in_flight + f
    return ready, in_flight


def _depth_text(policy: Autoscaling, ready: int, in_flight: int | None) -> str:
    text = f"{ready} messages ready"
    if policy.count_in_flight:
        text += f" + {in_flight} in flight" if in_flight is not None else " + in-flight unknown"
    elif in_flight is not None:
        text += f" ({in_flight} in flight not counted)"
    return text


def _wait_text(policy: Autoscaling, wait: Wait | None, workers: int | None, current: int) -> str:
    n = wait_recommendation(policy, wait, workers, current)
    if wait is None:
        return f"wait unknown (no publish timestamp nor drain rate yet): {n} kept"
    base = workers if workers is not None else current
    text = f"{wait.describe()} with {base} ready workers / {policy.target_wait_seconds}s target → {n}"
    return text + " (not fewer while over the target)" if wait.seconds > (policy.target_wait_seconds or 0) else text


def decide(
    policy: Autoscaling,
    *,
    ready: int | None,
    in_flight: int | None,
    current: int,
    now: float,
    history: History | None,
    wait: Wait | None = None,
    workers: int | None = None,
) -> Decision:
    """The replica count a pool should have now, and the history to pass to the next call.

    `ready` is the number of ready messages summed over the pool's queues, ``None`` when it could
    not be measured; `in_flight` the unacknowledged messages, ``None`` when unknown; `wait` the pool's
    wait (waits.longest of its queues'), ``None`` when unknown (only read with targetWaitSeconds);
    `workers` the pool's ready replicas, ``None`` when unknown.
    """
    if ready is None:
        desired = max(current, policy.min_replicas)
        reason = f"queue depth unknown (broker unreachable): keeping {current} replicas"
        if desired != current:
            reason = (f"queue depth unknown (broker unreachable): raising {current} → "
                      f"{desired} replicas (minReplicas)")
        return Decision(desired, current, history, reason)

    raw = raw_recommendation(policy, ready, in_flight, wait, workers, current)
    depth = measured_depth(policy, ready, in_flight)
    if policy.min_replicas == 0 and depth <= policy.activation_messages:
        reason = (f"{_depth_text(policy, ready, in_flight)} ≤ activation "
                  f"{policy.activation_messages} → 0 (idle)")
    else:
        parts = []
        by_depth = _depth_recommendation(policy, depth)
        if by_depth is not None:
            parts.append(f"{_depth_text(policy, ready, in_flight)} / "
                         f"{policy.target_messages_per_replica} per replica → {by_depth}")
        if policy.target_wait_seconds is not None:
            parts.append(_wait_text(policy, wait, workers, current))
        reason = "; ".join(parts)
        wanted = max(n for n in (by_depth, wait_recommendation(policy, wait, workers, current)) if n is not None)
        if raw != wanted:
            bound = "max" if raw < wanted else "min"
            reason += f", clamped to {bound} {raw}"

    seed = clamp(current, policy.min_replicas, policy.max_replicas)
    past = history if history is not None else History((Recommendation(now, seed),))
    up_window = policy.scale_up_stabilization_seconds
    down_window = policy.scale_down_stabilization_seconds
    up_limit = min((raw, *past.within(now, up_window)))
    down_limit = max((raw, *past.within(now, down_window)))

    stabilized = current
    if stabilized < up_limit:
        stabilized = up_limit
    if stabilized > down_limit:
        stabilized = down_limit
    desired = clamp(stabilized, policy.min_replicas, policy.max_replicas)

    if desired != stabilized:
        reason += f"; {stabilized} is outside [{policy.min_replicas}, {policy.max_replicas}] → {desired}"
    elif desired < raw:
        reason += f"; scale-up stabilization ({up_window}s) keeps {desired}"
    elif desired > raw:
        reason += f"; scale-down stabilization ({down_window}s) keeps {desired}"

    new_history = past.record(now, raw, max(up_window, down_window))
    return Decision(desired, current, new_history, reason, raw)
