"""Status of every object of one app, written only when it changes, with an Event per change."""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from celery_operator import api, conditions, workloads
from celery_operator.brokers.base import DeclareResult, DepthReport
from celery_operator.conditions import Condition
from celery_operator.controller.connections import Endpoint
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.models import CeleryExchange, CeleryQueue, SecretKeyRef
from celery_operator.render import names
from celery_operator.topology import Topology

if TYPE_CHECKING:
    from celery_operator.controller.app_worker import AppWorker

log = logging.getLogger(__name__)
Body = dict[str, Any]


def url_from_secret(objects: list[Body], ref: SecretKeyRef) -> str | None:
    """The URL a rendered (managed) Secret carries, so the first cycle need not re-read it."""
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == ref.name:
            if ref.key in (o.get("stringData") or {}):
                return str(o["stringData"][ref.key])
            raw = (o.get("data") or {}).get(ref.key)
            return base64.b64decode(raw).decode() if raw else None
    return None


async def patch_status(worker: AppWorker, kind: str, body: Body, status: Body, conds: list[Condition]) -> None:
    old = body.get("status") or {}
    gen = int(body["metadata"].get("generation") or 0)
    status = {**status, "observedGeneration": gen,
              "conditions": conditions.merge(old.get("conditions"), conds, gen)}
    unchanged = conditions.same(old.get("conditions"), status["conditions"]) and all(
        old.get(k) == v for k, v in status.items() if k != "conditions")
    if unchanged:
        return
    name = body["metadata"]["name"]
    try:
        await worker.client.patch(kind, worker.namespace, name, {"status": status}, sub="status")
    except ApiError as e:
        if e.status != 404:
            log.warning("status of %s %s/%s not written: %s", kind, worker.namespace, name, e)
        return
    body["status"] = {**old, **status}
    ready = next((c for c in conds if c.type == api.READY), None)
    if ready is not None:
        if ready.status and ready.reason not in WARNINGS:
            await worker.recorder.normal(body, ready.reason, ready.message or f"{kind} {name} is ready")
        else:
            await worker.recorder.warning(body, ready.reason, ready.message)


async def write_reconcile_error(worker: AppWorker, error: str) -> None:
    """A reconcile that raised: Ready=False with the error on the app, and a Warning Event.

    The next successful reconcile writes the app's status from scratch, which clears it."""
    try:
        body = await worker.client.get(api.APP, worker.namespace, worker.name)
    except Exception as e:  # noqa: BLE001 - the API server itself may be the failure
        log.error("cannot report the failed reconcile of %s/%s: %s", worker.namespace, worker.name, e)
        return
    if body is None:
        return
    worker._bodies[(api.APP, worker.name)] = body
    msg = f"reconcile failed (retried every cycle): {error}"
    old = body.get("status") or {}
    await patch_status(worker, api.APP, body, {k: v for k, v in old.items() if k not in ("conditions",)},
                       conditions.not_ready(api.Reason.RECONCILE_ERROR, msg, progressing=True))


# Problems that are worth saying but leave the object working: Ready stays True with this reason,
# and the Event is a Warning.
WARNINGS = frozenset({api.Reason.TIMEZONE_CONFLICT, api.Reason.UNSUPPORTED_BY_BROKER,
                      api.Reason.VISIBILITY_TIMEOUT_TOO_SHORT, api.Reason.PREFETCH_HIDES_BACKLOG})


def _problem_conditions(topo: Topology, kind: str, name: str, *, warnings: bool = True) -> list[Condition] | None:
    """Conditions for the object's topology problems; with `warnings=False`, only when one is not a warning."""
    problems = topo.problems_of(kind, name)
    if not problems:
        return None
    if all(p.reason in WARNINGS for p in problems):
        if not warnings:
            return None
        return conditions.ready(problems[0].reason, "; ".join(p.message for p in problems))
    return conditions.not_ready(problems[0].reason, "; ".join(p.message for p in problems))


def _broker_conditions(worker: AppWorker, broker: Endpoint) -> list[Condition] | None:
    if broker.url is None:
        return conditions.not_ready(broker.problem_reason, broker.problem or "broker URL unknown",
                                    progressing=broker.problem_reason == api.Reason.APP_NOT_READY)
    if worker._broker_up is False:
        return conditions.not_ready(api.Reason.BROKER_UNREACHABLE, worker._poll_error or "broker unreachable",
                                    progressing=True)
    return None


