"""One reconcile of one app: observe (caches) -> decide (pure) -> act (only what differs).

A full reconcile renders the app's children and applies those that differ from the live ones,
deletes the ones no longer wanted, declares the topology on the broker when it changed, and keeps
the finalizers of objects deleted from the broker; every reconcile (also the status-only ones a
poll or a pod change asks for) then writes the statuses that changed, with an Event per transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from celery_operator import api, conditions, decide, endpoints, quarantine, schedule, stale, workloads
from celery_operator.brokers import InvalidBrokerUrl, connect
from celery_operator.brokers.base import BrokerError, DeclareResult
from celery_operator.brokers.urls import broker_kind
from celery_operator.controller.monitoring import POD_MONITORS
from celery_operator.controller.observe import AppKey, ClusterCache
from celery_operator.controller.state import AppState
from celery_operator.kube.client import ApiError, KubeClient, NotOwner
from celery_operator.kube.events import Recorder
from celery_operator.metrics import BeatEntryState
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import (
    CeleryApp,
    CeleryBeatSchedule,
    CeleryExchange,
    CeleryQueue,
    CeleryWorkerPool,
)
from celery_operator.render import flower as flower_render
from celery_operator.render import names, render_all
from celery_operator.render.labels import has_labels
from celery_operator.topology import ObjKey, Topology

log = logging.getLogger(__name__)
Body = dict[str, Any]
FINALIZER = f"{api.GROUP}/finalizer"
REDECLARE_SECONDS = 300.0  # re-declare even when unchanged: restores a queue deleted on the broker
GIVE_UP_DELETING_AFTER_SECONDS = 60.0
APPLY_CONCURRENCY = 8
# Children others name and cannot do without, applied before the rest: a RoleBinding's Role (the API server
# refuses a binding to a Role it cannot find) and a pod's ServiceAccount (beat's).
APPLY_FIRST = ("ServiceAccount", "Role")
HOLD_RECHECK_SECONDS = 2.0  # a child held back for old pods or a replaced child: how soon to look again
HOLD_MARGIN_SECONDS = 30.0


def _parse(cls: Any, bodies: list[Body]) -> list[Any]:
    """Typed views; an object the models cannot read is skipped (the schema should prevent it)."""
    out = []
    for b in bodies:
        try:
            out.append(cls.of(b))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping %s %s: %s", b.get("kind"), b["metadata"].get("name"), e)
    return out


def topology_of(bodies: dict[ObjKey, Body], app: CeleryApp, broker_url: str | None) -> Topology:
    live = [b for b in bodies.values() if not b["metadata"].get("deletionTimestamp")]

    def of(kind: str) -> list[Body]:
        return [b for b in live if b.get("kind") == kind]

    return Topology.of(app, _parse(CeleryExchange, of(api.EXCHANGE)),
                       _parse(CeleryQueue, of(api.QUEUE)), _parse(CeleryWorkerPool, of(api.POOL)),
                       _parse(CeleryBeatSchedule, of(api.SCHEDULE)), external_broker_kind=_kind_of(broker_url))


def _kind_of(url: str | None) -> Literal["rabbitmq", "redis"] | None:
    try:
        return broker_kind(url) if url else None
    except InvalidBrokerUrl:
        return None


def _severity(r: DeclareResult) -> int:
    """Per object, the result that says most: a failure, else an ignored setting, else success."""
    return 2 if not r.ok else 1 if r.reason else 0


def _age(body: Body) -> float:
    ts = body["metadata"].get("deletionTimestamp")
    if not ts:
        return 0.0
    t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - t).total_seconds()


def _declare_hash(topo: Topology, url: str) -> str:
    return hashlib.sha256(json.dumps([url, repr(topo.effective_exchanges), repr(topo.effective_queues)])
                          .encode()).hexdigest()


@dataclass
class Reconciler:
    client: KubeClient
    cache: ClusterCache
    recorder: Recorder
    metrics: Metrics
    states: dict[AppKey, AppState]
    requeue: Callable[[AppKey, float], None]  # (key, delay): reconcile again later
    on_app: Callable[[AppKey, AppState | None], None]  # the app exists (state) or is gone (None): pollers follow
    watch: Callable[[str], None]  # start watching an optional child kind the cluster now serves
    # Statuses written, until the watch shows them: (namespace, kind, name) -> (resourceVersion, status).
    written: dict[tuple[str, str, str], tuple[int, Body]] = field(default_factory=dict)

    def _observed(self, key: AppKey) -> dict[ObjKey, Body]:
        """The app's custom resources as cached, with statuses this replica wrote and the watch has not
        shown yet (so a status is never written twice)."""
        bodies = self.cache.crs(key)
        for (kind, name), body in bodies.items():
            mine = self.written.get((key[0], kind, name))
            if mine is None:
                continue
            if int(body["metadata"].get("resourceVersion") or 0) < mine[0]:
                body["status"] = mine[1]
            else:
                del self.written[(key[0], kind, name)]
        return bodies

    async def reconcile(self, key: AppKey, full: bool) -> None:
        ns, name = key
        t0 = time.monotonic()
        bodies = self._observed(key)
        app_body = bodies.get((api.APP, name))
        try:
            if app_body is None or app_body["metadata"].get("deletionTimestamp"):
                await self._without_app(key, bodies)
                self.metrics.count_reconcile(api.APP, "success")
                return
            state = self.states.get(key)
            if state is None or state.uid != app_body["metadata"]["uid"]:
                if state is not None:  # deleted and recreated under the same name: start afresh
                    self.on_app(key, None)
                    self.metrics.forget_app(ns, name)
                state = self.states[key] = AppState(uid=app_body["metadata"]["uid"])
            await self._reconcile(key, state, bodies, app_body, full)
            if full:  # a status-only pass does not redo what failed: only a full one clears the error
                state.failures, state.last_error = 0, None
            self.metrics.count_reconcile(api.APP, "success")
        except (asyncio.CancelledError, NotOwner):
            raise
        except Exception as e:
            log.exception("reconcile of %s/%s failed", ns, name)
            self.metrics.count_reconcile(api.APP, "error")
            state = self.states.get(key)
            if state is not None:
                state.failures += 1
                state.last_error = f"{type(e).__name__}: {e}"
                await self._report_error(key, state, app_body)
                self.requeue(key, min(60.0, 2.0 ** state.failures))
        finally:
            self.metrics.observe_reconcile(api.APP, time.monotonic() - t0)

    # -- the app exists -----------------------------------------------------------------------------
    async def _reconcile(self, key: AppKey, state: AppState, bodies: dict[ObjKey, Body], app_body: Body,
                         full: bool) -> None:
        ns, name = key
        app = CeleryApp.of(app_body)
        transport = app.config.get("broker_transport_options")
        state.transport_options = transport if isinstance(transport, dict) else None
        secret_data = await self.cache.secrets.data(ns, endpoints.referenced_secrets(app)) \
            if self.cache.secrets is not None else {}
        broker = endpoints.resolve(app, app.broker, "broker", secret_data, self._password)
        backend = endpoints.resolve(app, app.result_backend, "result-backend", secret_data, self._password) \
            if app.result_backend is not None else None
        flower_problem = flower_render.problem(app.flower, secret_data)
        topo = topology_of(bodies, app, broker.url)
        self._forget_gone(state, topo)
        pod_monitor = await POD_MONITORS.served(self.client)
        if pod_monitor:
            self.watch(api.POD_MONITOR)
        live = await self.cache.children(ns, name, [s for s in endpoints.referenced_secrets(app)])
        rendered = render_all(
            topo, endpoints.secrets_context(broker, backend),
            replicas_of=lambda p: state.replicas_for(p, (live.get(("Deployment", names.worker(name, p.meta.name)))
                                                        or {}).get("spec", {}).get("replicas")),
            broker_transport_options=state.transport_options, pod_monitor=pod_monitor,
            run_flower=flower_problem is None)
        for ep in (broker, backend):
            if ep is not None and ep.managed and ep.url is None:
                ep.url = decide.url_from_rendered(rendered, ep.ref)
                ep.problem = None
        chash = next((o["metadata"].get("annotations", {}).get(api.ANNOTATION_CONFIG_HASH, "")
                      for o in rendered if o["kind"] == "ConfigMap"), "")
        state.topology, state.broker, state.backend = topo, broker, backend
        if full:
            plan = decide.child_plan(rendered, live, self.cache.pods(ns, name))
            plan = self._release_overdue(state, plan, rendered)
            state.apply_errors = await self._apply(plan, live, app_body)
            await self._delete(plan.delete, app_body)
            await self._delete(plan.replace, app_body, propagation="Foreground",
                               why="left by a deleted object of the same name")
            if plan.replace or plan.hold:
                self.requeue(key, HOLD_RECHECK_SECONDS)
            await self._declare(state, topo, broker)
            await self._finalizers(key, bodies, topo, broker, state)
        self.on_app(key, state)
        await self._write_statuses(key, state, bodies, topo, broker, backend, chash, live, flower_problem)

    @staticmethod
    def _password() -> str:
        return secrets.token_urlsafe(24)

    def _forget_gone(self, state: AppState, topo: Topology) -> None:
        """Drop the metric series and scaling state of pools and queues that left the app."""
        old = state.topology
        ns, app = topo.app.meta.namespace, topo.app.meta.name
        if old is not None:
            for q in set(old.queue_names) - set(topo.queue_names):
                self.metrics.forget_queue(ns, app, q)
            for gone in {p.meta.name for p in old.pools} - {p.meta.name for p in topo.pools}:
                self.metrics.forget_pool(ns, app, gone)
                state.pools.pop(gone, None)
        for pool in topo.pools:
            if pool.autoscaling is None:
                self.metrics.set_pool_bounds(ns, app, pool.meta.name, None)

    async def _apply(self, plan: decide.ChildPlan, live: dict[ObjKey, Body], app_body: Body) -> list[str]:
        errors: list[str] = []
        gate = asyncio.Semaphore(APPLY_CONCURRENCY)

        async def one(obj: Body) -> None:
            key = decide.child_key(obj)
            async with gate:
                try:
                    live[key] = await self.client.apply(obj)
                    log.info("applied %s %s/%s (%s)", obj["kind"], obj["metadata"]["namespace"],
                             obj["metadata"]["name"], plan.why.get(key))
                except ApiError as e:
                    if obj["kind"] == "StatefulSet" and e.status == 422 and "Forbidden" in str(e):
                        errors.append(await self._replace_statefulset(obj, str(e)))
                        return
                    errors.append(f"{obj['kind']} {obj['metadata']['name']}: {e}")
                    log.warning("apply %s/%s failed: %s", obj["kind"], obj["metadata"]["name"], e)

        await asyncio.gather(*(one(o) for o in plan.apply if o["kind"] in APPLY_FIRST))
        await asyncio.gather(*(one(o) for o in plan.apply if o["kind"] not in APPLY_FIRST))
        return errors

    async def _delete(self, keys: list[ObjKey], app_body: Body, propagation: str = "Background",
                      why: str = "no longer desired") -> None:
        ns = app_body["metadata"]["namespace"]
        for kind, name in keys:
            log.info("deleting %s %s/%s: %s", kind, ns, name, why)
            if await self.client.delete(kind, ns, name, propagation=propagation):
                await self.recorder.normal(app_body, "Deleted", f"{kind} {name} deleted: {why}")

    @staticmethod
    def _release_overdue(state: AppState, plan: decide.ChildPlan, rendered: list[Body]) -> decide.ChildPlan:
        """Held workloads wait for their old pods at most their grace period and a margin (pods that
        never go, e.g. under a ReplicaSet orphaned by hand, are adopted by the new Deployment)."""
        now = time.monotonic()
        for kind, name in plan.hold:
            if (kind, name) not in state.held_since:
                log.info("%s %s: created once the pods of its predecessor are gone", kind, name)
        state.held_since = {k: state.held_since.get(k, now) for k in plan.hold}
        overdue = []
        for obj in rendered:
            key = decide.child_key(obj)
            if key not in state.held_since:
                continue
            grace = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                "terminationGracePeriodSeconds", 30)
            if now - state.held_since[key] > float(grace) + HOLD_MARGIN_SECONDS:
                log.warning("%s %s: its old pods did not go in time; creating it anyway", *key)
                overdue.append(decide.stamped(obj))
        if not overdue:
            return plan
        keys = {decide.child_key(o) for o in overdue}
        return dataclasses.replace(plan, apply=[*plan.apply, *overdue], hold=[k for k in plan.hold if k not in keys],
                                   why={**plan.why, **dict.fromkeys(keys, "old pods still there")})

    async def _replace_statefulset(self, obj: Body, error: str) -> str:
        """A managed server's StatefulSet whose immutable fields (its claim templates: storage size or
        class) changed: delete it and its claims that never bound (no data is lost), so the next cycle
        creates it anew. Bound claims keep their data; the message says so."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        claims = [c for c in await self.client.list("PersistentVolumeClaim", ns)
                  if c["metadata"]["name"].rsplit("-", 1)[0].endswith(f"-{name}")]
        bound = [c["metadata"]["name"] for c in claims if (c.get("status") or {}).get("phase") == "Bound"]
        if bound:
            return (f"StatefulSet {name}: its storage cannot change while claims {', '.join(bound)} hold data "
                    f"({error}); delete them to start over with the new storage")
        for c in claims:
            await self.client.delete("PersistentVolumeClaim", ns, c["metadata"]["name"])
        await self.client.delete("StatefulSet", ns, name, propagation="Foreground")
        return f"StatefulSet {name}: replaced, since its storage changed and no claim held data yet"

    async def _declare(self, state: AppState, topo: Topology, broker: endpoints.Endpoint) -> None:
        if broker.url is None:
            return
        h = _declare_hash(topo, broker.url)
        if h == state.declared_hash and time.monotonic() - state.declared_at < REDECLARE_SECONDS:
            return
        url, mgmt, opts = broker.url, broker.management_url, state.transport_options

        def run() -> list[Any]:
            with connect(url, management_url=mgmt, transport_options=opts) as b:
                return b.declare(topo.effective_exchanges, topo.effective_queues)

        try:
            results = await asyncio.to_thread(run)
        except BrokerError as e:
            state.broker_up, state.poll_error = False, str(e)
            return
        declared: dict[tuple[str, str], DeclareResult] = {}
        for r in results:
            kind = api.EXCHANGE if r.kind == "exchange" else api.QUEUE  # bindings and policies: the queue's
            prev = declared.get((kind, r.name))
            if prev is not None and _severity(prev) >= _severity(r):
                continue
            declared[(kind, r.name)] = r
        state.declared = declared
        if all(r.ok for r in results):
            state.declared_hash, state.declared_at = h, time.monotonic()

    # -- deletionPolicy: Delete ---------------------------------------------------------------------
    async def _finalizers(self, key: AppKey, bodies: dict[ObjKey, Body], topo: Topology | None,
                          broker: endpoints.Endpoint | None, state: AppState | None) -> None:
        """Objects that delete themselves from the broker carry our finalizer until they have."""
        for (kind, _), body in sorted(bodies.items()):
            if kind not in (api.EXCHANGE, api.QUEUE):
                continue
            md = body["metadata"]
            mine = FINALIZER in (md.get("finalizers") or [])
            deletes = (body.get("spec") or {}).get("deletionPolicy") == "Delete"
            if not md.get("deletionTimestamp"):
                if deletes and not mine:
                    await self._set_finalizers(kind, body, [*(md.get("finalizers") or []), FINALIZER])
                elif mine and not deletes:
                    await self._set_finalizers(kind, body, [f for f in md["finalizers"] if f != FINALIZER])
                continue
            if mine and await self._delete_from_broker(key, kind, body, broker, state):
                await self._set_finalizers(kind, body, [f for f in md["finalizers"] if f != FINALIZER])

    async def _set_finalizers(self, kind: str, body: Body, finalizers: list[str]) -> None:
        md = body["metadata"]
        try:  # resourceVersion: a precondition, so another writer's finalizer is never dropped
            await self.client.patch(kind, md["namespace"], md["name"], {"metadata": {
                "finalizers": finalizers, "resourceVersion": md["resourceVersion"]}})
        except ApiError as e:
            if e.status not in (404, 409):
                raise
            self.requeue((md["namespace"], (body.get("spec") or {}).get("appRef", {}).get("name", "")), 1.0)

    async def _delete_from_broker(self, key: AppKey, kind: str, body: Body, broker: endpoints.Endpoint | None,
                                  state: AppState | None) -> bool:
        """True once the object is gone from the broker, or given up on (with a Warning Event)."""
        obj: CeleryQueue | CeleryExchange = CeleryQueue.of(body) if kind == api.QUEUE else CeleryExchange.of(body)
        what = f"{'queue' if kind == api.QUEUE else 'exchange'} {obj.name}"
        if broker is None or broker.url is None:
            why = f"CeleryApp {key[1]} is gone" if broker is None else (broker.problem or "broker unknown")
            await self.recorder.warning(body, api.Reason.RETAINED_ON_BROKER, f"{what} left on the broker: {why}")
            return True
        url, mgmt = broker.url, broker.management_url
        opts = state.transport_options if state is not None else None

        def run() -> None:
            with connect(url, management_url=mgmt, transport_options=opts) as b:
                if kind == api.QUEUE:
                    b.delete_queue(obj.name)
                else:
                    b.delete_exchange(obj.name)

        try:
            await asyncio.to_thread(run)
        except BrokerError as e:
            if _age(body) > GIVE_UP_DELETING_AFTER_SECONDS:
                await self.recorder.warning(body, api.Reason.RETAINED_ON_BROKER, f"{what} left on the broker "
                                            f"after {GIVE_UP_DELETING_AFTER_SECONDS:.0f}s: {e}")
                return True
            self.requeue(key, 5.0)
            return False
        await self.recorder.normal(body, api.Reason.DELETED_FROM_BROKER, f"{what} deleted from the broker")
        return True

    # -- the app does not exist (yet, or any more) --------------------------------------------------
    async def _without_app(self, key: AppKey, bodies: dict[ObjKey, Body]) -> None:
        ns, name = key
        if self.states.pop(key, None) is not None:
            self.metrics.forget_app(ns, name)
        self.on_app(key, None)
        await self._finalizers(key, bodies, None, None, None)
        facts = decide.Facts(namespace=ns, app_name=name, bodies=bodies)
        await self._patch_statuses(bodies, decide.statuses(facts))

    # -- statuses -----------------------------------------------------------------------------------
    async def _write_statuses(self, key: AppKey, state: AppState, bodies: dict[ObjKey, Body], topo: Topology,
                              broker: endpoints.Endpoint, backend: endpoints.Endpoint | None, chash: str,
                              live: dict[ObjKey, Body], flower_problem: tuple[str, str] | None = None) -> None:
        ns, name = key
        pods = self.cache.pods(ns, name)
        state.worker_restarts = tuple(stale.restarts(pods))  # for the poller: no pod read of its own
        facts = decide.Facts(
            namespace=ns, app_name=name, bodies=bodies, topology=topo, broker=broker, backend=backend,
            config_hash=chash, children=live, pods=pods, scale=state.scale(), poll=state.poll(),
            declared=state.declared, apply_errors=state.apply_errors,
            managed_problem=await self._managed_problem(ns, live, pods), reconcile_error=state.last_error,
            flower_problem=flower_problem, quarantined=state.quarantined,
            quarantine_problem=state.quarantine_problem, now=time.time())
        self._pool_metrics(ns, name, topo, facts)
        self._beat_metrics(ns, name, topo, facts)
        await self._patch_statuses(bodies, decide.statuses(facts))

    def _beat_metrics(self, ns: str, app: str, topo: Topology, facts: decide.Facts) -> None:
        state, _ = decide.beat_state(facts)
        entries = {}
        for entry, known in decide.beat_entries(topo, state).items():
            upcoming = known.next_run()
            entries[entry] = BeatEntryState(
                known.last_run / schedule.US if known.last_run is not None else None,
                upcoming / schedule.US if upcoming is not None else None, known.skipped_runs)
        self.metrics.set_beat_entries(ns, app, entries)

    def _pool_metrics(self, ns: str, app: str, topo: Topology, facts: decide.Facts) -> None:
        for pool in topo.pools:
            dep = (facts.children.get(("Deployment", names.worker(app, pool.meta.name))) or {}).get("status") or {}
            st = facts.scale.get(pool.meta.name)
            desired = st.desired if st is not None and st.desired is not None else pool.replicas
            self.metrics.set_pool_replicas(ns, app, pool.meta.name, desired=desired,
                                           current=int(dep.get("replicas") or 0),
                                           ready=int(dep.get("readyReplicas") or 0))
            match = {api.LABEL_APP: app, api.LABEL_POOL: pool.meta.name}
            pool_pods = [p for p in facts.pods if has_labels(p, match)]
            self.metrics.set_worker_deaths(ns, app, pool.meta.name, quarantine.deaths_by_reason(pool_pods))

    async def _managed_problem(self, ns: str, live: dict[ObjKey, Body],
                               pods: list[Body]) -> workloads.WorkloadProblem | None:
        """Why a managed broker or result backend StatefulSet is not ready, if one is not: its claims
        (read only then), then its pods."""
        for (kind, name), sts in sorted(live.items()):
            if kind != "StatefulSet":
                continue
            st, spec = sts.get("status") or {}, sts.get("spec") or {}
            want = int(spec.get("replicas", 1))
            if int(st.get("readyReplicas") or 0) >= want:
                continue
            match = (spec.get("selector") or {}).get("matchLabels") or {}
            problem = None
            if spec.get("volumeClaimTemplates"):  # an unbound claim is the root cause of an unschedulable pod
                claims = [c for c in await self.client.list("PersistentVolumeClaim", ns)
                          if c["metadata"]["name"].rsplit("-", 1)[0].endswith(f"-{name}")]
                events = await self.client.list("Event", ns,
                                                field_selector="involvedObject.kind=PersistentVolumeClaim")
                problem = workloads.claim_problem(claims, events)
            if problem is None or not problem.degraded:
                mine = [p for p in pods if has_labels(p, match)]
                problem = workloads.pod_problem(mine) or problem
            if problem is None:
                problem = workloads.WorkloadProblem(api.Reason.BROKER_NOT_READY,
                                            f"{int(st.get('readyReplicas') or 0)}/{want} ready", degraded=False)
            return dataclasses.replace(problem, message=f"StatefulSet {name}: {problem.message}")
        return None

    async def _patch_statuses(self, bodies: dict[ObjKey, Body], desired: dict[ObjKey, decide.Desired]) -> None:
        now = conditions.now_iso()
        for (kind, name), want in sorted(desired.items()):
            body = bodies.get((kind, name))
            if body is None:
                continue
            patch, event = decide.status_patch(body, want, now)
            if patch is None:
                continue
            ns = body["metadata"]["namespace"]
            try:
                result = await self.client.patch(kind, ns, name, patch, sub="status")
            except ApiError as e:
                if e.status != 404:
                    log.warning("status of %s %s not written: %s", kind, name, e)
                continue
            body["status"] = result.get("status") or {**(body.get("status") or {}), **patch["status"]}
            self.written[(ns, kind, name)] = (int(result.get("metadata", {}).get("resourceVersion") or 0),
                                              body["status"])
            if event is not None:
                await self.recorder.emit(body, event.type, event.reason, event.message)
            for more in want.events:
                await self.recorder.emit(body, more.type, more.reason, more.message, dedupe=False)

    async def _report_error(self, key: AppKey, state: AppState, app_body: Body | None) -> None:
        """A reconcile that raised: Ready=False/ReconcileError on the app (cleared by the next success)."""
        if app_body is None:
            return
        fields = {k: v for k, v in (app_body.get("status") or {}).items() if k not in ("conditions",
                                                                                      "observedGeneration")}
        msg = f"reconcile failed (retried with backoff): {state.last_error}"
        want = decide.Desired(fields, conditions.not_ready(api.Reason.RECONCILE_ERROR, msg, progressing=True))
        try:
            await self._patch_statuses({(api.APP, key[1]): app_body}, {(api.APP, key[1]): want})
        except Exception as e:  # noqa: BLE001 - the API server itself may be the failure
            log.error("cannot report the failed reconcile of %s/%s: %s", *key, e)
