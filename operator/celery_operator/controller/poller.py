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

from celery_operator import api, autoscale, conditions, pollstats, quarantine
from celery_operator.brokers import connect, ledger
from celery_operator.brokers.base import BrokerError, DepthReport
from celery_operator.controller.observe import AppKey, ClusterCache
from celery_operator.controller.scalein_executor import ScaleIn
from celery_operator.controller.stale_connections import StaleConnections
from celery_operator.controller.state import AppState, PoolState
from celery_operator.kube.client import ApiError, KubeClient, NotOwner
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import CeleryWorkerPool
from celery_operator.plan import pool_replicas
from celery_operator.render import names
from celery_operator.topology import Topology
from celery_operator.waits import longest

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
        ns, name = key
        topo, broker = state.topology, state.broker
        if topo is None or broker is None:
            return
        t0 = time.monotonic()
        report: DepthReport | None = None
        error = None
        if broker.url is None:
            error = broker.problem or "broker URL unknown"
        else:
            on_wait = any(p.autoscaling and p.autoscaling.target_wait_seconds for p in topo.effective_pools)
            refresh = WAIT_REFRESH_SECONDS if on_wait else CONSUMERS_REFRESH_SECONDS
            full = state.statistics.due(time.monotonic(), refresh)
            count_in_flight = any(p.autoscaling and p.autoscaling.count_in_flight for p in topo.effective_pools)
            url, mgmt, opts = broker.url, broker.management_url, state.transport_options
            stats: Literal["totals", "full"] = "full" if full else "totals"

            def measure() -> DepthReport:
                with connect(url, management_url=mgmt, transport_options=opts, rabbitmq_stats=stats) as b:
                    return b.measure(topo.queue_names, count_in_flight=count_in_flight)

            try:
                report = await asyncio.wait_for(asyncio.to_thread(measure), POLL_TIMEOUT_SECONDS)
                report, state.statistics = pollstats.merge(state.statistics, report, full, time.monotonic())
            except (BrokerError, TimeoutError) as e:
                error = str(e) or "the broker did not answer in time"
        self.metrics.observe_poll(ns, name, time.monotonic() - t0, ok=report is not None)
        state.failed_polls = 0 if report is not None else state.failed_polls + 1
        was_up, last_polled = state.broker_up, state.polled_at
        state.broker_up, state.report, state.poll_error = report is not None, report, error
        state.polled_at = time.monotonic()
        self.metrics.set_broker_up(ns, name, report is not None)
        await self._replay_quarantine(key, state)
        await self._read_quarantine(key, state)
        if report is not None:
            await self.stale_connections.close(key, state)
            state.waits, state.drains = pollstats.waits(state.drains, report, time.time(), time.monotonic())
            self.metrics.set_depth_source(ns, name, report.source)
            for qname, d in report.queues.items():
                self.metrics.observe_queue(ns, name, qname, d.ready, d.in_flight, d.consumers)
                w = state.waits.get(qname)
                self.metrics.observe_queue_wait(ns, name, qname, None if w is None else w.seconds,
                                                None if w is None else w.source)
        changed = was_up is not None and was_up != state.broker_up
        # The broker answers again: declare what could not be declared while it was away (a declaration
        # that failed since the last poll says it was).
        redeclare = state.broker_up is True and (changed or state.reconciled.declare_failed_at > last_polled)
        app_body = self.cache.crs(key).get((api.APP, name)) if changed else None  # decoded only when needed
        if app_body is not None:
            if state.broker_up:
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
                                                  state.quarantined or [])
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

    async def _read_quarantine(self, key: AppKey, state: AppState) -> None:
        """The poison-task quarantine records of the app (from the Redis the workers keep them in)."""
        broker, backend = state.broker, state.backend
        url = ledger.ledger_url(broker.url if broker else None, backend.url if backend else None)
        if url is None:
            state.quarantined = None
            state.quarantine_problem = ("poison-task protection is off: neither the result backend nor the broker "
                                        "is Redis, so the workers have nowhere to count worker deaths")
            return
        try:
            raw = await asyncio.wait_for(asyncio.to_thread(ledger.read_quarantine, url), POLL_TIMEOUT_SECONDS)
        except (BrokerError, TimeoutError) as e:
            log.warning("%s/%s: quarantine records not read: %s", *key, e)
            return  # keep what was last read
        state.quarantined = quarantine.records(raw)
        state.quarantine_problem = None
        self.metrics.set_quarantined(key[0], key[1], quarantine.by_task(state.quarantined))

    async def _autoscale(self, key: AppKey, state: AppState, topo: Topology, report: DepthReport | None) -> None:
        now = time.time()
        autoscaled = {p.meta.name for p in topo.pools if p.autoscaling is not None}
        for gone in set(state.pools) - autoscaled:  # left the app, or no longer autoscaled: start afresh
            del state.pools[gone]
            self.scale_in.forget(key, gone)
        for pool in topo.effective_pools:
            a = pool.autoscaling
            if a is None:
                continue
            st = state.pools.setdefault(pool.meta.name, PoolState())
            queues = topo.pool_queues(pool)
            ready = report.ready(queues) if report is not None else None
            in_flight = report.in_flight(queues) if report is not None else None
            st.depth, st.in_flight = ready, in_flight
            st.source = report.source if report is not None else st.source
            st.wait = longest(state.waits.get(q) for q in queues) if report is not None else None
            self.metrics.set_pool_bounds(key[0], key[1], pool.meta.name, (a.min_replicas, a.max_replicas))
            if st.desired is None or st.paused or autoscale.pause_of(pool.meta.annotations, a).paused:
                # Not the policy's to decide: the count the reconciler renders (plan.pool_replicas), from the
                # Deployment's (read from the cache only then).
                desired, paused = pool_replicas(pool, st.view(), st.paused, self._live_replicas(key, pool))
                if paused:  # nothing scales: no /scale, no scale-in; a drain under way is called off
                    st.paused, st.desired = True, desired
                    st.schedule, st.fallback = autoscale.schedule_floor(a, now)[1], False
                    self.scale_in.call_off(key, pool.meta.name)
                    continue
                if st.paused:  # resumed: continue from the Deployment's replicas
                    st.resume()
                st.desired = desired
            current = st.desired
            if a.queue_aggregation != "Sum" or a.queue_weights:
                rows = [(q, None, None) if report is None else
                        (q, d.ready, d.in_flight) if (d := report.queues.get(q)) is not None else (q, 0, 0)
                        for q in queues]
                ready, in_flight = autoscale.pool_depth(a, rows)
            workers = self._ready_workers(key, pool) if a.target_wait_seconds is not None else None
            decision = autoscale.decide(a, ready=ready, in_flight=in_flight, current=current, now=now,
                                        history=st.history, wait=st.wait, workers=workers,
                                        failed_polls=state.failed_polls, events=st.events)
            st.history = decision.history
            st.schedule = decision.schedule
            if decision.fallback and not st.fallback:
                await self._announce_fallback(key, pool, state, decision)
            st.fallback = decision.fallback
            drain_from = self.scale_in.draining(key, pool.meta.name)
            if drain_from is not None:
                if decision.desired >= drain_from:  # the load came back: keep the workers
                    self.scale_in.call_off(key, pool.meta.name)
                continue
            await self.scale_in.restore(key, state, topo, pool)
            if not decision.changed:
                continue

            async def apply(desired: int, note: str, pool: CeleryWorkerPool = pool, st: PoolState = st,
                            current: int = current, reason: str = decision.reason) -> bool:
                done = await self._scale(key, pool, st, current, desired, f"{reason}; {note}" if note else reason)
                if done and pool.autoscaling is not None:  # the scaling policies count the changes made
                    st.events = st.events.record(time.time(), current, desired, pool.autoscaling)
                return done

            if decision.desired < current:
                await self.scale_in.start(key, state, topo, pool, current, decision.desired, apply)
            else:
                await apply(decision.desired, "")

    async def _announce_fallback(self, key: AppKey, pool: CeleryWorkerPool, state: AppState,
                                 decision: autoscale.Decision) -> None:
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        if body is not None:
            await self.recorder.emit(body, "Warning", api.Reason.FALLBACK_ENGAGED,
                                     f"the broker failed {state.failed_polls} polls in a row: {decision.reason}",
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

    async def _scale(self, key: AppKey, pool: CeleryWorkerPool, st: PoolState, current: int, desired: int,
                     why: str) -> bool:
        """Patch the pool's Deployment's /scale; record, count and announce the change."""
        ns, app = key
        deployment = names.worker(app, pool.meta.name)
        try:
            await self.client.patch("Deployment", ns, deployment, {"spec": {"replicas": desired}}, sub="scale")
        except (ApiError, NotOwner) as e:
            log.warning("scaling %s/%s failed: %s", ns, deployment, e)
            return False
        direction: Literal["up", "down"] = "up" if desired > current else "down"
        log.info("scaled %s/%s %d → %d: %s", ns, deployment, current, desired, why)
        st.desired = desired
        st.last_scale_time = conditions.now_iso()
        self.metrics.count_scale_event(ns, app, pool.meta.name, direction)
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        if body is not None:
            await self.recorder.emit(body, "Normal",
                                     api.Reason.SCALED_UP if direction == "up" else api.Reason.SCALED_DOWN,
                                     f"{current} → {desired}: {why}", dedupe=False)
        return True