async def write_all(worker: AppWorker, topo: Topology, broker: Endpoint, backend: Endpoint | None,
                    chash: str, deployments: dict[str, Body], apply_errors: list[str],
                    statefulsets: dict[str, Body] | None = None) -> None:
    app = topo.app
    app_body = worker._bodies[(api.APP, app.meta.name)]
    app_status: Body = {
        "brokerSecretRef": {"name": broker.ref.name, "key": broker.ref.key},
        "configMapName": names.config_map(app.meta.name), "configHash": chash,
        "workerPools": len(topo.effective_pools), "beat": topo.has_beat,
    }
    if backend is not None:
        app_status["resultBackendSecretRef"] = {"name": backend.ref.name, "key": backend.ref.key}
    conds = None
    if statefulsets:
        # A managed broker that is not running explains an unreachable broker: say the root cause.
        problem = await managed_server_problem(worker, statefulsets)
        if problem is not None:
            conds = conditions.not_ready(problem.reason, problem.message, progressing=not problem.degraded,
                                         degraded=problem.degraded)
    if conds is None:
        conds = _broker_conditions(worker, broker)
    if conds is None and backend is not None and backend.url is None and not backend.managed_credentials:
        conds = conditions.not_ready(api.Reason.SECRET_NOT_FOUND, backend.problem or "result backend URL unknown")
    if conds is None and apply_errors:
        conds = conditions.not_ready("ApplyFailed", "; ".join(apply_errors))
    if conds is None:
        conds = _problem_conditions(topo, api.APP, app.meta.name)
    await patch_status(worker, api.APP, app_body, app_status, conds or conditions.ready())

    broker_conds = _broker_conditions(worker, broker)
    declared: list[tuple[str, CeleryExchange | CeleryQueue]] = [
        *((api.EXCHANGE, e) for e in topo.exchanges), *((api.QUEUE, q) for q in topo.queues)]
    for kind, obj in declared:
        body = worker._bodies[(kind, obj.meta.name)]
        if body["metadata"].get("deletionTimestamp"):
            continue
        result = worker.declare_result(kind, obj.name)
        conds = _problem_conditions(topo, kind, obj.meta.name) or _declared(result, broker_conds)
        # A policy that could not be applied leaves the queue itself declared.
        on_broker = result is not None and (result.ok or result.kind == "policy")
        await patch_status(worker, kind, body, {"declared": on_broker}, conds)
    for pool in topo.pools:
        await write_pool(worker, topo, pool.meta.name, deployments, broker_conds)
    for sched in topo.schedules:
        body = worker._bodies[(api.SCHEDULE, sched.meta.name)]
        conds = _problem_conditions(topo, api.SCHEDULE, sched.meta.name)
        served = sum(1 for s, _ in topo.beat_entries if s.meta.name == sched.meta.name)
        if conds is None:
            beat = deployments.get(names.beat(app.meta.name))
            conds = conditions.ready(api.Reason.RECONCILED, f"{served} entries served by {names.beat(app.meta.name)}") \
                if beat is not None else conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING,
                                                              "beat Deployment not created yet", progressing=True,
                                                              degraded=False)
        await patch_status(worker, api.SCHEDULE, body, {"entries": served}, conds)


def _declared(result: DeclareResult | None, broker_conds: list[Condition] | None) -> list[Condition]:
    if result is not None and result.ok:
        if result.reason:  # declared, but a setting has no effect on this broker
            return conditions.ready(result.reason, result.message)
        return conditions.ready(api.Reason.DECLARED, "declared on the broker")
    if result is not None:
        return conditions.not_ready(result.reason or api.Reason.BROKER_CONFLICT, result.message)
    if broker_conds is not None:
        return broker_conds
    return conditions.not_ready(api.Reason.BROKER_UNREACHABLE, "not declared yet", progressing=True,
                                degraded=False)


