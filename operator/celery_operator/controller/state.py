"""What the operator remembers about one app between cycles (in memory; rebuilt after a restart).

The API server holds everything else: the reconciler reads it from the watch-fed caches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator.decide import Poll, PoolScale
from celery_operator.endpoints import Endpoint
from celery_operator.plan import Memory, Polled
from celery_operator.pollstats import Statistics
from celery_operator.poolstate import PoolState
from celery_operator.topology import Topology
from celery_operator.waits import DrainMeter, Wait


@dataclass(frozen=True)
class Findings:
    """One poll's findings, replaced whole once per poll: what the statuses show (`polled`), and what the next
    poll carries on from (the last statistics listing and the queues' drain meters)."""

    polled: Polled = field(default_factory=Polled)
    statistics: Statistics = field(default_factory=Statistics)  # the last statistics listing (pollstats)
    drains: Mapping[str, DrainMeter] = field(default_factory=dict)  # per queue
    waits: Mapping[str, Wait | None] = field(default_factory=dict)  # per queue, as of the last poll that read them


@dataclass
class AppState:
    """One app's state: immutable values, each replaced whole by its one owner, so that a reader never sees
    one half-written. `reconciled` is the reconciler's; `findings`, `pools` and `last_seen` are the poller's
    (`pools` also when a drain's task scales, through the poller's `_scale`). Others only read them; a pool's
    drain is the scale-in's (controller/scalein_executor.py), the connections closed after worker restarts
    stale_connections' (each keeps its own)."""

    uid: str
    first_seen: float = 0.0  # monotonic: when this process first saw the app (its first render's hold)
    reconciled: Memory = field(default_factory=Memory)
    findings: Findings = field(default_factory=Findings)
    pools: Mapping[str, PoolState] = field(default_factory=dict)  # the autoscaled pools'
    last_seen: tuple[object, ...] = ()  # what the last poll showed (a status-only reconcile follows a change)

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
        polled = self.findings.polled
        poll, report = polled.poll, polled.poll.report
        queues = tuple(sorted((n, d.ready, d.in_flight, d.consumers) for n, d in report.queues.items())) \
            if report is not None else None
        pools = tuple(sorted((n, p.desired, p.depth, p.in_flight, p.source, p.last_scale_time,
                              p.view().wait_seconds, p.paused, p.schedule, p.fallback)
                             for n, p in self.pools.items()))
        quarantined = None if polled.quarantined is None else tuple(str(r.get("id")) for r in polled.quarantined)
        return poll.broker_up, poll.error, queues, pools, poll.failed_polls, quarantined, polled.quarantine_problem

    def poll(self) -> Poll:
        return self.findings.polled.poll

    def scale(self) -> dict[str, PoolScale]:
        return {name: p.view() for name, p in self.pools.items()}

    def paused(self) -> frozenset[str]:
        """The pools the poller last saw paused."""
        return frozenset(n for n, p in self.pools.items() if p.paused)

    def polled(self) -> Polled:
        return self.findings.polled
