"""Act: carry out one app's plan (plan.py) against the API server and the broker, and say what happened.

Children are applied (ServiceAccounts and Roles first: others name them), deleted, or replaced; the
topology is declared; finalizer steps are taken (deleting from the broker first where asked); statuses
that changed are written with their Events; gauges are set. Every failure is logged and either reported
in the Outcome (an apply or a declaration the statuses show) or raised (the reconcile fails, counted,
and the app's Ready condition says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery_operator import api, conditions, decide, plan
from celery_operator.brokers import connect
from celery_operator.brokers.base import BrokerError
from celery_operator.controller.observe import WrittenStatuses
from celery_operator.controller.workqueue import AppKey
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.kube.events import Recorder
from celery_operator.metrics import BeatEntryState
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.topology import ObjKey

log = logging.getLogger(__name__)
Body = dict[str, Any]
APPLY_CONCURRENCY = 8
# Children others name and cannot do without, applied before the rest: a RoleBinding's Role (the API server
# refuses a binding to a Role it cannot find) and a pod's ServiceAccount (beat's).
APPLY_FIRST = ("ServiceAccount", "Role")


@dataclass
class Executor:
    client: KubeClient
    recorder: Recorder
    metrics: Metrics
    written: WrittenStatuses
    requeue: Callable[[AppKey, float], None]  # (key, delay): reconcile again later

    async def carry_out(self, snap: plan.Snapshot, p: plan.Plan) -> plan.Outcome:
        """A full reconcile's changes to the cluster and the broker."""
        key = (snap.namespace, snap.app_name)
        app_body = snap.app
        errors: tuple[str, ...] = ()
        applied: dict[ObjKey, Body] = {}
        if p.children is not None and app_body is not None:
            for kind, name in p.newly_held:
                log.info("%s %s: created once the pods of its predecessor are gone", kind, name)
            for kind, name in p.overdue:
                log.warning("%s %s: its old pods did not go in time; creating it anyway", kind, name)
            errors = await self._apply(p.children, applied)
            await self._delete(p.children.delete, app_body)
            await self._delete(p.children.replace, app_body, propagation="Foreground",
                               why="left by a deleted object of the same name")
        if p.requeue_after is not None:
            self.requeue(key, p.requeue_after)
        outcome = await self._declare(p.declaration)
        for step in p.finalizers:
            await self._finalize(key, step)
        return plan.Outcome(errors, applied, *outcome)

    def forget(self, snap: plan.Snapshot, p: plan.Plan) -> None:
        """Drop the metric series of the queues and pools that left the app."""
        ns, app = snap.namespace, snap.app_name
        for q in p.gone_queues:
            self.metrics.forget_queue(ns, app, q)
        for pool in p.gone_pools:
            self.metrics.forget_pool(ns, app, pool)
        for pool in p.unscaled_pools:
            self.metrics.set_pool_bounds(ns, app, pool, None)

    # -- children ----------------------------------------------------------------------------------------
    async def _apply(self, children: decide.ChildPlan, applied: dict[ObjKey, Body]) -> tuple[str, ...]:
        errors: list[str] = []
        gate = asyncio.Semaphore(APPLY_CONCURRENCY)

        async def one(obj: Body) -> None:
            key = decide.child_key(obj)
            async with gate:
                try:
                    applied[key] = await self.client.apply(obj)
                    log.info("applied %s %s/%s (%s)", obj["kind"], obj["metadata"]["namespace"],
                             obj["metadata"]["name"], children.why.get(key))
                except ApiError as e:
                    if obj["kind"] == "StatefulSet" and e.status == 422 and "Forbidden" in str(e):
                        errors.append(await self.replace_statefulset(obj, str(e)))
                        return
                    errors.append(f"{obj['kind']} {obj['metadata']['name']}: {e}")
                    log.warning("apply %s/%s failed: %s", obj["kind"], obj["metadata"]["name"], e)

        await asyncio.gather(*(one(o) for o in children.apply if o["kind"] in APPLY_FIRST))
        await asyncio.gather(*(one(o) for o in children.apply if o["kind"] not in APPLY_FIRST))
        return tuple(errors)

    async def _delete(self, keys: list[ObjKey], app_body: Body, propagation: str = "Background",
                      why: str = "no longer desired") -> None:
        ns = app_body["metadata"]["namespace"]
        for kind, name in keys:
            log.info("deleting %s %s/%s: %s", kind, ns, name, why)
            if await self.client.delete(kind, ns, name, propagation=propagation):
                await self.recorder.normal(app_body, "Deleted", f"{kind} {name} deleted: {why}")

    async def replace_statefulset(self, obj: Body, error: str) -> str:
        """A managed server's StatefulSet whose immutable fields (its claim templates: storage size or
        class) changed: delete it and its claims that never bound (no data is lost), so the next cycle
        creates it anew. Bound claims keep their data; the message says so. The claims are read here, from
        the API server: only the refusal tells that they matter.

        The StatefulSet goes first: until it is marked for deletion its controller recreates a missing
        claim of its pod from the old template (seen: the new StatefulSet's pod then waited for ever on a
        claim of the old storage class). A claim still being deleted when the new StatefulSet comes is
        safe: its controller creates no pod on a claim being deleted, and creates the claim anew once it
        is gone."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        claims = plan.claims_of(await self.client.list("PersistentVolumeClaim", ns), name)
        bound = [c["metadata"]["name"] for c in claims if (c.get("status") or {}).get("phase") == "Bound"]
        if bound:
            return (f"StatefulSet {name}: its storage cannot change while claims {', '.join(bound)} hold data "
                    f"({error}); delete them to start over with the new storage")
        await self.client.delete("StatefulSet", ns, name, propagation="Foreground")
        for c in claims:
            await self.client.delete("PersistentVolumeClaim", ns, c["metadata"]["name"])
        return f"StatefulSet {name}: replaced, since its storage changed and no claim held data yet"

    # -- the broker ----------------------------------------------------------------------------------------
    async def _declare(self, d: plan.Declaration | None) -> tuple[Any, bool, str | None]:
        """(results per object or None, every object declared, the broker's error)."""
        if d is None:
            return None, False, None

        def run() -> list[Any]:
            with connect(d.url, management_url=d.management_url, transport_options=d.transport_options) as b:
                return b.declare(list(d.exchanges), list(d.queues))

        try:
            results = await asyncio.to_thread(run)
        except BrokerError as e:
            log.warning("declaring on the broker failed: %s", e)
            return None, False, str(e)
        return plan.declared_by_object(results), all(r.ok for r in results), None

    async def _finalize(self, key: AppKey, step: plan.FinalizerStep) -> None:
        if step.action == "retain":
            await self.recorder.warning(step.body, api.Reason.RETAINED_ON_BROKER, step.message)
        elif step.action == "delete-from-broker" and not await self._delete_from_broker(key, step):
            return
        md = step.body["metadata"]
        try:  # resourceVersion: a precondition, so another writer's finalizer is never dropped
            await self.client.patch(step.kind, md["namespace"], md["name"], {"metadata": {
                "finalizers": step.finalizers(), "resourceVersion": md["resourceVersion"]}})
        except ApiError as e:
            if e.status not in (404, 409):
                raise
            self.requeue(key, 1.0)

    async def _delete_from_broker(self, key: AppKey, step: plan.FinalizerStep) -> bool:
        """True once the object is gone from the broker, or given up on (with a Warning Event)."""
        assert step.broker is not None and step.broker.url is not None
        url, mgmt, opts = step.broker.url, step.broker.management_url, step.transport_options

        def run() -> None:
            with connect(url, management_url=mgmt, transport_options=opts) as b:
                if step.kind == api.QUEUE:
                    b.delete_queue(step.broker_object)
                else:
                    b.delete_exchange(step.broker_object)

        try:
            await asyncio.to_thread(run)
        except BrokerError as e:
            if step.give_up:
                await self.recorder.warning(step.body, api.Reason.RETAINED_ON_BROKER, f"{step.what} left on the "
                                            f"broker after {plan.GIVE_UP_DELETING_AFTER_SECONDS:.0f}s: {e}")
                return True
            log.warning("deleting %s from the broker failed (retried): %s", step.what, e)
            self.requeue(key, 5.0)
            return False
        await self.recorder.normal(step.body, api.Reason.DELETED_FROM_BROKER, f"{step.what} deleted from the broker")
        return True

    # -- statuses and gauges ---------------------------------------------------------------------------------
    async def publish(self, snap: plan.Snapshot, report: plan.Report) -> None:
        ns, app = snap.namespace, snap.app_name
        for pool, g in report.pools.items():
            self.metrics.set_pool_replicas(ns, app, pool, desired=g.desired, current=g.current, ready=g.ready)
            self.metrics.set_worker_deaths(ns, app, pool, dict(g.worker_deaths))
        if report.beat_entries is not None:
            self.metrics.set_beat_entries(ns, app, {e: BeatEntryState(*v) for e, v in report.beat_entries.items()})
        await self.patch_statuses(snap.bodies, report.statuses)

    async def patch_statuses(self, bodies: dict[ObjKey, Body], desired: dict[ObjKey, decide.Desired]) -> None:
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
            self.written.record(ns, kind, name, int(result.get("metadata", {}).get("resourceVersion") or 0),
                                body["status"])
            if event is not None:
                await self.recorder.emit(body, event.type, event.reason, event.message)
            for more in want.events:
                await self.recorder.emit(body, more.type, more.reason, more.message, dedupe=False)

    async def report_error(self, key: AppKey, error: str, app_body: Body | None) -> None:
        """A reconcile that raised: Ready=False/ReconcileError on the app (cleared by the next success)."""
        if app_body is None:
            return
        fields = {k: v for k, v in (app_body.get("status") or {}).items() if k not in ("conditions",
                                                                                      "observedGeneration")}
        msg = f"reconcile failed (retried with backoff): {error}"
        want = decide.Desired(fields, conditions.not_ready(api.Reason.RECONCILE_ERROR, msg, progressing=True))
        try:
            await self.patch_statuses({(api.APP, key[1]): app_body}, {(api.APP, key[1]): want})
        except Exception as e:  # noqa: BLE001 - the API server itself may be the failure
            log.error("cannot report the failed reconcile of %s/%s: %s", *key, e)