async def write_pool(worker: AppWorker, topo: Topology, pool_name: str, deployments: dict[str, Body],
                     broker_conds: list[Condition] | None) -> None:
    body = worker._bodies.get((api.POOL, pool_name))
    if body is None:
        return
    pool = next(p for p in topo.pools if p.meta.name == pool_name)
    dep = deployments.get(names.worker(topo.app.meta.name, pool_name)) or {}
    dst = dep.get("status") or {}
    st = worker.pools.get(pool_name)
    desired = (st.desired if st and st.desired is not None else pool.replicas)
    selector = ",".join(f"{k}={v}" for k, v in sorted(
        ((dep.get("spec") or {}).get("selector", {}).get("matchLabels") or {}).items()))
    status: Body = {"replicas": int(dst.get("replicas") or 0), "readyReplicas": int(dst.get("readyReplicas") or 0),
                    "desiredReplicas": desired, "selector": selector}
    if st is not None:
        status.update({k: v for k, v in (("queueDepth", st.depth), ("messagesInFlight", st.in_flight),
                                         ("depthSource", st.source), ("lastScaleTime", st.last_scale_time))
                       if v is not None})
    worker.metrics.set_pool_replicas(worker.namespace, topo.app.meta.name, pool_name, desired=desired,
                                     current=status["replicas"], ready=status["readyReplicas"])
    # Warnings (settings that bite) show once the workers are ready; until then, their progress does.
    conds = _problem_conditions(topo, api.POOL, pool_name, warnings=False)
    if conds is None and pool.autoscaling is not None and broker_conds is not None:
        # Replicas are held; say why the autoscaler is blind.
        conds = conditions.not_ready(broker_conds[0].reason,
                                     f"holding {desired} replicas: {broker_conds[0].message}", progressing=False)
    if conds is None:
        if not dep:
            conds = conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING, "Deployment not created yet",
                                         progressing=True, degraded=False)
        elif status["readyReplicas"] >= desired:
            ready = f"{status['readyReplicas']}/{desired} workers ready"
            warned = _problem_conditions(topo, api.POOL, pool_name)
            conds = conditions.ready(warned[0].reason, f"{warned[0].message} ({ready})") if warned \
                else conditions.ready(api.Reason.DEPLOYMENT_READY, ready)
        else:
            problem = workloads.pod_problem(await worker.client.list("Pod", worker.namespace, selector)) \
                if selector else None
            if problem is not None:
                conds = conditions.not_ready(problem.reason, f"{status['readyReplicas']}/{desired} workers ready; "
                                             f"{problem.message}", progressing=False, degraded=problem.degraded)
            else:
                conds = conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING,
                                             f"{status['readyReplicas']}/{desired} workers ready",
                                             progressing=True, degraded=False)
    await patch_status(worker, api.POOL, body, status, conds)


async def claims_of(client: KubeClient, namespace: str, statefulset: str) -> list[Body]:
    """The claims a StatefulSet's volumeClaimTemplates made: `<template>-<statefulset>-<ordinal>`."""
    return [c for c in await client.list("PersistentVolumeClaim", namespace)
            if c["metadata"]["name"].rsplit("-", 1)[0].endswith(f"-{statefulset}")]


async def managed_server_problem(worker: AppWorker, statefulsets: dict[str, Body]) -> workloads.Problem | None:
    """Why a managed broker or result backend StatefulSet is not ready (pods, then claims), if it is not."""
    for name, sts in sorted(statefulsets.items()):
        st, spec = sts.get("status") or {}, sts.get("spec") or {}
        want = int(spec.get("replicas", 1))
        if int(st.get("readyReplicas") or 0) >= want:
            continue
        selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector", {}).get("matchLabels") or {}).items()))
        problem = None
        if spec.get("volumeClaimTemplates"):  # an unbound claim is the root cause of an unschedulable pod
            claims = await claims_of(worker.client, worker.namespace, name)
            events = await worker.client.list("Event", worker.namespace,
                                              field_selector="involvedObject.kind=PersistentVolumeClaim")
            problem = workloads.claim_problem(claims, events)
        if problem is None or not problem.degraded:
            problem = workloads.pod_problem(await worker.client.list("Pod", worker.namespace, selector)) or problem
        if problem is None:
            problem = workloads.Problem(api.Reason.BROKER_NOT_READY,
                                       f"StatefulSet {name}: {int(st.get('readyReplicas') or 0)}/{want} ready",
                                       degraded=False)
        return workloads.Problem(problem.reason, f"StatefulSet {name}: {problem.message}", problem.degraded)
    return None


async def write_poll(worker: AppWorker, topo: Topology, report: DepthReport | None, error: str | None) -> None:
    """After each poll: queue depth on queues, replicas/depth/Degraded on pools."""
    for q in topo.queues:
        body = worker._bodies.get((api.QUEUE, q.meta.name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        d = report.queues.get(q.name) if report is not None else None
        if d is None:
            continue
        old = body.get("status") or {}
        fields = {"messagesReady": d.ready, "messagesInFlight": d.in_flight, "consumers": d.consumers}
        fields = {k: v for k, v in fields.items() if v is not None}
        if all(old.get(k) == v for k, v in fields.items()):
            continue
        try:
            await worker.client.patch(api.QUEUE, worker.namespace, q.meta.name, {"status": fields}, sub="status")
            body["status"] = {**old, **fields}
        except ApiError as e:
            log.debug("queue status not written: %s", e)
    deployments = {d["metadata"]["name"]: d for d in await worker.client.list(
        "Deployment", worker.namespace, f"{api.LABEL_APP}={topo.app.meta.name}")}
    broker_conds = None
    if report is None:
        broker_conds = conditions.not_ready(api.Reason.BROKER_UNREACHABLE, error or "broker unreachable",
                                            progressing=False)
    for pool in topo.pools:
        await write_pool(worker, topo, pool.meta.name, deployments, broker_conds)
