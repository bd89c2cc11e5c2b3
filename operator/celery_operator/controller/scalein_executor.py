"""The I/O of an autoscaled pool's scale-in: it carries out what the pure `scalein.py` chooses.

When the autoscaler lowers a pool's replicas, the poller hands the change to `ScaleIn.start`: it asks
the pool's workers over the broker what they hold (Celery's remote control, one round trip for all
of them), writes each pod's `controller.kubernetes.io/pod-deletion-cost`, waits until its own pod
cache shows them (the ReplicaSet controller reads its own watch of the same pods), then patches the
Deployment's `/scale`. When a victim still has work (no idle pod was left to take its place) and the
pool allows a drain (`scaleDownDrainSeconds`), the victims stop consuming and the scale waits, in a
task of its own, until they hold nothing or the bound passes; a poll that wants the replicas back
calls the drain off and the victims consume again.

Between scale-ins this costs nothing: the cached pods are read on a pool's first poll, where a pod still
marked drained that no drain of this process accounts for (a drain interrupted by an operator restart)
gets its consumers back, and after a drain until its pods are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery_operator import api, conditions, scalein
from celery_operator.brokers import BrokerError
from celery_operator.brokers.control import RemoteControl
from celery_operator.controller.observe import ClusterCache
from celery_operator.controller.state import AppState
from celery_operator.controller.workqueue import AppKey
from celery_operator.kube.client import ApiError, KubeClient, NotOwner
from celery_operator.kube.events import Recorder
from celery_operator.metrics import OperatorMetrics as Metrics
from celery_operator.models import CeleryWorkerPool
from celery_operator.topology import Topology

log = logging.getLogger(__name__)
Body = dict[str, Any]
T = TypeVar("T")
# (desired replicas, what the scale-in did) -> whether /scale was patched
Apply = Callable[[int, str], Awaitable[bool]]
CONTROL_CALL_TIMEOUT_SECONDS = 20.0  # one remote-control call, connection included
COSTS_VISIBLE_TIMEOUT_SECONDS = 5.0
DRAIN_POLL_SECONDS = 1.0
# A drained pod is expected gone this long after its scale-in; if it still lives, it consumes again.
DRAINED_GONE_WITHIN_SECONDS = 60.0


@dataclass
class Drain:
    """One pool's drain, kept by the scale-in (no one else writes it)."""

    task: asyncio.Task[None] | None = None  # waiting for busy victims to drain; it scales when done
    drain_from: int = 0  # the replicas it started from
    drained: dict[str, float] = field(default_factory=dict)  # pod -> monotonic time it should be gone by
    recheck: bool = True  # look for pods left drained (a pool new to this process, or a restore that failed)


