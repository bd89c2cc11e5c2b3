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
  a current count above max is held until depth is known again. The held count is recorded in the
  history like a recommendation, so the scale-down window after the outage starts from it.
  With ``fallback`` set, once ``failed_polls`` reaches its failureThreshold the result is the fallback
  count of its behavior (KEDA's: static, currentReplicas, currentReplicasIfHigher, currentReplicasIfLower),
  never below the minimum; it is never 0 unless the pool is at 0 and the behavior keeps the current count.
* Scheduled minimums (``schedules``): inside a window (from a firing of its cron, for durationSeconds) the
  minimum is raised to the schedule's minReplicas (the largest of the active ones); ``min`` above means that
  raised minimum. Going up to it is immediate, as the HPA does below minReplicas.
* Scaling policies (``scaleUp``/``scaleDown``, the HPA's ``behavior`` policies, exactly its
  calculateScaleUpLimitWithScalingRules / calculateScaleDownLimitWithBehaviors): after stabilization a change
  is limited to what the policies allow from the replicas at each period's start (current - replicas added +
  replicas removed by the scale events of the last periodSeconds: ``ScaleEvents``, recorded by the caller
  after each change it made). Pods: start ± value; Percent: ceil(start * (1 + value/100)) up, and
  int(start * (1 - value/100)) down; selectPolicy Max takes the policy allowing the largest change, Min the
  smallest, Disabled allows none. As in the HPA, the limits apply only while current is within [min, max].
* Queues (``pool_depth``): each queue's depth times its weight (default 1; weight 0 ignores the queue),
  summed (``Sum``) or the deepest one's (``Max``). A weighed queue of unknown depth makes the depth unknown.
* Pause (``pause_of``): a paused pool is not decided at all; the caller holds its replicas.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from celery_operator import api, cron
from celery_operator.models import Autoscaling, Fallback, ScalingRules
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
class ScaleEvent:
    at: float
    change: int  # replicas added (> 0) or removed (< 0)


@dataclass(frozen=True)
class ScaleEvents:
    """The scale events of one pool (the HPA's scaleUpEvents and scaleDownEvents), oldest first, kept for
    the longest policy period."""

    entries: tuple[ScaleEvent, ...] = ()

    def added(self, now: float, seconds: float) -> int:
        return sum(e.change for e in self.entries if e.change > 0 and now - e.at < seconds)

    def removed(self, now: float, seconds: float) -> int:
        return -sum(e.change for e in self.entries if e.change < 0 and now - e.at < seconds)

    def record(self, now: float, before: int, after: int, policy: Autoscaling) -> ScaleEvents:
        """The events with a change from `before` to `after` at `now`, minus those no policy period reaches."""
        keep = max((p.period_seconds for rules in (policy.scale_up, policy.scale_down) if rules is not None
                    for p in rules.policies), default=0)
        kept = tuple(e for e in self.entries if now - e.at < keep)
        if keep and after != before:
            kept += (ScaleEvent(now, after - before),)
        return ScaleEvents(kept)


def _period_start(current: int, events: ScaleEvents, now: float, seconds: int) -> int:
    return current - events.added(now, seconds) + events.removed(now, seconds)


