"""Wires the controller: caches, the work queue, the reconciler, the pollers, the shard leases.

kopf feeds the custom resources (its indexes hold them; its event handlers call `notify`), the
operator's informers feed the children, pods and Secrets. Every change turns into a key
(namespace, app) on the work queue, full when something the children depend on changed and
status-only when only what statuses report did; our own status writes come back as events that
change nothing and are dropped here. Only apps of shards this replica holds are worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator import api, endpoints
from celery_operator.controller.observe import CR_KINDS, WATCHED_CHILDREN, ClusterCache, Index
from celery_operator.controller.poller import Poller
from celery_operator.controller.reconciler import Reconciler
from celery_operator.controller.secrets import SecretCache
from celery_operator.controller.state import AppState
from celery_operator.controller.workqueue import AppKey, WorkQueue
from celery_operator.kube.client import KubeClient
from celery_operator.kube.events import Recorder
from celery_operator.kube.informer import Informer
from celery_operator.kube.shards import ShardManager, current_shard
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import CeleryApp
from celery_operator.render import names

log = logging.getLogger(__name__)
Body = dict[str, Any]
RESYNC_SECONDS = 300.0  # every owned app is re-decided from the caches this often (no API reads)
MANAGED = f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}"
SYNC_TIMEOUT_SECONDS = 20.0
# Beat writes its state ConfigMap with every run it claims: the statuses it feeds follow within this delay,
# so an entry running every second costs a status write every few seconds, not every second.
BEAT_STATUS_DELAY_SECONDS = 3.0
# What the operator sets on a child; a change elsewhere (data, spec) of the children beat writes is beat's.
_OWN_METADATA = ("labels", "annotations", "ownerReferences", "deletionTimestamp", "finalizers")


def beat_wrote(kind: str, app: str, new: Body, old: Body) -> bool:
    """Whether a change of a child is beat's own write (its state ConfigMap's data, its Lease's spec):
    the child itself is still what the operator applied, so there is nothing to apply."""
    name = new["metadata"].get("name")
    if (kind, name) not in (("ConfigMap", names.beat_state(app)), ("Lease", names.beat(app))):
        return False
    return all(new["metadata"].get(k) == old["metadata"].get(k) for k in _OWN_METADATA)


def _fingerprint(body: Body) -> tuple[Any, ...]:
    """What a custom resource's reconcile depends on; a status-only change leaves it unchanged."""
    md = body.get("metadata") or {}
    notes = md.get("annotations") or {}
    return (md.get("generation"), md.get("deletionTimestamp"), tuple(md.get("finalizers") or ()),
            (body.get("spec") or {}).get("appRef", {}).get("name"),
            notes.get(api.ANNOTATION_PAUSED), notes.get(api.ANNOTATION_PAUSED_REPLICAS))  # a pool's pause


def app_key(kind: str, body: Body) -> AppKey | None:
    md = body.get("metadata") or {}
    if kind == api.APP:
        return md.get("namespace", ""), md["name"]
    ref = ((body.get("spec") or {}).get("appRef") or {}).get("name")
    return (md.get("namespace", ""), ref) if ref else None


