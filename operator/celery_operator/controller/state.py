"""What the operator remembers about one app between cycles (in memory; rebuilt after a restart).

The API server holds everything else: the reconciler reads it from the watch-fed caches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from celery_operator import autoscale
from celery_operator.brokers.base import DeclareResult, DepthReport
from celery_operator.decide import Poll, PoolScale
from celery_operator.endpoints import Endpoint
from celery_operator.models import CeleryWorkerPool
from celery_operator.pollstats import Statistics
from celery_operator.stale import Restart
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
    # A scale-in waiting for busy victims to drain (it scales when done), and the replicas it started from.
    draining: asyncio.Task[None] | None = None
    drain_from: int = 0
    drained: dict[str, float] = field(default_factory=dict)  # pod -> monotonic time it should be gone by
    recheck_drained: bool = True  # look for pods left drained (a new pool state, or a restore that failed)
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
    uid: str
    pools: dict[str, PoolState] = field(default_factory=dict)
    topology: Topology | None = None  # as of the last full reconcile (the poller reads it)
    broker: Endpoint | None = None
    transport_options: dict[str, Any] | None = None
    broker_up: bool | None = None
    poll_error: str | None = None
    report: DepthReport | None = None
    statistics: Statistics = field(default_factory=Statistics)  # the last statistics listing (pollstats)
    drains: dict[str, DrainMeter] = field(default_factory=dict)  # per queue
    waits: dict[str, Wait | None] = field(default_factory=dict)  # per queue, as of the last poll
    declared_hash: str | None = None
    declared_at: float = float("-inf")
    declared: dict[tuple[str, str], DeclareResult] = field(default_factory=dict)
    apply_errors: list[str] = field(default_factory=list)
    held_since: dict[tuple[str, str], float] = field(default_factory=dict)  # workloads waiting for old pods
    failures: int = 0  # reconciles failed in a row
    last_seen: tuple[object, ...] = ()  # what the last poll showed (a status-only reconcile follows a change)
    last_error: str | None = None
    failed_polls: int = 0  # broker polls failed in a row (the pools' fallback counts them)
    backend: Endpoint | None = None  # the result backend, as of the last full reconcile
    # Poison tasks: the quarantine records (newest first) as of the last poll; None when not read, and why.
    quarantined: list[Any] | None = None
    quarantine_problem: str | None = None
    # The app's restarted worker containers, as the last reconcile saw its pods (it reads them on every pod
    # change), and, RabbitMQ only, pod -> the container start whose earlier connections were closed (stale.py).
    worker_restarts: tuple[Restart, ...] = ()
    restarts_seen: dict[str, float] = field(default_factory=dict)

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

    def replicas_for(self, pool: CeleryWorkerPool, live_replicas: int | None) -> int:
        """A pool's replicas: spec.replicas, or the autoscaler's; a new autoscaled pool starts at
        minReplicas and after an operator restart the Deployment's count stands. A paused pool keeps its
        paused count, else the Deployment's (a count set by hand included); once resumed an autoscaled pool
        starts again from the Deployment's count."""
        pause = autoscale.pause_of(pool.meta.annotations, pool.autoscaling)
        if pause.paused:
            st = self.pools.setdefault(pool.meta.name, PoolState())
            otherwise = st.desired if st.desired is not None else (
                pool.autoscaling.min_replicas if pool.autoscaling is not None else pool.replicas)
            st.paused, st.desired = True, autoscale.paused_replicas(pause, live_replicas, otherwise)
            return st.desired
        if pool.autoscaling is None:
            self.pools.pop(pool.meta.name, None)
            return pool.replicas
        st = self.pools.setdefault(pool.meta.name, PoolState())
        if st.paused:
            st.resume()
        if st.desired is None:
            a = pool.autoscaling
            st.desired = a.min_replicas if live_replicas is None else max(a.min_replicas,
                                                                          min(a.max_replicas, live_replicas))
        return st.desired