def scale_up_limit(rules: ScalingRules, current: int, events: ScaleEvents, now: float) -> int:
    """The most replicas the policies allow now (the HPA's calculateScaleUpLimitWithScalingRules)."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for p in rules.policies:
        start = _period_start(current, events, now, p.period_seconds)
        proposals.append(start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100)))
    return (min if rules.select_policy == "Min" else max)(proposals)


def scale_down_limit(rules: ScalingRules, current: int, events: ScaleEvents, now: float) -> int:
    """The fewest replicas the policies allow now (the HPA's calculateScaleDownLimitWithBehaviors)."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for p in rules.policies:
        start = _period_start(current, events, now, p.period_seconds)
        proposals.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
    return (max if rules.select_policy == "Min" else min)(proposals)


# -- pause ------------------------------------------------------------------------------------------------

_TRUE, _FALSE = frozenset({"1", "t", "true"}), frozenset({"0", "f", "false"})  # Go's strconv.ParseBool, as KEDA


@dataclass(frozen=True)
class Pause:
    """Whether a pool's scaling is paused, and at which count (None: the Deployment's own)."""

    paused: bool = False
    replicas: int | None = None
    source: str = ""  # what paused it, for messages
    problem: str | None = None  # a pause annotation that cannot be read (the pool is then paused at its count)


def pause_of(annotations: Mapping[str, str], policy: Autoscaling | None) -> Pause:
    """A pool's pause, from its annotations and spec.autoscaling (either pauses). The count: a valid
    paused-replicas annotation, else spec.autoscaling.pausedReplicas, else the Deployment's. An annotation
    that cannot be read pauses (its author meant to pause) at that fallback count and names the problem."""
    sources, problems = [], []
    count: int | None = None
    flag = annotations.get(api.ANNOTATION_PAUSED)
    if flag is not None:
        if flag.strip().lower() in _TRUE:
            sources.append(f"annotation {api.ANNOTATION_PAUSED}")
        elif flag.strip().lower() not in _FALSE:
            sources.append(f"annotation {api.ANNOTATION_PAUSED}")
            problems.append(f"annotation {api.ANNOTATION_PAUSED} is {flag!r}: write \"true\" or \"false\"")
    raw = annotations.get(api.ANNOTATION_PAUSED_REPLICAS)
    if raw is not None:
        sources.append(f"annotation {api.ANNOTATION_PAUSED_REPLICAS}")
        text = raw.strip()
        top = policy.max_replicas if policy is not None else None
        if not text.isdigit():
            problems.append(f"annotation {api.ANNOTATION_PAUSED_REPLICAS} is {raw!r}: write a replica count, "
                            "e.g. \"2\"")
        elif top is not None and int(text) > top:
            problems.append(f"annotation {api.ANNOTATION_PAUSED_REPLICAS} is {raw!r}, above maxReplicas {top}: "
                            f"write a count from 0 to {top}")
        else:
            count = int(text)
    if policy is not None and policy.paused:
        sources.append("spec.autoscaling.paused")
    if not sources:
        return Pause()
    if count is None and policy is not None:
        count = policy.paused_replicas
    problem = "; ".join(problems) + "; the pool is held at its replicas meanwhile" if problems else None
    return Pause(True, count, " and ".join(sources), problem)


def paused_replicas(pause: Pause, live: int | None, otherwise: int) -> int:
    """The replicas of a paused pool: its paused count, else the Deployment's (a count set by hand included),
    else (no Deployment yet) `otherwise`."""
    if pause.replicas is not None:
        return pause.replicas
    return live if live is not None else otherwise


# -- fallback, schedules, queues ----------------------------------------------------------------------------

def fallback_replicas(fb: Fallback, current: int) -> int:
    """KEDA's fallback behaviors."""
    if fb.behavior == "currentReplicas":
        return current
    if fb.behavior == "currentReplicasIfHigher":
        return max(current, fb.replicas)
    if fb.behavior == "currentReplicasIfLower":
        return min(current, fb.replicas)
    return fb.replicas


def schedule_floor(policy: Autoscaling, now: float) -> tuple[int, str | None]:
    """The minimum in force at `now` (minReplicas, raised by the active schedules' windows) and the name of
    the schedule that sets it (None when none raises it). A schedule with an invalid cron or time zone is
    skipped (the operator reports it)."""
    floor, name = policy.min_replicas, None
    for s in policy.schedules:
        try:
            start = cron.window_start(s.cron, s.timezone, s.duration_seconds, now)
        except ValueError:
            continue
        if start is not None and (s.min_replicas > floor or (name is None and s.min_replicas == floor)):
            floor, name = s.min_replicas, s.name
    return floor, name


def pool_depth(policy: Autoscaling, queues: Sequence[tuple[str, int | None, int | None]]
               ) -> tuple[int | None, int | None]:
    """(ready, in_flight) to scale on, from each queue's (name, ready, in_flight): weighted, then summed or
    the deepest queue's (by ready + in-flight when counted). Unknown ready of a weighed queue: unknown; unknown
    in-flight of one: in-flight unknown."""
    weighed = [(policy.weight(q), r, f) for q, r, f in queues if policy.weight(q) > 0]
    if any(r is None for _, r, _ in weighed):
        return None, None
    if policy.queue_aggregation == "Max":
        if not weighed:
            return 0, 0
        w, r, f = max(weighed, key=lambda x: x[0] * measured_depth(policy, x[1] or 0, x[2]))
        return w * (r or 0), None if f is None else w * f
    ready = sum(w * (r or 0) for w, r, _ in weighed)
    in_flight = None if any(f is None for _, _, f in weighed) else sum(w * (f or 0) for w, _, f in weighed)
    return ready, in_flight


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    history: History | None  # None only when it was None and data was missing
    reason: str
    raw: int | None = None  # the unstabilized recommendation; None when data was missing
    fallback: bool = False  # the fallback count applies (the broker failed failureThreshold polls)
    schedule: str | None = None  # the schedule whose window raised the minimum

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
    failed_polls: int = 0,
    events: ScaleEvents | None = None,
) -> Decision:
    """The replica count a pool should have now, and the history to pass to the next call.

    `ready` is the number of ready messages summed over the pool's queues, ``None`` when it could
    not be measured; `in_flight` the unacknowledged messages, ``None`` when unknown; `wait` the pool's
    wait (waits.longest of its queues'), ``None`` when unknown (only read with targetWaitSeconds);
    `workers` the pool's ready replicas, ``None`` when unknown; `failed_polls` the app's broker polls failed
    in a row (for the fallback); `events` the pool's scale events (for the scaling policies).
    """
    floor, active = schedule_floor(policy, now)
    minimum = f"minReplicas of schedule {active}" if active is not None else "minReplicas"
    fb = policy.fallback
    if ready is None and fb is not None and failed_polls >= fb.failure_threshold:
        wanted = fallback_replicas(fb, current)
        desired = max(wanted, floor)
        reason = (f"queue depth unknown for {failed_polls} polls in a row (broker unreachable): fallback "
                  f"{fb.behavior} with {fb.replicas} replicas → {wanted}")
        if desired != wanted:
            reason += f", raised to {minimum} {desired}"
        return Decision(desired, current, history, reason, fallback=True, schedule=active)
    if ready is None:
        desired = max(current, floor)
        reason = f"queue depth unknown (broker unreachable): keeping {current} replicas"
        if desired != current:
            reason = (f"queue depth unknown (broker unreachable): raising {current} → "
                      f"{desired} replicas ({minimum})")
        # The held count is recorded as this poll's recommendation: once the broker answers again its
        # first readings (a RabbitMQ still recovering its queues reports them empty) are stabilized
        # against the outage's count, not against the readings from before it.
        held = (history or History()).record(now, desired, max(policy.scale_up_stabilization_seconds,
                                                                 policy.scale_down_stabilization_seconds))
        return Decision(desired, current, held, reason, schedule=active)
    if floor != policy.min_replicas:
        policy = dataclasses.replace(policy, min_replicas=floor)

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
        bounds = f"[{policy.min_replicas}, {policy.max_replicas}]"
        reason += f"; {stabilized} is outside {bounds}{f' (schedule {active})' if active else ''} → {desired}"
    elif desired < raw:
        reason += f"; scale-up stabilization ({up_window}s) keeps {desired}"
    elif desired > raw:
        reason += f"; scale-down stabilization ({down_window}s) keeps {desired}"

    past_events = events if events is not None else ScaleEvents()
    if policy.min_replicas <= current <= policy.max_replicas:
        if desired > current and policy.scale_up is not None:
            limit = max(scale_up_limit(policy.scale_up, current, past_events, now), current)
            if desired > limit:
                desired = limit
                reason += f"; scaleUp policies ({policy.scale_up.select_policy}) allow {limit} now"
        elif desired < current and policy.scale_down is not None:
            limit = min(scale_down_limit(policy.scale_down, current, past_events, now), current)
            if desired < limit:
                desired = limit
                reason += f"; scaleDown policies ({policy.scale_down.select_policy}) allow {limit} now"

    new_history = past.record(now, raw, max(up_window, down_window))
    return Decision(desired, current, new_history, reason, raw, schedule=active)