@dataclass
class Runtime:
    client: KubeClient
    metrics: Metrics
    namespaces: list[str]  # watched namespaces; empty: all
    shards: ShardManager | None = None
    resync_seconds: float = RESYNC_SECONDS
    cache: ClusterCache = field(init=False)
    queue: WorkQueue = field(init=False)
    reconciler: Reconciler = field(init=False)
    poller: Poller = field(init=False)
    states: dict[AppKey, AppState] = field(default_factory=dict)
    pollers: dict[AppKey, asyncio.Task[None]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # CR uid -> fingerprint
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        recorder = Recorder(self.client)
        self.cache = ClusterCache(indexes={})
        self.reconciler = Reconciler(self.client, self.cache, recorder, self.metrics, self.states,
                                     requeue=lambda key, delay: self.queue.add(key, delay=delay),
                                     on_app=self._on_app, watch=self._watch)
        self.poller = Poller(self.client, self.cache, recorder, self.metrics,
                             after_poll=lambda key, full: self.queue.add(key, full=full))
        self.queue = WorkQueue(self._work)
        if self.shards is not None:
            self.shards.on_acquired = self._acquired
            self.shards.on_lost = self._lost
            self.client.write_guard = self.shards.guard

    # -- ownership ----------------------------------------------------------------------------------
    def owns(self, key: AppKey) -> bool:
        return self.shards is None or self.shards.owns(*key)

    def _shard(self, key: AppKey) -> int | None:
        return None if self.shards is None else self.shards.shard_of(*key)

    def _acquired(self, shard: int) -> None:
        for key in self.cache.app_keys():
            if self._shard(key) == shard:
                self.queue.add(key)

    def _lost(self, shard: int) -> None:
        for key in list(self.pollers):
            if self._shard(key) == shard:
                self._stop_poller(key)
        for key in self.cache.app_keys():
            if self._shard(key) == shard:
                self.queue.forget(key)
                self.states.pop(key, None)

    # -- work ---------------------------------------------------------------------------------------
    async def _work(self, key: AppKey, full: bool) -> None:
        if not self.owns(key):
            return
        token = current_shard.set(self._shard(key))
        try:
            await self.reconciler.reconcile(key, full)
        finally:
            current_shard.reset(token)

    def _on_app(self, key: AppKey, state: AppState | None) -> None:
        if state is None:
            self._stop_poller(key)
            return
        task = self.pollers.get(key)
        if (task is None or task.done()) and self.owns(key):
            self.pollers[key] = asyncio.create_task(self._poll(key, state), name=f"poll:{key[0]}/{key[1]}")

    async def _poll(self, key: AppKey, state: AppState) -> None:
        current_shard.set(self._shard(key))
        await self.poller.run(key, state)

    def _stop_poller(self, key: AppKey) -> None:
        task = self.pollers.pop(key, None)
        if task is not None:
            task.cancel()

    # -- notifications ------------------------------------------------------------------------------
    def notify(self, kind: str, event: str, body: Body) -> None:
        """A custom resource changed (kopf's watch). Status-only changes (our own writes) are dropped."""
        uid = body.get("metadata", {}).get("uid", "")
        key = app_key(kind, body)
        before = self._seen.get(uid)
        if event == "DELETED":
            self._seen.pop(uid, None)
        else:
            now = _fingerprint(body)
            if before == now:
                return
            self._seen[uid] = now
        if key is not None:
            self.queue.add(key)
        if before is not None and before[3] and kind != api.APP and (key is None or before[3] != key[1]):
            self.queue.add((body["metadata"].get("namespace", ""), before[3]))  # it left another app

    def _child_changed(self, kind: str, event: str, new: Body | None, old: Body | None) -> None:
        obj = new or old
        assert obj is not None
        app = (obj["metadata"].get("labels") or {}).get(api.LABEL_APP)
        if not app:
            return
        key = (obj["metadata"].get("namespace", ""), app)
        if kind in ("Deployment", "StatefulSet") and new is not None and old is not None \
                and new["metadata"].get("generation") == old["metadata"].get("generation"):
            self.queue.add(key, full=False)  # only its status moved
        elif new is not None and old is not None and beat_wrote(kind, app, new, old):
            if kind == "ConfigMap":  # its state: what the schedules' statuses report, at most this often
                self.queue.add(key, full=False, delay=BEAT_STATUS_DELAY_SECONDS)
        else:
            self.queue.add(key, full=kind != "Pod")

    def _secret_changed(self, secret: tuple[str, str]) -> None:
        ns, name = secret
        for key in self.cache.app_keys():
            if key[0] != ns:
                continue
            body = self.cache.crs(key).get((api.APP, key[1]))
            if body is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    if name in endpoints.referenced_secrets(CeleryApp.of(body)):
                        self.queue.add(key)

    # -- lifecycle ----------------------------------------------------------------------------------
    def _informer(self, kind: str, namespace: str | None, **kw: Any) -> Informer:
        return Informer(self.client, kind, namespace, **kw)

    def _children_informers(self, kind: str) -> list[Informer]:
        return [self._informer(kind, ns, label_selector=MANAGED, index_label=api.LABEL_APP,
                               on_change=lambda ev, new, old, kind=kind: self._child_changed(kind, ev, new, old))
                for ns in self._scopes()]

    def _scopes(self) -> list[str | None]:
        return list(self.namespaces) or [None]

    def _watch(self, kind: str) -> None:
        """Start watching a child kind the cluster serves now (PodMonitor once its CRD is installed)."""
        if kind in self.cache.informers:
            return
        self.cache.informers[kind] = self._children_informers(kind)
        for inf in self.cache.informers[kind]:
            self._tasks.append(asyncio.create_task(inf.run(), name=f"informer:{kind}:{inf.namespace or '*'}"))

    async def start(self, indexes: Mapping[str, Index]) -> None:
        self.cache.indexes = dict(indexes)
        scopes = self._scopes()
        for kind in (*WATCHED_CHILDREN, "Pod"):
            self.cache.informers[kind] = self._children_informers(kind)
        secrets = SecretCache(self.client, on_change=self._secret_changed)
        secrets.informers = [self._informer("Secret", ns, metadata_only=True, on_change=secrets.observe,
                                            index_label=api.LABEL_APP) for ns in scopes]
        self.cache.secrets = secrets
        self.cache.informers["Secret"] = secrets.informers
        for infs in self.cache.informers.values():
            for inf in infs:
                self._tasks.append(await inf.start())
        every = [inf for infs in self.cache.informers.values() for inf in infs]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(inf.synced.wait() for inf in every)), SYNC_TIMEOUT_SECONDS)
        behind = [f"{inf.kind} ({inf.namespace or 'all namespaces'})" for inf in every if not inf.synced.is_set()]
        if behind:
            # Reconciles go on: what cannot be read fails there, and becomes the apps' conditions.
            log.error("not synced after %ss (RBAC?): %s", SYNC_TIMEOUT_SECONDS, ", ".join(behind))
        if self.shards is not None:
            self._tasks.append(asyncio.create_task(self.shards.run(self._stop), name="shards"))
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))
        self._tasks.append(asyncio.create_task(self._report_ownership(), name="ownership"))
        self.queue.start()
        log.info("caches synced (%d informers); reconciling", sum(len(v) for v in self.cache.informers.values()))

    async def _resync(self) -> None:
        while True:
            for key in sorted(self.cache.app_keys()):
                if self.owns(key):
                    self.queue.add(key)
            await asyncio.sleep(self.resync_seconds)

    async def _report_ownership(self) -> None:
        while True:
            held = len([s for s in self.shards.held if self.shards.holds(s)]) if self.shards is not None else 1
            self.metrics.set_ownership(sum(1 for key in self.states if self.owns(key)), held)
            await asyncio.sleep(2.0)

    async def close(self) -> None:
        self._stop.set()
        await self.queue.stop()
        for key in list(self.pollers):
            self._stop_poller(key)
        for t in self._tasks:
            if t.get_name() != "shards":
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()


__all__ = ["CR_KINDS", "Runtime"]
