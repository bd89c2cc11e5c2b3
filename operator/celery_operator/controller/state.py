"""What the operator remembers about one app between cycles (in memory; rebuilt after a restart).

The API server holds everything else: the reconciler reads it from the watch-fed caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery_operator import autoscale
from celery_operator.brokers.base import DepthReport
from celery_operator.decide import Poll, PoolScale
from celery_operator.endpoints import Endpoint
from celery_operator.plan import Memory, Polled
from celery_operator.pollstats import Statistics
from celery_operator.topology import Topology
from celery_operator.waits import DrainMeter, Wait


@dataclass
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

    def resume(self) -> None:
        """Forget what the autoscaler knew before a pause: it continues from the Deployment's replicas."""
        self.paused, self.desired, self.history, self.events = False, None, None, autoscale.ScaleEvents()


@dataclass
class AppState:
    """One app's state, each part with one writer: `reconciled` the reconciler's (an immutable value it
    replaces), the rest the poller's. A pool's drain is the scale-in's (controller/scalein_executor.py), the
    connections closed after worker restarts stale_connections' (each keeps its own)."""

    uid: str
    reconciled: Memory = field(default_factory=Memory)
    pools: dict[str, PoolState] = field(default_factory=dict)
    broker_up: bool | None = None
    poll_error: str | None = None
    report: DepthReport | None = None
    polled_at: float = float("-inf")  # monotonic, of the last poll
    statistics: Statistics = field(default_factory=Statistics)  # the last statistics listing (pollstats)
    drains: dict[str, DrainMeter] = field(default_factory=dict)  # per queue
    waits: dict[str, Wait | None] = field(default_factory=dict)  # per queue, as of the last poll
    last_seen: tuple[object, ...] = ()  # what the last poll showed (a status-only reconcile follows a change)
    failed_polls: int = 0  # broker polls failed in a row (the pools' fallback counts them)
    # Poison tasks: the quarantine records (newest first) as of the last poll; None when not read, and why.
    quarantined: list[Any] | None = None
    quarantine_problem: str | None = None

    # What the last reconcile saw, for the poller and the scale-in (read-only here).
    @property
    def topology(self) -> Topology | None:
        return self.reconciled.topology

    @property
    def broker(self) -> Endpoint | None:
        return self.reconciled.broker

    @property
    def backend(self) -> Endpoint | None:
        return self.reconciled.backend

    @property
    def transport_options(self) -> dict[str, Any] | None:
        return self.reconciled.transport_options

    def seen(self) -> tuple[object, ...]:
        """What a poll can change in the app's statuses (a status-only reconcile follows when it changed)."""
        report = self.report
        queues = tuple(sorted((n, d.ready, d.in_flight, d.consumers) for n, d in report.queues.items())) \
            if report is not None else None
        pools = tuple(sorted((n, p.desired, p.depth, p.in_flight, p.source, p.last_scale_time,
                              p.view().wait_seconds, p.paused, p.schedule, p.fallback)
                             for n, p in self.pools.items()))
        quarantined = None if self.quarantined is None else tuple(str(r.get("id")) for r in self.quarantined)
        return self.broker_up, self.poll_error, queues, pools, self.failed_polls, quarantined, \
            self.quarantine_problem

    def poll(self) -> Poll:
        return Poll(self.broker_up, self.poll_error, self.report, self.failed_polls)

    def scale(self) -> dict[str, PoolScale]:
        return {name: p.view() for name, p in self.pools.items()}

    def paused(self) -> frozenset[str]:
        """The pools the poller last saw paused."""
        return frozenset(n for n, p in self.pools.items() if p.paused)

    def polled(self) -> Polled:
        return Polled(self.poll(), self.polled_at, self.quarantined, self.quarantine_problem)