@dataclass
class ScaleIn:
    client: KubeClient
    cache: ClusterCache
    recorder: Recorder
    metrics: Metrics
    drains: dict[tuple[AppKey, str], Drain] = field(default_factory=dict)  # (app, pool) ->

    def draining(self, key: AppKey, pool: str) -> int | None:
        """The replicas a drain under way started from (None: no drain)."""
        d = self.drains.get((key, pool))
        return d.drain_from if d is not None and d.task is not None else None

    def call_off(self, key: AppKey, pool: str) -> None:
        """Stop a drain under way: its workers consume again (the replicas stay)."""
        d = self.drains.get((key, pool))
        if d is not None and d.task is not None:
            d.task.cancel()

    def forget(self, key: AppKey, pool: str | None = None) -> None:
        """A pool (or every pool of the app) this poller no longer scales: its drain is called off."""
        for k in [k for k in self.drains if k[0] == key and pool in (None, k[1])]:
            self.call_off(*k)
            del self.drains[k]

    def pool_pods(self, namespace: str, app: str, pool: str) -> list[Body]:
        return scalein.live_pods(p for p in self.cache.pods(namespace, app)
                                 if (p["metadata"].get("labels") or {}).get(api.LABEL_POOL) == pool)

    # -- remote control -------------------------------------------------------------------------------
    async def _control(self, state: AppState, topo: Topology, op: Callable[[RemoteControl], T]) -> T:
        broker = state.broker
        if broker is None or broker.url is None:
            raise BrokerError("broker URL unknown")
        url, config, opts = broker.url, dict(topo.app.config), state.transport_options

        def run() -> T:
            with RemoteControl(url, config, opts) as rc:
                return op(rc)

        try:
            return await asyncio.wait_for(asyncio.to_thread(run), CONTROL_CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            raise BrokerError("remote control: no answer in time") from None

    # -- pods -------------------------------------------------------------------------------------------
    async def _annotate(self, namespace: str, costs: Mapping[str, int | None], drained: Iterable[str] = (),
                        undrained: Iterable[str] = ()) -> list[str]:
        """Write the annotations; the problems of the pods it could not annotate (gone ones excepted)."""
        patches: dict[str, dict[str, str | None]] = {}
        for pod, cost in costs.items():
            patches.setdefault(pod, {})[api.ANNOTATION_POD_DELETION_COST] = None if cost is None else str(cost)
        for pod in drained:
            patches.setdefault(pod, {})[api.ANNOTATION_DRAINED] = conditions.now_iso()
        for pod in undrained:
            patches.setdefault(pod, {})[api.ANNOTATION_DRAINED] = None

        async def one(pod: str, annotations: dict[str, str | None]) -> str | None:
            try:
                await self.client.patch("Pod", namespace, pod, {"metadata": {"annotations": annotations}})
            except ApiError as e:  # a pod gone meanwhile needs no cost
                if e.status != 404:
                    log.warning("annotating pod %s/%s failed: %s", namespace, pod, e)
                    return f"{pod}: {e}"
            return None

        return [p for p in await asyncio.gather(*(one(pod, ann) for pod, ann in patches.items())) if p]

    async def _visible(self, namespace: str, app: str, pool: str, costs: Mapping[str, int | None]) -> None:
        """Wait (bounded) until the pod cache shows the written costs: the watch the ReplicaSet controller
        reads has then delivered them too."""
        deadline = time.monotonic() + COSTS_VISIBLE_TIMEOUT_SECONDS
        while costs and time.monotonic() < deadline:
            live = {p["metadata"]["name"]: scalein.pod_cost(p) for p in self.pool_pods(namespace, app, pool)}
            if all(pod not in live or live[pod] == cost for pod, cost in costs.items()):
                return
            await asyncio.sleep(0.05)

    # -- the scale-in -----------------------------------------------------------------------------------
    async def start(self, key: AppKey, state: AppState, topo: Topology, pool: CeleryWorkerPool,
                    current: int, desired: int, apply: Apply) -> None:
        """Choose the pods to remove and scale down now, or start draining them (the scale follows)."""
        ns, app = key
        name = pool.meta.name
        pods = self.pool_pods(ns, app, name)
        remove = len(pods) - desired
        if remove <= 0:  # fewer live pods than replicas (some already leaving): nothing to choose
            await apply(desired, f"{len(pods)} live pods: none to choose")
            return
        loads: dict[str, scalein.Load] = {}
        trouble = ""
        nodes = list(scalein.nodes(pods, name))
        try:
            loads = await self._control(state, topo, lambda rc: rc.loads(nodes))
        except BrokerError as e:
            trouble = f" (remote control failed: {e})"
        plan = scalein.plan(scalein.workers(pods, name, loads, solo=pool.pool == "solo"), remove)
        a = pool.autoscaling
        bound = a.scale_down_drain_seconds if a is not None else 0
        to_drain = plan.busy_victims if bound > 0 else ()
        failed = await self._annotate(ns, plan.costs, drained=[w.pod for w in to_drain])
        if failed:  # the scale goes on, undrained: without the costs the ReplicaSet picks, as without us
            trouble += f" (deletion costs not written, the ReplicaSet picks: {failed[0]})"
            to_drain = ()
        note = plan.describe() + trouble
        log.info("scale-in of %s/%s/%s %d → %d (%d live pods): %s%s", ns, app, name, current, desired, len(pods),
                 note, f"; draining for up to {bound}s" if to_drain else "")
        if not to_drain:
            await self._visible(ns, app, name, plan.costs)
            if await apply(desired, note):
                self._count(key, name, plan.victims, drained=False)
            return
        d = self.drains.setdefault((key, name), Drain())
        d.drain_from = current
        d.task = asyncio.create_task(
            self._drain_then_scale(key, state, topo, pool, d, plan, to_drain, desired, bound, note, apply),
            name=f"drain:{ns}/{app}/{name}")

    async def _drain_then_scale(self, key: AppKey, state: AppState, topo: Topology, pool: CeleryWorkerPool,
                                d: Drain, plan: scalein.Plan, to_drain: tuple[scalein.Worker, ...],
                                desired: int, bound: int, note: str, apply: Apply) -> None:
        ns, app = key
        nodes = [w.node for w in to_drain]
        queues = topo.pool_queues(pool)
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        scaled = emptied = False
        started = time.monotonic()
        try:
            try:
                await self._control(state, topo, lambda rc: rc.cancel_consumers(queues, nodes))
                if body is not None:
                    which = ", ".join(w.describe() for w in to_drain)
                    await self.recorder.emit(body, "Normal", api.Reason.DRAINING,
                                             f"no idle worker to remove: draining {which} for up to {bound}s "
                                             f"before scaling to {desired}", dedupe=False)
                while time.monotonic() - started < bound:
                    loads = await self._control(state, topo, lambda rc: rc.loads(nodes))
                    if scalein.drained(loads, to_drain):
                        break
                    await asyncio.sleep(DRAIN_POLL_SECONDS)
                waited = time.monotonic() - started
                emptied = waited < bound
                drained = "drained" if emptied else f"not drained within {bound}s"
                note = f"{note}; {drained} after {waited:.0f}s"
            except BrokerError as e:
                note = f"{note}; drain failed ({e}): removing them as they are"
            await self._visible(ns, app, pool.meta.name, plan.costs)
            scaled = await apply(desired, note)
        except asyncio.CancelledError:
            if not await asyncio.shield(self._undrain(key, state, topo, pool, to_drain, "the scale-in was called off")):
                d.recheck = True
            raise
        finally:
            d.task = None
        if scaled:
            self._count(key, pool.meta.name, plan.victims, drained=emptied)
            gone_by = time.monotonic() + DRAINED_GONE_WITHIN_SECONDS
            d.drained.update({w.pod: gone_by for w in to_drain})
        else:
            d.recheck = not await self._undrain(key, state, topo, pool, to_drain, "scaling down failed")

    def _count(self, key: AppKey, pool: str, victims: Iterable[scalein.Worker], *, drained: bool) -> None:
        """Count the removed pods by what they held: nothing, work they finished draining, or work."""
        busy = [w for w in victims if not w.idle]
        idle = sum(1 for w in victims if w.idle)
        self.metrics.count_scale_in_pods(key[0], key[1], pool, "idle", idle)
        self.metrics.count_scale_in_pods(key[0], key[1], pool, "drained" if drained else "busy", len(busy))

    async def _undrain(self, key: AppKey, state: AppState, topo: Topology, pool: CeleryWorkerPool,
                       workers: Iterable[scalein.Worker], why: str) -> bool:
        """Consumers back on drained workers that stay, and their mark off; False when the workers could
        not be told (the next poll tries again)."""
        ws = list(workers)
        nodes = [w.node for w in ws]
        try:
            await self._control(state, topo, lambda rc: rc.add_consumers(topo.pool_queues(pool), nodes))
        except BrokerError as e:
            log.warning("consumers of %s not restored (%s); retried on the next poll", ", ".join(nodes), e)
            return False
        with contextlib.suppress(NotOwner):
            await self._annotate(key[0], scalein.kept_costs(ws), undrained=[w.pod for w in ws])
        body = self.cache.crs(key).get((api.POOL, pool.meta.name))
        if body is not None:
            await self.recorder.emit(body, "Normal", api.Reason.DRAINING,
                                     f"{', '.join(w.pod for w in ws)} consume again: {why}", dedupe=False)
        return True

    async def restore(self, key: AppKey, state: AppState, topo: Topology, pool: CeleryWorkerPool) -> None:
        """Pods marked drained that no drain of this process accounts for (an interrupted drain, or one
        whose pod the ReplicaSet kept) consume again. Reads the pod cache on a pool's first poll, after a
        drain until its pods are gone, and after a failed restore; otherwise nothing."""
        d = self.drains.setdefault((key, pool.meta.name), Drain())
        if d.task is not None or not (d.recheck or d.drained):
            return
        ns, app = key
        pods = self.pool_pods(ns, app, pool.meta.name)
        now = time.monotonic()
        names = {p["metadata"]["name"] for p in pods}
        d.drained = {pod: t for pod, t in d.drained.items() if pod in names and t > now}
        marked = [p for p in pods if api.ANNOTATION_DRAINED in (p["metadata"].get("annotations") or {})
                  and p["metadata"]["name"] not in d.drained]
        if not marked:
            d.recheck = False
            return
        workers = scalein.workers(marked, pool.meta.name, {})
        d.recheck = not await self._undrain(key, state, topo, pool, workers, "its scale-in did not happen")
