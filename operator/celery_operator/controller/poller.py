"""The broker poll of one app: measure queue depth, export it, scale autoscaled pools.

One task per app this replica owns, polling at the smallest `pollIntervalSeconds` of its
autoscaled pools (15 s for metrics when none is autoscaled). Each poll reads every queue's depth in
one request (brokers/), asks the pure policy (autoscale.decide) per pool, patches `/scale` of the
pools it changes, then asks for a status-only reconcile (statuses change only if values did).
Missing data never scales down: the policy holds replicas and the app turns Degraded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from celery_operator import api, autoscale, conditions, pollstats, poolstate, quarantine
from celery_operator.brokers import connect, ledger
from celery_operator.brokers.base import BrokerError, DepthReport
from celery_operator.controller.observe import ClusterCache
from celery_operator.controller.scalein_executor import ScaleIn
from celery_operator.controller.stale_connections import StaleConnections
from celery_operator.controller.state import AppState, Findings
from celery_operator.controller.workqueue import AppKey
from celery_operator.decide import Poll
from celery_operator.kube.client import ApiError, KubeClient, NotOwner
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import CeleryWorkerPool
from celery_operator.plan import Body, Polled, pool_replicas
from celery_operator.poolstate import PoolState
from celery_operator.render import names
from celery_operator.topology import Topology

log = logging.getLogger(__name__)
DEFAULT_POLL_SECONDS = 15.0  # queue metrics for apps without autoscaled pools
# RabbitMQ's live message totals carry no consumer counts, head timestamps or delivery rates; the
# statistics listing that does lags by the broker's statistics interval (5 s by default). Depth comes
# live every poll; the rest is refreshed from the statistics listing at most this often (still one
# request per poll), or every statistics interval for an app with a pool that scales on wait.
CONSUMERS_REFRESH_SECONDS = 30.0
WAIT_REFRESH_SECONDS = 5.0
POLL_TIMEOUT_SECONDS = 30.0


def poll_interval(topo: Topology | None) -> float:
    intervals = [p.autoscaling.poll_interval_seconds for p in (topo.effective_pools if topo else ())
                 if p.autoscaling is not None]
    return float(min(intervals)) if intervals else DEFAULT_POLL_SECONDS


@dataclass
class Poller:
    client: KubeClient
    cache: ClusterCache
    recorder: Recorder
    metrics: Metrics
    # A reconcile of the app: (key, full). Status-only after a poll that saw something change; full when
    # the broker answers again (declare what could not be declared while it was away).
    after_poll: Callable[[AppKey, bool], None]
    scale_in: ScaleIn = field(init=False)
    stale_connections: StaleConnections = field(init=False)

    def __post_init__(self) -> None:
        self.scale_in = ScaleIn(self.client, self.cache, self.recorder, self.metrics)
        self.stale_connections = StaleConnections(self.cache, self.recorder)

    async def run(self, key: AppKey, state: AppState) -> None:
        """Poll until cancelled (the app left this replica, or was deleted); a drain this poller started
        is called off with it (its workers consume again: whoever polls the app next decides afresh)."""
        self.metrics.count_poller_error(*key, 0)
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.poll(key, state)
                except Exception:  # a bug, not a broker failure (that is in the poll's result): never stop polling
                    log.exception("polling %s/%s failed", *key)
                    self.metrics.count_poller_error(*key)
                await asyncio.sleep(max(0.05, poll_interval(state.topology) - (time.monotonic() - started)))
        finally:
            self.scale_in.forget(key)
            self.stale_connections.forget(key)

    async def poll(self, key: AppKey, state: AppState) -> None:
        """One poll: its findings replace the last ones whole (`state.findings`, here only), then each
        autoscaled pool's state is replaced by its next one (`_autoscale`)."""
        ns, name = key
        topo, broker = state.topology, state.broker
        if topo is None or broker is None:
            return
        last = state.findings
        t0 = time.monotonic()
        report: DepthReport | None = None
        error = None
        statistics = last.statistics
        if broker.url is None:
            error = broker.problem or "broker URL unknown"
        else:
            on_wait = any(p.autoscaling and p.autoscaling.target_wait_seconds for p in topo.effective_pools)
            refresh = WAIT_REFRESH_SECONDS if on_wait else CONSUMERS_REFRESH_SECONDS
            full = last.statistics.due(time.monotonic(), refresh)
            count_in_flight = any(p.autoscaling and p.autoscaling.count_in_flight for p in topo.effective_pools)
            url, mgmt, opts = broker.url, broker.management_url, state.transport_options
            stats: Literal["totals", "full"] = "full" if full else "totals"

            def measure() -> DepthReport:
                with connect(url, management_url=mgmt, transport_options=opts, rabbitmq_stats=stats) as b:
                    return b.measure(topo.queue_names, count_in_flight=count_in_flight)

            try:
                report = await asyncio.wait_for(asyncio.to_thread(measure), POLL_TIMEOUT_SECONDS)
                report, statistics = pollstats.merge(last.statistics, report, full, time.monotonic())
            except (BrokerError, TimeoutError) as e:
                error = str(e) or "the broker did not answer in time"
        self.metrics.observe_poll(ns, name, time.monotonic() - t0, ok=report is not None)
        up = report is not None
        was_up, last_polled = last.polled.poll.broker_up, last.polled.polled_at
        poll = Poll(up, error, report, 0 if up else last.polled.poll.failed_polls + 1)
        polled_at = time.monotonic()
        self.metrics.set_broker_up(ns, name, up)
        await self._replay_quarantine(key, state)
        quarantined, quarantine_problem = await self._read_quarantine(key, state)
        waits, drains = last.waits, last.drains
        if report is not None:
            await self.stale_connections.close(key, state)
            waits, drains = pollstats.waits(last.drains, report, time.time(), time.monotonic())
            self.metrics.set_depth_source(ns, name, report.source)
            for qname, d in report.queues.items():
                self.metrics.observe_queue(ns, name, qname, d.ready, d.in_flight, d.consumers)
                w = waits.get(qname)
                self.metrics.observe_queue_wait(ns, name, qname, None if w is None else w.seconds,
                                                None if w is None else w.source)
        state.findings = Findings(Polled(poll, polled_at, quarantined, quarantine_problem), statistics, drains, waits)
        changed = was_up is not None and was_up != up
        # The broker answers again: declare what could not be declared while it was away (a declaration
        # that failed since the last poll says it was).
        redeclare = up and (changed or state.reconciled.declare_failed_at > last_polled)
        app_body = self.cache.crs(key).get((api.APP, name)) if changed else None  # decoded only when needed
        if app_body is not None:
            if up:
                await self.recorder.normal(app_body, "BrokerReachable", "the broker answers again")
            else:
                await self.recorder.warning(app_body, api.Reason.BROKER_UNREACHABLE, error or "")
        await self._autoscale(key, state, topo, report)
        seen = state.seen()
        if seen != state.last_seen or redeclare:  # statuses show only what polls change: at idle, nothing is
            state.last_seen = seen                     # re-decided
            self.after_poll(key, redeclare)

    async def _replay_quarantine(self, key: AppKey, state: AppState) -> None:
        """Carry out a replay or purge the app's annotations ask for, then remove the annotation."""
        ns, name = key
        body = self.cache.crs(key).get((api.APP, name))
        annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
        for annotation, purge in ((api.ANNOTATION_REPLAY_QUARANTINE, False), (api.ANNOTATION_PURGE_QUARANTINE, True)):
            value = annotations.get(annotation)
            if value is None or body is None or state.broker is None or state.broker.url is None:
                continue
            verb = "purge" if purge else "replay"
            try:
                selected = quarantine.parse_selector(value)
            except ValueError as e:
                await self.recorder.warning(body, api.Reason.QUARANTINE_REPLAYED, f"{annotation} ignored: {e}")
                await self._remove_annotation(key, annotation)
                continue
            ledger_at = ledger.ledger_url(state.broker.url, state.backend.url if state.backend else None)
            queues = quarantine.quarantine_queues(state.topology.quarantine_queues.values() if state.topology else (),
                                                  state.findings.polled.quarantined or [])
            url, opts = state.broker.url, state.transport_options
            try:
                moved = await asyncio.to_thread(ledger.move_back, url, opts, queues, selected, purge, ledger_at)
            except BrokerError as e:
                log.warning("%s/%s: quarantine %s failed (retried next poll): %s", ns, name, verb, e)
                continue
            await self._remove_annotation(key, annotation)
            what = ", ".join(moved[:20]) + (f" and {len(moved) - 20} more" if len(moved) > 20 else "")
            done = "dropped" if purge else "put back on their queues"
            await self.recorder.emit(body, "Normal", api.Reason.QUARANTINE_REPLAYED,
                                     f"{verb} of quarantined tasks ({value}): {len(moved)} {done}"
                                     + (f": {what}" if moved else ""), dedupe=False)

    async def _remove_annotation(self, key: AppKey, annotation: str) -> None:
        try:
            await self.client.patch(api.APP, key[0], key[1], {"metadata": {"annotations": {annotation: None}}})
        except (ApiError, NotOwner) as e:
            log.warning("%s/%s: annotation %s not removed: %s", *key, annotation, e)

    async def _read_quarantine(self, key: AppKey, state: AppState) -> tuple[list[Body] | None, str | None]:
        """The poison-task quarantine records of the app (from the Redis the workers keep them in), or None
        and why they cannot be read."""
        broker, backend = state.broker, state.backend
        url = ledger.ledger_url(broker.url if broker else None, backend.url if backend else None)
        if url is None:
            return None, ("poison-task protection is off: neither the result backend nor the broker "
                          "is Redis, so the workers have nowhere to count worker deaths")
        try:
            raw = await asyncio.wait_for(asyncio.to_thread(ledger.read_quarantine, url), POLL_TIMEOUT_SECONDS)
        except (BrokerError, TimeoutError) as e:
            log.warning("%s/%s: quarantine records not read: %s", *key, e)
            last = state.findings.polled
            return last.quarantined, last.quarantine_problem  # keep what was last read
        records = quarantine.records(raw)
        self.metrics.set_quarantined(key[0], key[1], quarantine.by_task(records))
        return records, None

    async def _autoscale(self, key: AppKey, state: AppState, topo: Topology, report: DepthReport | None) -> None:
        """Each autoscaled pool's next state (poolstate.py), then its scale. A pool's state is read and replaced
        with no await between: a drain's scale (`_scale`, from the drain's task) is never overwritten."""
        now = time.time()
        autoscaled = {p.meta.name for p in topo.pools if p.autoscaling is not None}
        gone = set(state.pools) - autoscaled  # left the app, or no longer autoscaled: start afresh
        if gone:
            state.pools = {n: p for n, p in state.pools.items() if n not in gone}
        for g in gone:
            self.scale_in.forget(key, g)
        waits, failed_polls = state.findings.waits, state.findings.polled.poll.failed_polls
        for pool in topo.effective_pools:
            a = pool.autoscaling
            if a is None:
                continue
            name = pool.meta.name
            queues = topo.pool_queues(pool)
            last = state.pools.get(name, PoolState())
            st = poolstate.measured(last, report, queues, waits)
            self.metrics.set_pool_bounds(key[0], key[1], name, (a.min_replicas, a.max_replicas))
            current = st.desired
            if current is None or st.paused or autoscale.pause_of(pool.meta.annotations, a).paused:
                # Not the policy's to decide: the count the reconciler renders (plan.pool_replicas), from the
                # Deployment's (read from the cache only then).
                current, paused = pool_replicas(pool, st.view(), st.paused, self._live_replicas(key, pool))
                st = poolstate.held(st, a, current, paused, now)
                if paused:  # nothing scales: no /scale, no scale-in; a drain under way is called off
                    state.pools = {**state.pools, name: st}
                    self.scale_in.call_off(key, name)
                    continue
            ready, in_flight = poolstate.policy_depth(a, report, queues, (st.depth, st.in_flight))
            workers = self._ready_workers(key, pool) if a.target_wait_seconds is not None else None
            decision = autoscale.decide(a, ready=ready, in_flight=in_flight, current=current, now=now,
                                        history=st.history, wait=st.wait, workers=workers,
                                        failed_polls=failed_polls, events=st.events)
            state.pools = {**state.pools, name: poolstate.decided(st, decision)}
            if decision.fallback and not st.fallback:
                await self._announce_fallback(key, pool, failed_polls, decision)
            drain_from = self.scale_in.draining(key, name)
            if drain_from is not None:
                if decision.desired >= drain_from:  # the load came back: keep the workers
                    self.scale_in.call_off(key, name)
                continue
            await self.scale_in.restore(key, state, topo, pool)
            if not decision.changed:
                continue

            async def apply(desired: int, note: str, pool: CeleryWorkerPool = pool, current: int = current,
                            reason: str = decision.reason) -> bool:
                return await self._scale(key, state, pool, current, desired, f"{reason}; {note}" if note else reason)

            if decision.desired < current:
                await self.scale_in.start(key, state, topo, pool, current, decision.desired, apply)
            else:
                await apply(decision.desired, "")

    async def _announce_fallback(self, key: AppKey, pool: CeleryWorkerPool, failed_polls: int,
                                 decision: autoscale.Decision) -> None:
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        if body is not None:
            await self.recorder.emit(body, "Warning", api.Reason.FALLBACK_ENGAGED,
                                     f"the broker failed {failed_polls} polls in a row: {decision.reason}",
                                     dedupe=False)

    def _live_replicas(self, key: AppKey, pool: CeleryWorkerPool) -> int | None:
        """The replicas of the pool's Deployment, from the cache (None before it exists)."""
        dep = self.cache.child("Deployment", key[0], names.worker(key[1], pool.meta.name))
        n = (dep or {}).get("spec", {}).get("replicas")
        return int(n) if n is not None else None

    def _ready_workers(self, key: AppKey, pool: CeleryWorkerPool) -> int | None:
        """The pool's ready replicas from the cached Deployment (read only for pools scaling on wait)."""
        dep = self.cache.child("Deployment", key[0], names.worker(key[1], pool.meta.name))
        return int((dep.get("status") or {}).get("readyReplicas") or 0) if dep is not None else None

    async def _scale(self, key: AppKey, state: AppState, pool: CeleryWorkerPool, current: int, desired: int,
                     why: str) -> bool:
        """Patch the pool's Deployment's /scale; record, count and announce the change. Called from the poll, or
        from a drain's task once its workers drained: the pool's state is read and replaced with no await
        between, and at once (a reconcile renders the replicas from it)."""
        ns, app = key
        deployment = names.worker(app, pool.meta.name)
        try:
            await self.client.patch("Deployment", ns, deployment, {"spec": {"replicas": desired}}, sub="scale")
        except (ApiError, NotOwner) as e:
            log.warning("scaling %s/%s failed: %s", ns, deployment, e)
            return False
        st = state.pools.get(pool.meta.name)
        if st is not None and pool.autoscaling is not None:  # else no longer autoscaled: nothing to keep
            st = poolstate.scaled(st, current, desired, time.time(), conditions.now_iso(), pool.autoscaling)
            state.pools = {**state.pools, pool.meta.name: st}
        direction: Literal["up", "down"] = "up" if desired > current else "down"
        log.info("scaled %s/%s %d → %d: %s", ns, deployment, current, desired, why)
        self.metrics.count_scale_event(ns, app, pool.meta.name, direction)
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        if body is not None:
            await self.recorder.emit(body, "Normal",
                                     api.Reason.SCALED_UP if direction == "up" else api.Reason.SCALED_DOWN,
                                     f"{current} → {desired}: {why}", dedupe=False)
        return True
