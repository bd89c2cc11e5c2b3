"""The registry of app workers: starts one per CeleryApp, routes triggers, stops them on deletion."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from celery_operator import api, conditions
from celery_operator.controller.app_worker import AppWorker
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics

log = logging.getLogger(__name__)
Key = tuple[str, str]


@dataclass
class Runtime:
    client: KubeClient
    recorder: Recorder
    metrics: Metrics
    workers: dict[Key, tuple[AppWorker, asyncio.Task[None]]] = field(default_factory=dict)

    @classmethod
    async def create(cls, metrics: Metrics) -> Runtime:
        client = await KubeClient.login()
        return cls(client, Recorder(client), metrics)

    def ensure(self, namespace: str, app: str) -> None:
        """Start the app's worker if needed, and trigger a reconcile."""
        key = (namespace, app)
        entry = self.workers.get(key)
        if entry is None or entry[1].done():
            worker = AppWorker(self.client, self.recorder, self.metrics, namespace, app)
            task = asyncio.create_task(self._run(worker), name=f"app:{namespace}/{app}")
            self.workers[key] = (worker, task)
        else:
            entry[0].trigger.set()

    async def _run(self, worker: AppWorker) -> None:
        try:
            await worker.run()
        finally:
            key = (worker.namespace, worker.name)
            if self.workers.get(key, (None,))[0] is worker:
                self.workers.pop(key, None)
            self.metrics.forget_app(worker.namespace, worker.name)

    def trigger(self, namespace: str, app: str) -> bool:
        entry = self.workers.get((namespace, app))
        if entry is None or entry[1].done():
            return False
        entry[0].trigger.set()
        return True

    def stop_app(self, namespace: str, app: str) -> None:
        entry = self.workers.pop((namespace, app), None)
        if entry is not None:
            entry[0].stopped.set()
            self.metrics.forget_app(namespace, app)

    async def orphan(self, kind: str, body: dict[str, Any]) -> None:
        """An object whose app does not exist (yet): say so in its status and an Event."""
        md, spec = body["metadata"], body.get("spec") or {}
        app = (spec.get("appRef") or {}).get("name", "")
        if md.get("deletionTimestamp"):
            return
        if await self.client.get(api.APP, md["namespace"], app) is not None:
            self.ensure(md["namespace"], app)
            return
        msg = f"CeleryApp {app} not found in namespace {md['namespace']}: create it or fix spec.appRef.name"
        gen = int(md.get("generation") or 0)
        old = (body.get("status") or {}).get("conditions")
        new = conditions.merge(old, conditions.not_ready(api.Reason.APP_NOT_FOUND, msg), gen)
        if conditions.same(old, new) and (body.get("status") or {}).get("observedGeneration") == gen:
            return
        with contextlib.suppress(ApiError):
            await self.client.patch(kind, md["namespace"], md["name"],
                                    {"status": {"observedGeneration": gen, "conditions": new}}, sub="status")
        await self.recorder.warning(body, api.Reason.APP_NOT_FOUND, msg)

    async def close(self) -> None:
        for worker, task in list(self.workers.values()):
            worker.stopped.set()
            task.cancel()
        for _, task in list(self.workers.values()):
            with contextlib.suppress(BaseException):
                await task
        self.workers.clear()
        await self.client.close()
