"""One reconcile of one app, in three steps: observe (controller/observe.py: the caches, as a Snapshot),
plan (plan.py: pure, a value), act (controller/act.py: only what differs).

A full reconcile applies the children that differ, deletes the ones no longer wanted, declares the topology
on the broker when it changed, and takes the finalizer steps of objects deleted from the broker; every
reconcile (also the status-only ones a poll or a pod change asks for) then writes the statuses that changed,
with an Event per transition. The reconciler owns what it remembers of each app (`AppState.reconciled`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery_operator import api, plan
from celery_operator.controller.act import Executor
from celery_operator.controller.observe import ClusterCache, Observer, WrittenStatuses
from celery_operator.controller.state import AppState
from celery_operator.controller.workqueue import AppKey
from celery_operator.kube.client import KubeClient, NotOwner
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics

log = logging.getLogger(__name__)


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
    written: WrittenStatuses = field(default_factory=WrittenStatuses)
    observer: Observer = field(init=False)
    act: Executor = field(init=False)

    def __post_init__(self) -> None:
        self.observer = Observer(self.cache, self.client, self.written, self.watch)
        self.act = Executor(self.client, self.recorder, self.metrics, self.written, self.requeue)

    async def reconcile(self, key: AppKey, full: bool) -> None:
        ns, name = key
        t0 = time.monotonic()
        snap: plan.Snapshot | None = None
        try:
            snap = await self.observer.snapshot(key)
            if snap.app is None:
                await self._without_app(key, snap)
            else:
                await self._with_app(key, snap, full)
            self.metrics.count_reconcile(api.APP, "success")
        except (asyncio.CancelledError, NotOwner):
            raise
        except Exception as e:
            log.exception("reconcile of %s/%s failed", ns, name)
            self.metrics.count_reconcile(api.APP, "error")
            app_body = snap.app if snap is not None else self.cache.crs(key).get((api.APP, name))
            if app_body is not None and not app_body["metadata"].get("deletionTimestamp"):
                state = self._state(key, app_body)
                memory = state.reconciled
                state.reconciled = dataclasses.replace(memory, failures=memory.failures + 1,
                                                       last_error=f"{type(e).__name__}: {e}")
                await self.act.report_error(key, state.reconciled.last_error or "", app_body)
                self.requeue(key, min(60.0, 2.0 ** state.reconciled.failures))
        finally:
            self.metrics.observe_reconcile(api.APP, time.monotonic() - t0)

    async def _with_app(self, key: AppKey, snap: plan.Snapshot, full: bool) -> None:
        assert snap.app is not None
        state = self._state(key, snap.app, snap.monotonic)
        hold = plan.first_render_hold(snap, state.first_seen)
        if hold > 0:  # the rest of the app's objects may still be on their way: render them all at once
            self.requeue(key, hold)
            return
        p = plan.plan(snap, state.reconciled, state.scale(), state.paused(), full)
        self.act.forget(snap, p)
        outcome = await self.act.carry_out(snap, p) if full else None
        memory = plan.remember(state.reconciled, snap, p, outcome)
        if full:  # a status-only pass does not redo what failed: only a full one clears the error
            memory = dataclasses.replace(memory, failures=0, last_error=None)
        state.reconciled = memory
        self.on_app(key, state)
        await self.act.publish(snap, plan.report(snap, p, memory, state.scale(), state.polled(), outcome))

    def _state(self, key: AppKey, app_body: plan.Body, now: float | None = None) -> AppState:
        uid = app_body["metadata"]["uid"]
        state = self.states.get(key)
        if state is None or state.uid != uid:
            if state is not None:  # deleted and recreated under the same name: start afresh
                self.on_app(key, None)
                self.metrics.forget_app(*key)
            state = self.states[key] = AppState(uid=uid, first_seen=time.monotonic() if now is None else now)
        return state

    async def _without_app(self, key: AppKey, snap: plan.Snapshot) -> None:
        """The app does not exist (yet, or any more): objects naming it say so; finalizers go."""
        if self.states.pop(key, None) is not None:
            self.metrics.forget_app(*key)
        self.on_app(key, None)
        p = plan.plan(snap, plan.Memory(), {}, frozenset(), full=True)
        await self.act.carry_out(snap, p)
        await self.act.publish(snap, plan.report(snap, p, plan.Memory(), {}, plan.Polled()))
