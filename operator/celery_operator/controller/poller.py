"""The broker poll of one app: measure queue depth, export it, scale autoscaled pools.

One task per app this replica owns, polling at the smallest `pollIntervalSeconds` of its
autoscaled pools (15 s for metrics when none is autoscaled). Each poll reads every queue's depth in
one request (brokers/), asks the pure policy (autoscale.decide) per pool, patches `/scale` of the
pools it changes, then asks for a status-only reconcile (statuses change only if values did).
Missing data never scales down: the policy holds replicas and the app turns Degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from celery_operator import api, autoscale, conditions
from celery_operator.brokers import connect
from celery_operator.brokers.base import BrokerError, DepthReport
from celery_operator.controller.observe import ClusterCache, Key
from celery_operator.controller.state import AppState, PoolState
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.render import names
from celery_operator.topology import Topology

log = logging.getLogger(__name__)
DEFAULT_POLL_SECONDS = 15.0  # queue metrics for apps without autoscaled pools
# RabbitMQ's live message totals carry no consumer counts; the statistics listing that does lags by
# the broker's statistics interval (5 s by default). Depth comes live every poll; consumer counts
# are refreshed from the statistics listing at most this often (still one request per poll).
CONSUMERS_REFRESH_SECONDS = 30.0
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
    after_poll: Callable[[Key], None]  # a status-only reconcile of the app

    async def run(self, key: Key, state: AppState) -> None:
        """Poll until cancelled (the app left this replica, or was deleted)."""
        while True:
            started = time.monotonic()
            with contextlib.suppress(Exception):  # a poll's failure is in its result; never stop polling
                await self.poll(key, state)
            await asyncio.sleep(max(0.05, poll_interval(state.topology) - (time.monotonic() - started)))

    async def poll(self, key: Key, state: AppState) -> None:
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
            full = time.monotonic() - state.consumers_at >= CONSUMERS_REFRESH_SECONDS
            count_in_flight = any(p.autoscaling and p.autoscaling.count_in_flight for p in topo.effective_pools)
            url, mgmt, opts = broker.url, broker.management_url, state.transport_options
            stats: Literal["totals", "full"] = "full" if full else "totals"

            def measure() -> DepthReport:
                with connect(url, management_url=mgmt, transport_options=opts, rabbitmq_stats=stats) as b:
                    return b.measure(topo.queue_names, count_in_flight=count_in_flight)

            try:
                report = await asyncio.wait_for(asyncio.to_thread(measure), POLL_TIMEOUT_SECONDS)
                report = self._with_consumers(state, report, full)
            except (BrokerError, TimeoutError) as e:
                error = str(e) or "the broker did not answer in time"
        self.metrics.observe_poll(ns, name, time.monotonic() - t0, ok=report is not None)
        was_up = state.broker_up
        state.broker_up, state.report, state.poll_error = report is not None, report, error
        self.metrics.set_broker_up(ns, name, report is not None)
        if report is not None:
            self.metrics.set_depth_source(ns, name, report.source)
            for qname, d in report.queues.items():
                self.metrics.observe_queue(ns, name, qname, d.ready, d.in_flight, d.consumers)
        app_body = self.cache.crs(key).get((api.APP, name))
        if app_body is not None and was_up is not None and was_up != state.broker_up:
            if state.broker_up:
                await self.recorder.normal(app_body, "BrokerReachable", "the broker answers again")
            else:
                await self.recorder.warning(app_body, api.Reason.BROKER_UNREACHABLE, error or "")
        await self._autoscale(key, state, topo, report)
        seen = self._seen(state)
        if seen != state.last_seen:  # statuses show only what polls change: at idle, nothing is re-decided
            state.last_seen = seen
            self.after_poll(key)

    @staticmethod
    def _seen(state: AppState) -> tuple[object, ...]:
        """What a poll can change in the app's statuses."""
        report = state.report
        queues = tuple(sorted((n, d.ready, d.in_flight, d.consumers) for n, d in report.queues.items())) \
            if report is not None else None
        pools = tuple(sorted((n, p.desired, p.depth, p.in_flight, p.source, p.last_scale_time)
                             for n, p in state.pools.items()))
        return state.broker_up, state.poll_error, queues, pools

    @staticmethod
    def _with_consumers(state: AppState, report: DepthReport, fresh: bool) -> DepthReport:
        """Consumer counts from the last statistics listing where this poll's totals have none."""
        if fresh:
            state.consumers_at = time.monotonic()
            state.consumers = {n: d.consumers for n, d in report.queues.items()}
            return report
        queues = {n: d if d.consumers is not None else dataclasses.replace(d, consumers=state.consumers.get(n))
                  for n, d in report.queues.items()}
        return dataclasses.replace(report, queues=queues)

    async def _autoscale(self, key: Key, state: AppState, topo: Topology, report: DepthReport | None) -> None:
        ns, app = key
        now = time.time()
        bodies = self.cache.crs(key)
        for pool in topo.effective_pools:
            a = pool.autoscaling
            if a is None:
                continue
            st = state.pools.setdefault(pool.meta.name, PoolState())
            current = st.desired if st.desired is not None else a.min_replicas
            queues = topo.pool_queues(pool)
            ready = report.ready(queues) if report is not None else None
            in_flight = report.in_flight(queues) if report is not None else None
            st.depth, st.in_flight = ready, in_flight
            st.source = report.source if report is not None else st.source
            decision = autoscale.decide(a, ready=ready, in_flight=in_flight, current=current, now=now,
                                        history=st.history)
            st.history = decision.history
            self.metrics.set_pool_bounds(ns, app, pool.meta.name, (a.min_replicas, a.max_replicas))
            if not decision.changed:
                continue
            deployment = names.worker(app, pool.meta.name)
            try:
                await self.client.patch("Deployment", ns, deployment, {"spec": {"replicas": decision.desired}},
                                        sub="scale")
            except ApiError as e:
                log.warning("scaling %s/%s failed: %s", ns, deployment, e)
                continue
            direction: Literal["up", "down"] = "up" if decision.desired > current else "down"
            st.desired = decision.desired
            st.last_scale_time = conditions.now_iso()
            self.metrics.count_scale_event(ns, app, pool.meta.name, direction)
            body = bodies.get((api.POOL, pool.meta.name))
            if body is not None:
                await self.recorder.emit(body, "Normal",
                                         api.Reason.SCALED_UP if direction == "up" else api.Reason.SCALED_DOWN,
                                         f"{current} → {decision.desired}: {decision.reason}", dedupe=False)
