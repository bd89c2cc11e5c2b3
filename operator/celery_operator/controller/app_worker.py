"""One asyncio task per CeleryApp: reconcile on every trigger, poll the broker on an interval.

Level-triggered: each reconcile reads the app and every object naming it from the API server,
renders the whole desired state, applies it (server-side apply), declares the broker topology
when it changed, and writes every status. Events from any watched object only *trigger* it; many
triggers in a burst give one reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from celery_operator import api, autoscale, conditions
from celery_operator.brokers import connect
from celery_operator.brokers.base import Broker, BrokerError, BrokerUnreachable, DepthReport
from celery_operator.controller import statuses
from celery_operator.controller.connections import Endpoint, resolve
from celery_operator.controller.monitoring import POD_MONITORS
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import (
    CeleryApp,
    CeleryBeatSchedule,
    CeleryExchange,
    CeleryQueue,
    CeleryWorkerPool,
)
from celery_operator.render import names, render_all
from celery_operator.render.broker import SecretsContext
from celery_operator.topology import Topology

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.3
RESYNC_SECONDS = 60.0  # a full reconcile at least this often: restores hand-edited children
DEFAULT_POLL_SECONDS = 15.0  # queue metrics for apps without autoscaled pools
REDECLARE_SECONDS = 300.0
# RabbitMQ's live message totals carry no consumer counts; the statistics listing that does lags by
# the broker's statistics interval (5 s by default). Depth comes live every poll; consumer counts
# are refreshed from the statistics listing at most this often (still one request per poll).
CONSUMERS_REFRESH_SECONDS = 30.0

Body = dict[str, Any]


@dataclass
class PoolScale:
    """What the autoscaler keeps per pool between polls."""

    desired: int | None = None
    history: autoscale.History | None = None
    last_scale_time: str | None = None
    depth: int | None = None
    in_flight: int | None = None
    source: str | None = None


@dataclass
class AppWorker:
    client: KubeClient
    recorder: Recorder
    metrics: Metrics
    namespace: str
    name: str
    trigger: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    pools: dict[str, PoolScale] = field(default_factory=dict)
    _declared_hash: str | None = None
    _declared_at: float = 0.0
    _topology: Topology | None = None
    _broker: Endpoint | None = None
    _broker_up: bool | None = None
    _depth: DepthReport | None = None
    _poll_error: str | None = None
    _bodies: dict[tuple[str, str], Body] = field(default_factory=dict)
    _transport_options: dict[str, Any] | None = None
    _existing: dict[str, Body] = field(default_factory=dict)
    _consumers: dict[str, int | None] = field(default_factory=dict)
    _consumers_at: float = -CONSUMERS_REFRESH_SECONDS
    _declare_results: dict[tuple[str, str], tuple[bool, str]] = field(default_factory=dict)
    _failures: int = 0  # reconciles failed in a row

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        next_poll = 0.0
        next_resync = 0.0
        self.trigger.set()
        while not self.stopped.is_set():
            now = time.monotonic()
            if self.trigger.is_set() or now >= next_resync:
                await asyncio.sleep(DEBOUNCE_SECONDS)
                self.trigger.clear()
                if not await self._guarded("reconcile", self.reconcile):
                    return
                # After a failure, retry soon (1, 2, 4 ... s, at most a resync period).
                retry = min(RESYNC_SECONDS, 2.0 ** self._failures) if self._failures else RESYNC_SECONDS
                next_resync = time.monotonic() + retry
            if time.monotonic() >= next_poll and self._topology is not None:
                await self._guarded("poll", self.poll)
                next_poll = time.monotonic() + self.poll_interval()
            wait = max(0.05, min(next_poll, next_resync) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake(), wait)

    async def _wake(self) -> None:
        stop = asyncio.create_task(self.stopped.wait())
        trig = asyncio.create_task(self.trigger.wait())
        try:
            await asyncio.wait([stop, trig], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            trig.cancel()

    async def _guarded(self, what: str, fn: Any) -> bool:
        """Run a step; never let an exception kill the worker (the next cycle retries)."""
        t0 = time.monotonic()
        try:
            keep_going = await fn()
            self.metrics.count_reconcile(api.APP, "success")
            if what == "reconcile":
                self._failures = 0
            return keep_going is not False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s of %s/%s failed", what, self.namespace, self.name)
            self.metrics.count_reconcile(api.APP, "error")
            if what == "reconcile":
                self._failures += 1
                await statuses.write_reconcile_error(self, f"{type(e).__name__}: {e}")
            else:
                self._poll_error = f"{what} failed: {e}"
            return True
        finally:
            self.metrics.observe_reconcile(api.APP, time.monotonic() - t0)

    def poll_interval(self) -> float:
        topo = self._topology
        intervals = [p.autoscaling.poll_interval_seconds for p in (topo.effective_pools if topo else ())
                     if p.autoscaling is not None]
        return float(min(intervals)) if intervals else DEFAULT_POLL_SECONDS

    # ---- reconcile -----------------------------------------------------------------------------
    async def _list_mine(self, kind: str) -> list[Body]:
        items = await self.client.list(kind, self.namespace)
        return [b for b in items if (b.get("spec", {}).get("appRef") or {}).get("name") == self.name]

    async def reconcile(self) -> bool:
        app_body = await self.client.get(api.APP, self.namespace, self.name)
        if app_body is None or app_body["metadata"].get("deletionTimestamp"):
            log.info("app %s/%s is gone: worker stops", self.namespace, self.name)
            return False
        bodies: dict[str, list[Body]] = {}
        for kind in (api.EXCHANGE, api.QUEUE, api.POOL, api.SCHEDULE):
            bodies[kind] = await self._list_mine(kind)
        self._bodies = {(api.APP, self.name): app_body}
        for kind, items in bodies.items():
            for b in items:
                self._bodies[(kind, b["metadata"]["name"])] = b
        live = {k: [b for b in v if not b["metadata"].get("deletionTimestamp")] for k, v in bodies.items()}
        app = CeleryApp.of(app_body)
        topo = Topology.of(
            app,
            self._parse(CeleryExchange, live[api.EXCHANGE]), self._parse(CeleryQueue, live[api.QUEUE]),
            self._parse(CeleryWorkerPool, live[api.POOL]), self._parse(CeleryBeatSchedule, live[api.SCHEDULE]))
        self._forget_gone(topo)
        self._topology = topo

        broker = await resolve(self.client, app, app.broker, "broker")
        backend = await resolve(self.client, app, app.result_backend, "result-backend") \
            if app.result_backend is not None else None
        self._broker = broker
        secrets_ctx = SecretsContext(
            broker_password=broker.managed_credentials.get("password"),
            broker_username=broker.managed_credentials.get("username") or "celery",
            result_backend_password=backend.managed_credentials.get("password") if backend else None)
        transport_options = app.config.get("broker_transport_options")
        self._transport_options = transport_options if isinstance(transport_options, dict) else None
        self._existing = {d["metadata"]["name"]: d for d in await self.client.list(
            "Deployment", self.namespace, f"{api.LABEL_APP}={self.name}")}
        objects = render_all(topo, secrets_ctx, replicas_of=self._replicas_for,
                             broker_transport_options=self._transport_options,
                             pod_monitor=await POD_MONITORS.served(self.client))
        chash = next((o["metadata"].get("annotations", {}).get(api.ANNOTATION_CONFIG_HASH, "")
                      for o in objects if o["kind"] == "ConfigMap"), "")
        apply_errors: list[str] = []
        deployments: dict[str, Body] = {}  # as applied: the server's answer carries their status
        statefulsets: dict[str, Body] = {}
        for obj in objects:
            try:
                applied = await self.client.apply(obj)
                if obj["kind"] == "Deployment":
                    deployments[obj["metadata"]["name"]] = applied
                elif obj["kind"] == "StatefulSet":
                    statefulsets[obj["metadata"]["name"]] = applied
            except ApiError as e:
                if obj["kind"] == "StatefulSet" and e.status == 422 and "Forbidden" in str(e):
                    apply_errors.append(await self._replace_statefulset(obj, str(e)))
                    continue
                apply_errors.append(f"{obj['kind']} {obj['metadata']['name']}: {e}")
                log.warning("apply %s/%s failed: %s", obj["kind"], obj["metadata"]["name"], e)
        await self._delete_stale(objects)
        if broker.url is None and broker.managed_credentials:
            broker.url = statuses.url_from_secret(objects, broker.ref)

        await self._declare(topo, broker)
        await statuses.write_all(self, topo, broker, backend, chash, deployments, apply_errors, statefulsets)
        return True

    async def _replace_statefulset(self, obj: Body, error: str) -> str:
        """A managed server's StatefulSet whose immutable fields (its claim templates: storage size or
        class) changed: delete it and its claims that never bound (no data is lost), so the next cycle
        creates it anew. Bound claims keep their data; the message says so."""
        name = obj["metadata"]["name"]
        claims = await statuses.claims_of(self.client, self.namespace, name)
        bound = [c["metadata"]["name"] for c in claims if (c.get("status") or {}).get("phase") == "Bound"]
        if bound:
            return (f"StatefulSet {name}: its storage cannot change while claims {', '.join(bound)} hold data "
                    f"({error}); delete them to start over with the new storage")
        for c in claims:
            await self.client.delete("PersistentVolumeClaim", self.namespace, c["metadata"]["name"])
        await self.client.delete("StatefulSet", self.namespace, name, propagation="Foreground")
        self.trigger.set()
        return f"StatefulSet {name}: replaced, since its storage changed and no claim held data yet"

    def _forget_gone(self, topo: Topology) -> None:
        """Drop the metric series of pools and queues that left the app (bounded cardinality)."""
        old = self._topology
        if old is None:
            return
        for q in set(old.queue_names) - set(topo.queue_names):
            self.metrics.forget_queue(self.namespace, self.name, q)
        for gone in {p.meta.name for p in old.pools} - {p.meta.name for p in topo.pools}:
            self.metrics.forget_pool(self.namespace, self.name, gone)
            self.pools.pop(gone, None)
        for pool in topo.pools:
            if pool.autoscaling is None:
                self.metrics.set_pool_bounds(self.namespace, self.name, pool.meta.name, None)

    def _parse(self, cls: Any, bodies: list[Body]) -> list[Any]:
        """Typed views; an object the models cannot read is skipped (the schema should prevent it)."""
        out = []
        for b in bodies:
            try:
                out.append(cls.of(b))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("skipping %s %s: %s", b.get("kind"), b["metadata"].get("name"), e)
        return out

    def _replicas_for(self, pool: CeleryWorkerPool) -> int:
        if pool.autoscaling is None:
            self.pools.pop(pool.meta.name, None)
            return pool.replicas
        st = self.pools.setdefault(pool.meta.name, PoolScale())
        if st.desired is None:
            # A new pool starts at minReplicas; after an operator restart, the Deployment's count stands.
            current = self._existing.get(names.worker(self.name, pool.meta.name), {}).get("spec", {}).get("replicas")
            a = pool.autoscaling
            st.desired = a.min_replicas if current is None else max(a.min_replicas, min(a.max_replicas, int(current)))
        return st.desired

    async def _delete_stale(self, objects: list[Body]) -> None:
        """Delete Deployments we made for this app that the desired state no longer has (beat, old pools)."""
        wanted = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
        for name, d in self._existing.items():
            if name in wanted or d["metadata"].get("labels", {}).get(api.LABEL_MANAGED_BY) != api.OPERATOR_NAME:
                continue
            log.info("deleting %s/%s: no longer desired", self.namespace, name)
            await self.client.delete("Deployment", self.namespace, name)
            app_body = self._bodies.get((api.APP, self.name))
            if app_body:
                await self.recorder.normal(app_body, "Deleted", f"Deployment {name} deleted")

    async def _declare(self, topo: Topology, broker: Endpoint) -> None:
        if broker.url is None:
            return
        h = hashlib.sha256(json.dumps(
            [repr(topo.effective_exchanges), repr(topo.effective_queues)],
        ).encode()).hexdigest()
        if h == self._declared_hash and time.monotonic() - self._declared_at < REDECLARE_SECONDS:
            return
        try:
            results = await asyncio.to_thread(_declare_sync, broker, topo, self._transport_options)
        except BrokerError as e:
            self._broker_up = False
            self._poll_error = str(e)
            return
        self._declare_results = {}
        for r in results:
            kind = {"exchange": api.EXCHANGE, "queue": api.QUEUE, "binding": api.QUEUE}[r.kind]
            prev = self._declare_results.get((kind, r.name))
            if prev is not None and not prev[0]:
                continue  # keep the first failure for this object
            self._declare_results[(kind, r.name)] = (r.ok, r.message)
        if all(r.ok for r in results):
            self._declared_hash, self._declared_at = h, time.monotonic()

    def declare_result(self, kind: str, celery_name: str) -> tuple[bool, str] | None:
        return self._declare_results.get((kind, celery_name))

    # ---- poll + autoscale ----------------------------------------------------------------------
    async def poll(self) -> None:
        topo, broker = self._topology, self._broker
        if topo is None or broker is None:
            return
        names = topo.queue_names
        count_in_flight = any(p.autoscaling and p.autoscaling.count_in_flight for p in topo.effective_pools)
        t0 = time.monotonic()
        report: DepthReport | None = None
        error = None
        if broker.url is None:
            error = broker.problem or "broker URL unknown"
        else:
            try:
                full = time.monotonic() - self._consumers_at >= CONSUMERS_REFRESH_SECONDS
                report = await asyncio.to_thread(_measure_sync, broker, names, count_in_flight,
                                                 self._transport_options, "full" if full else "totals")
                report = self._with_consumers(report, full)
            except BrokerUnreachable as e:
                error = str(e)
            except BrokerError as e:
                error = str(e)
        self.metrics.observe_poll(self.namespace, self.name, time.monotonic() - t0)
        was_up = self._broker_up
        self._broker_up = report is not None
        self._depth = report
        self._poll_error = error
        self.metrics.set_broker_up(self.namespace, self.name, report is not None)
        if report is not None:
            self.metrics.set_depth_source(self.namespace, self.name, report.source)
            for qname, d in report.queues.items():
                self.metrics.observe_queue(self.namespace, self.name, qname, d.ready, d.in_flight, d.consumers)
        app_body = self._bodies.get((api.APP, self.name))
        if app_body is not None and was_up is not None and was_up != self._broker_up:
            if self._broker_up:
                await self.recorder.normal(app_body, "BrokerReachable", "the broker answers again")
            else:
                await self.recorder.warning(app_body, api.Reason.BROKER_UNREACHABLE, error or "")
        await self._autoscale(topo, report)
        await statuses.write_poll(self, topo, report, error)

    def _with_consumers(self, report: DepthReport, fresh: bool) -> DepthReport:
        """Consumer counts from the last statistics listing where this poll's totals have none."""
        if fresh:
            self._consumers_at = time.monotonic()
            self._consumers = {n: d.consumers for n, d in report.queues.items()}
            return report
        queues = {n: d if d.consumers is not None else dataclasses.replace(d, consumers=self._consumers.get(n))
                  for n, d in report.queues.items()}
        return dataclasses.replace(report, queues=queues)

    async def _autoscale(self, topo: Topology, report: DepthReport | None) -> None:
        now = time.time()
        for pool in topo.effective_pools:
            a = pool.autoscaling
            if a is None:
                continue
            st = self.pools.setdefault(pool.meta.name, PoolScale())
            current = st.desired if st.desired is not None else self._replicas_for(pool)
            queues = topo.pool_queues(pool)
            ready = report.ready(queues) if report is not None else None
            in_flight = report.in_flight(queues) if report is not None else None
            st.depth, st.in_flight = ready, in_flight
            st.source = report.source if report is not None else st.source
            decision = autoscale.decide(a, ready=ready, in_flight=in_flight, current=current, now=now,
                                        history=st.history)
            st.history = decision.history
            self.metrics.set_pool_bounds(self.namespace, self.name, pool.meta.name,
                                         (a.min_replicas, a.max_replicas))
            if not decision.changed:
                continue
            name = names.worker(self.name, pool.meta.name)
            try:
                await self.client.patch("Deployment", self.namespace, name,
                                        {"spec": {"replicas": decision.desired}}, sub="scale")
            except ApiError as e:
                log.warning("scaling %s failed: %s", name, e)
                continue
            direction: Literal["up", "down"] = "up" if decision.desired > current else "down"
            st.desired = decision.desired
            st.last_scale_time = conditions.now_iso()
            self.metrics.count_scale_event(self.namespace, self.name, pool.meta.name, direction)
            body = self._bodies.get((api.POOL, pool.meta.name))
            if body is not None:
                await self.recorder.emit(body, "Normal",
                                         api.Reason.SCALED_UP if direction == "up" else api.Reason.SCALED_DOWN,
                                         f"{current} → {decision.desired}: {decision.reason}", dedupe=False)


def _open(broker: Endpoint, transport_options: dict[str, Any] | None,
          rabbitmq_stats: Literal["totals", "full"] = "full") -> Broker:
    assert broker.url is not None
    return connect(broker.url, management_url=broker.management_url, transport_options=transport_options,
                   rabbitmq_stats=rabbitmq_stats)


def _declare_sync(broker: Endpoint, topo: Topology, opts: dict[str, Any] | None) -> list[Any]:
    with _open(broker, opts) as b:
        return b.declare(topo.effective_exchanges, topo.effective_queues)


def _measure_sync(broker: Endpoint, names: list[str], count_in_flight: bool,
                  opts: dict[str, Any] | None, stats: Literal["totals", "full"]) -> DepthReport:
    with _open(broker, opts, stats) as b:
        return b.measure(names, count_in_flight=count_in_flight)
