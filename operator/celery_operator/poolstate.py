"""PURE: what the autoscaler knows of one pool between polls, and how a poll moves it on.

A `PoolState` is an immutable value: the poller, its only writer, computes the next one with the
functions below and replaces the old one whole (a reconcile reads it while a poll is under way, and
never sees a pool half-updated). The order of a poll: `measured` (the reading), `held` (a paused or
resumed pool, or one the policy has not decided yet: the count the reconciler renders), `decided` (the
policy's answer), and `scaled` once `/scale` was patched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from celery_operator import autoscale
from celery_operator.brokers.base import DepthReport
from celery_operator.decide import PoolScale
from celery_operator.models import Autoscaling
from celery_operator.waits import Wait, longest


@dataclass(frozen=True)
class PoolState:
    desired: int | None = None
    history: autoscale.History | None = None
    last_scale_time: str | None = None
    depth: int | None = None
    in_flight: int | None = None
    source: str | None = None
    wait: Wait | None = None
    events: autoscale.ScaleEvents = field(default_factory=autoscale.ScaleEvents)  # for scaleUp/scaleDown policies
    paused: bool = False  # as last seen (a resume starts afresh from the Deployment's replicas)
    schedule: str | None = None  # the schedule whose window raises the minimum, as of the last poll
    fallback: bool = False  # the fallback count applies (the broker failed failureThreshold polls in a row)

    def view(self) -> PoolScale:
        return PoolScale(self.desired, self.depth, self.in_flight, self.source, self.last_scale_time,
                         None if self.wait is None else int(self.wait.seconds), self.schedule, self.fallback)

    def resume(self) -> PoolState:
        """Forget what the autoscaler knew before a pause: it continues from the Deployment's replicas."""
        return dataclasses.replace(self, paused=False, desired=None, history=None, events=autoscale.ScaleEvents())


def measured(st: PoolState, report: DepthReport | None, queues: Sequence[str],
             waits: Mapping[str, Wait | None]) -> PoolState:
    """The pool's reading of this poll (its queues' total depth and longest wait). A failed poll knows
    neither, and keeps the source of the last reading for the status."""
    if report is None:
        return dataclasses.replace(st, depth=None, in_flight=None, wait=None)
    return dataclasses.replace(st, depth=report.ready(queues), in_flight=report.in_flight(queues),
                               source=report.source, wait=longest(waits.get(q) for q in queues))


def held(st: PoolState, policy: Autoscaling, desired: int, paused: bool, now: float) -> PoolState:
    """The pool at a count that is not the policy's to decide: the one the reconciler renders. A paused pool
    stays there, with nothing decided (no fallback; the schedule shown is the one in force); a pool resumed
    forgets what the policy knew before the pause and continues from that count."""
    if paused:
        return dataclasses.replace(st, paused=True, desired=desired,
                                   schedule=autoscale.schedule_floor(policy, now)[1], fallback=False)
    return dataclasses.replace(st.resume() if st.paused else st, desired=desired)


def policy_depth(policy: Autoscaling, report: DepthReport | None, queues: Sequence[str],
                 total: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """The (ready, in-flight) the policy decides on: the queues' `total` unless the policy weighs the queues
    or takes the deepest one. A queue the broker did not report counts as empty."""
    if policy.queue_aggregation == "Sum" and not policy.queue_weights:
        return total
    rows = [(q, None, None) if report is None else
            (q, d.ready, d.in_flight) if (d := report.queues.get(q)) is not None else (q, 0, 0)
            for q in queues]
    return autoscale.pool_depth(policy, rows)


def decided(st: PoolState, decision: autoscale.Decision) -> PoolState:
    """What the policy's decision leaves for the next one (the replicas change only once `/scale` is patched)."""
    return dataclasses.replace(st, history=decision.history, schedule=decision.schedule, fallback=decision.fallback)


def scaled(st: PoolState, current: int, desired: int, now: float, at: str, policy: Autoscaling) -> PoolState:
    """The pool once its Deployment's `/scale` went from `current` to `desired` at `now` (`at` for the status):
    the scaling policies count the change."""
    return dataclasses.replace(st, desired=desired, last_scale_time=at,
                               events=st.events.record(now, current, desired, policy))
