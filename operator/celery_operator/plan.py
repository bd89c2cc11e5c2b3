"""PURE: one reconcile of one app, as a value: from a Snapshot (what observe read) and the reconciler's
Memory to a Plan (what the executor, controller/act.py, does), then to the statuses and gauges.

A full reconcile plans the app's children (apply what differs, delete what is no longer wanted, hold a
Deployment until its predecessor's pods are gone, replace what an earlier incarnation left), the topology
to declare on the broker (when it changed, or every REDECLARE_SECONDS), and the finalizer steps of the
CeleryExchanges and CeleryQueues that delete themselves from the broker. A status-only reconcile (after a
poll or a pod change) plans no change to the cluster. `remember` is what the reconciler keeps after acting,
`report` the statuses, Events and gauges that follow. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from celery_operator import api, autoscale, decide, endpoints, quarantine, schedule, stale, workloads
from celery_operator.brokers.base import DeclareResult
from celery_operator.brokers.urls import InvalidBrokerUrl, broker_kind
from celery_operator.decide import ChildPlan, PoolScale
from celery_operator.endpoints import Endpoint
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
HOLD_RECHECK_SECONDS = 2.0  # a child held back for old pods or a replaced child: how soon to look again
HOLD_MARGIN_SECONDS = 30.0
# A topology applied at once (`kubectl apply -f dir/`, Argo CD, Flux) reaches the operator object by object. An
# app's first render waits until its objects have stopped arriving for this long, so that its workers do not
# start on part of the config and roll once the rest has come; at most the second bound after the operator
# first saw the app (its own clock: one skewed from the API server's holds nothing longer).
FIRST_RENDER_QUIET_SECONDS = 1.0
FIRST_RENDER_MAX_HOLD_SECONDS = 10.0


# -- what a reconcile starts from ---------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimReading:
    """A managed server's claims and the Events about them: read from the API server (no cache holds
    them) only while a StatefulSet with claim templates is not ready."""

    claims: list[Body]
    events: list[Body]


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile of one app reads, as observed (controller/observe.py)."""

    namespace: str
    app_name: str
    bodies: dict[ObjKey, Body]  # the app (if it exists) and every object naming it
    secrets: endpoints.Secrets = field(default_factory=dict)  # the Secrets the app's endpoints read
    pod_monitor: bool = False  # the cluster serves PodMonitor
    children: dict[ObjKey, Body] = field(default_factory=dict)
    pods: list[Body] = field(default_factory=list)
    claims: Mapping[str, ClaimReading] = field(default_factory=dict)  # StatefulSet name ->
    new_passwords: Mapping[str, str] = field(default_factory=dict)  # role -> a password, for a first Secret
    now: float = 0.0  # epoch seconds
    monotonic: float = 0.0

    @property
    def app(self) -> Body | None:
        """The app's body, unless it is missing or being deleted."""
        body = self.bodies.get((api.APP, self.app_name))
        return None if body is None or body["metadata"].get("deletionTimestamp") else body


@dataclass(frozen=True)
class Memory:
    """What the reconciler keeps of an app between reconciles (only it replaces it; others read it)."""

    topology: Topology | None = None  # as of the last reconcile (the poller polls its queues)
    broker: Endpoint | None = None
    backend: Endpoint | None = None
    transport_options: dict[str, Any] | None = None
    declared_digest: str | None = None  # of the last declaration that fully succeeded
    declared_at: float = float("-inf")  # monotonic
    declared: Mapping[tuple[str, str], DeclareResult] = field(default_factory=dict)
    declare_error: str | None = None  # the broker failed the last declaration
    declare_failed_at: float = float("-inf")  # monotonic
    apply_errors: tuple[str, ...] = ()
    held_since: Mapping[ObjKey, float] = field(default_factory=dict)  # workloads waiting for old pods
    failures: int = 0  # full reconciles failed in a row
    last_error: str | None = None
    # The app's restarted worker containers, as the last reconcile saw its pods (the poller closes their
    # stale broker connections without reading pods of its own).
    worker_restarts: tuple[stale.Restart, ...] = ()


# -- what a reconcile does -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Declaration:
    """The topology to declare on the broker, and its digest (recorded once every object declared)."""

    url: str
    management_url: str | None
    transport_options: dict[str, Any] | None
    exchanges: tuple[Any, ...]
    queues: tuple[Any, ...]
    digest: str


FinalizerAction = Literal["add", "remove", "delete-from-broker", "retain"]


@dataclass(frozen=True)
class FinalizerStep:
    """One CeleryExchange's or CeleryQueue's finalizer change. `delete-from-broker` removes the finalizer
    once the broker object is gone (or, when `give_up`, after a failure too); `retain` removes it at once
    with a Warning Event (`message`) that the object stays on the broker."""

    kind: str
    body: Body
    action: FinalizerAction
    broker_object: str = ""  # the exchange's or queue's name on the broker
    message: str = ""
    give_up: bool = False
    broker: Endpoint | None = None
    transport_options: dict[str, Any] | None = None

    @property
    def what(self) -> str:
        return f"{'queue' if self.kind == api.QUEUE else 'exchange'} {self.broker_object}"

    def finalizers(self) -> list[str]:
        """The object's finalizers after the step."""
        have = list(self.body["metadata"].get("finalizers") or [])
        return [*have, FINALIZER] if self.action == "add" else [f for f in have if f != FINALIZER]


@dataclass(frozen=True)
class Plan:
    """One reconcile's changes. `children` is None for a status-only reconcile (nothing applied)."""

    topology: Topology | None = None  # None: the app does not exist
    broker: Endpoint | None = None
    backend: Endpoint | None = None
    transport_options: dict[str, Any] | None = None
    config_hash: str = ""
    flower_problem: tuple[str, str] | None = None
    children: ChildPlan | None = None
    held_since: Mapping[ObjKey, float] = field(default_factory=dict)
    newly_held: tuple[ObjKey, ...] = ()  # held back from this reconcile on (logged once)
    overdue: tuple[ObjKey, ...] = ()  # held too long: created although old pods remain (logged)
    declaration: Declaration | None = None
    finalizers: tuple[FinalizerStep, ...] = ()
    requeue_after: float | None = None
    # Metric series of queues and pools that left the app; pools without autoscaling (no bounds).
    gone_queues: tuple[str, ...] = ()
    gone_pools: tuple[str, ...] = ()
    unscaled_pools: tuple[str, ...] = ()
    # Each pool's replicas as rendered, and the pools paused (their count is the paused one).
    replicas: Mapping[str, int] = field(default_factory=dict)
    paused: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Outcome:
    """What acting on a plan gave (the executor's report)."""

    apply_errors: tuple[str, ...] = ()
    applied: Mapping[ObjKey, Body] = field(default_factory=dict)  # children as the API server returned them
    declared: Mapping[tuple[str, str], DeclareResult] | None = None  # None: nothing declared
    declare_ok: bool = False
    declare_error: str | None = None


# -- planning --------------------------------------------------------------------------------------------

def _parse(cls: Any, bodies: list[Body]) -> list[Any]:
    """Typed views; an object the models cannot read is skipped (the schema should prevent it)."""
    out = []
    for b in bodies:
        try:
            out.append(cls.of(b))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping %s %s: %s", b.get("kind"), b["metadata"].get("name"), e)
    return out


def _kind_of(url: str | None) -> Literal["rabbitmq", "redis"] | None:
    try:
        return broker_kind(url) if url else None
    except InvalidBrokerUrl:
        return None


def topology_of(bodies: Mapping[ObjKey, Body], app: CeleryApp, broker_url: str | None) -> Topology:
    live = [b for b in bodies.values() if not b["metadata"].get("deletionTimestamp")]

    def of(kind: str) -> list[Body]:
        return [b for b in live if b.get("kind") == kind]

    return Topology.of(app, _parse(CeleryExchange, of(api.EXCHANGE)),
                       _parse(CeleryQueue, of(api.QUEUE)), _parse(CeleryWorkerPool, of(api.POOL)),
                       _parse(CeleryBeatSchedule, of(api.SCHEDULE)), external_broker_kind=_kind_of(broker_url))


def _epoch(body: Body, field_name: str) -> float | None:
    """A metadata timestamp of `body` (RFC 3339, whole seconds) as epoch seconds; None when it has none."""
    ts = body["metadata"].get(field_name)
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None


def _age(body: Body, now: float) -> float:
    deleted = _epoch(body, "deletionTimestamp")
    return 0.0 if deleted is None else now - deleted


def first_render_hold(snap: Snapshot, first_seen: float) -> float:
    """Seconds to hold the app's first render (0: go on): while it has no workload yet, until its newest object
    was created FIRST_RENDER_QUIET_SECONDS ago (creationTimestamp is whole seconds, rounded down: one more), at
    most until FIRST_RENDER_MAX_HOLD_SECONDS after `first_seen` (monotonic)."""
    if any(kind in ("Deployment", "StatefulSet") for kind, _ in snap.children):
        return 0.0
    created = [t for t in (_epoch(b, "creationTimestamp") for b in snap.bodies.values()) if t is not None]
    if not created:
        return 0.0
    quiet = max(created) + 1.0 + FIRST_RENDER_QUIET_SECONDS - snap.now
    bound = first_seen + FIRST_RENDER_MAX_HOLD_SECONDS - snap.monotonic
    return max(0.0, min(quiet, bound))


def declaration_digest(topo: Topology, url: str) -> str:
    return hashlib.sha256(json.dumps([url, repr(topo.effective_exchanges), repr(topo.effective_queues)])
                          .encode()).hexdigest()


def pool_replicas(pool: CeleryWorkerPool, known: PoolScale | None, known_paused: bool,
                  live: int | None) -> tuple[int, bool]:
    """A pool's replicas as rendered, and whether it is paused: spec.replicas, or the autoscaler's (a new
    autoscaled pool starts at minReplicas, and after an operator restart the Deployment's count stands). A
    paused pool keeps its paused count, else the Deployment's (a count set by hand included); once resumed
    an autoscaled pool starts again from the Deployment's count. The poller, which owns the autoscaler's
    state, comes to the same count on its next poll."""
    a = pool.autoscaling
    desired = known.desired if known is not None else None
    pause = autoscale.pause_of(pool.meta.annotations, a)
    if pause.paused:
        otherwise = desired if desired is not None else (a.min_replicas if a is not None else pool.replicas)
        return autoscale.paused_replicas(pause, live, otherwise), True
    if a is None:
        return pool.replicas, False
    if desired is None or known_paused:  # new, or resumed: from the Deployment's count
        return (a.min_replicas if live is None else autoscale.clamp(live, a.min_replicas, a.max_replicas)), False
    return desired, False


def _release_overdue(plan: ChildPlan, rendered: list[Body], held_since: Mapping[ObjKey, float],
                     now: float) -> tuple[ChildPlan, dict[ObjKey, float], tuple[ObjKey, ...], tuple[ObjKey, ...]]:
    """Held workloads wait for their old pods at most their grace period and a margin (pods that never go,
    e.g. under a ReplicaSet orphaned by hand, are adopted by the new Deployment)."""
    newly = tuple(k for k in plan.hold if k not in held_since)
    since = {k: held_since.get(k, now) for k in plan.hold}
    overdue = []
    for obj in rendered:
        key = decide.child_key(obj)
        if key not in since:
            continue
        grace = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "terminationGracePeriodSeconds", 30)
        if now - since[key] > float(grace) + HOLD_MARGIN_SECONDS:
            overdue.append(decide.stamped(obj))
    if not overdue:
        return plan, since, newly, ()
    keys = tuple(decide.child_key(o) for o in overdue)
    released = dataclasses.replace(plan, apply=[*plan.apply, *overdue], hold=[k for k in plan.hold if k not in keys],
                                   why={**plan.why, **dict.fromkeys(keys, "old pods still there")})
    return released, since, newly, keys


def finalizer_steps(bodies: Mapping[ObjKey, Body], app_name: str, broker: Endpoint | None,
                    transport_options: dict[str, Any] | None, now: float) -> tuple[FinalizerStep, ...]:
    """Objects that delete themselves from the broker carry our finalizer until they have (`broker` None:
    the app is gone, so there is no broker to delete them from)."""
    steps = []
    for (kind, _), body in sorted(bodies.items()):
        if kind not in (api.EXCHANGE, api.QUEUE):
            continue
        md = body["metadata"]
        mine = FINALIZER in (md.get("finalizers") or [])
        deletes = (body.get("spec") or {}).get("deletionPolicy") == "Delete"
        if not md.get("deletionTimestamp"):
            if deletes and not mine:
                steps.append(FinalizerStep(kind, body, "add"))
            elif mine and not deletes:
                steps.append(FinalizerStep(kind, body, "remove"))
            continue
        if not mine:
            continue
        obj: CeleryQueue | CeleryExchange = CeleryQueue.of(body) if kind == api.QUEUE else CeleryExchange.of(body)
        if broker is None or broker.url is None:
            why = f"CeleryApp {app_name} is gone" if broker is None else (broker.problem or "broker unknown")
            step = FinalizerStep(kind, body, "retain", obj.name)
            steps.append(dataclasses.replace(step, message=f"{step.what} left on the broker: {why}"))
            continue
        steps.append(FinalizerStep(kind, body, "delete-from-broker", obj.name, broker=broker,
                                   transport_options=transport_options,
                                   give_up=_age(body, now) > GIVE_UP_DELETING_AFTER_SECONDS))
    return tuple(steps)


def _declaration(topo: Topology, broker: Endpoint, memory: Memory, opts: dict[str, Any] | None,
                 monotonic: float) -> Declaration | None:
    if broker.url is None:
        return None
    digest = declaration_digest(topo, broker.url)
    if digest == memory.declared_digest and monotonic - memory.declared_at < REDECLARE_SECONDS:
        return None
    return Declaration(broker.url, broker.management_url, opts, tuple(topo.effective_exchanges),
                       tuple(topo.effective_queues), digest)


def plan(snap: Snapshot, memory: Memory, scale: Mapping[str, PoolScale], paused: frozenset[str],
         full: bool) -> Plan:
    """The reconcile of an app that exists (`snap.app`); `scale` and `paused` are the autoscaler's view
    of its pools (owned by the poller)."""
    app_body = snap.app
    if app_body is None:
        return Plan(finalizers=finalizer_steps(snap.bodies, snap.app_name, None, None, snap.now))
    app = CeleryApp.of(app_body)
    transport = app.config.get("broker_transport_options")
    opts = transport if isinstance(transport, dict) else None

    def fresh(role: str) -> str:
        return snap.new_passwords.get(role, "")

    broker = endpoints.resolve(app, app.broker, "broker", snap.secrets, lambda: fresh("broker"))
    backend = endpoints.resolve(app, app.result_backend, "result-backend", snap.secrets,
                                lambda: fresh("result-backend")) if app.result_backend is not None else None
    flower_problem = flower_render.problem(app.flower, snap.secrets)
    topo = topology_of(snap.bodies, app, broker.url)
    old = memory.topology
    gone_queues = tuple(sorted(set(old.queue_names) - set(topo.queue_names))) if old is not None else ()
    gone_pools = tuple(sorted({p.meta.name for p in old.pools} - {p.meta.name for p in topo.pools})) \
        if old is not None else ()

    replicas: dict[str, int] = {}
    paused_now: set[str] = set()
    for p in topo.pools:
        dep = snap.children.get(("Deployment", names.worker(snap.app_name, p.meta.name))) or {}
        live = (dep.get("spec") or {}).get("replicas")
        known = scale.get(p.meta.name) if p.autoscaling is not None else None
        replicas[p.meta.name], is_paused = pool_replicas(p, known, p.meta.name in paused,
                                                         int(live) if live is not None else None)
        if is_paused:
            paused_now.add(p.meta.name)
    rendered = render_all(
        topo, endpoints.secrets_context(broker, backend), replicas_of=lambda p: replicas[p.meta.name],
        broker_transport_options=opts, pod_monitor=snap.pod_monitor, run_flower=flower_problem is None)
    # A managed server's URL is in the Secret being applied: the first reconcile need not wait to read it.
    broker = _with_rendered_url(broker, rendered)
    backend = _with_rendered_url(backend, rendered) if backend is not None else None
    chash = next((o["metadata"].get("annotations", {}).get(api.ANNOTATION_CONFIG_HASH, "")
                  for o in rendered if o["kind"] == "ConfigMap"), "")
    out = Plan(topology=topo, broker=broker, backend=backend, transport_options=opts, config_hash=chash,
               flower_problem=flower_problem, held_since=memory.held_since, gone_queues=gone_queues,
               gone_pools=gone_pools, replicas=replicas, paused=frozenset(paused_now),
               unscaled_pools=tuple(p.meta.name for p in topo.pools if p.autoscaling is None))
    if not full:
        return out
    children = decide.child_plan(rendered, snap.children, snap.pods)
    children, held, newly, overdue = _release_overdue(children, rendered, memory.held_since, snap.monotonic)
    return dataclasses.replace(
        out, children=children, held_since=held, newly_held=newly, overdue=overdue,
        declaration=_declaration(topo, broker, memory, opts, snap.monotonic),
        finalizers=finalizer_steps(snap.bodies, snap.app_name, broker, opts, snap.now),
        requeue_after=HOLD_RECHECK_SECONDS if children.replace or children.hold else None)


def _with_rendered_url(ep: Endpoint, rendered: list[Body]) -> Endpoint:
    if not ep.managed or ep.url is not None:
        return ep
    return dataclasses.replace(ep, url=decide.url_from_rendered(rendered, ep.ref), problem=None)


def _severity(r: DeclareResult) -> int:
    """Per object, the result that says most: a failure, else an ignored setting, else success."""
    return 2 if not r.ok else 1 if r.reason else 0


def declared_by_object(results: Sequence[DeclareResult]) -> dict[tuple[str, str], DeclareResult]:
    """The broker's results per CeleryExchange and CeleryQueue (bindings and policies count as the queue's)."""
    out: dict[tuple[str, str], DeclareResult] = {}
    for r in results:
        kind = api.EXCHANGE if r.kind == "exchange" else api.QUEUE
        prev = out.get((kind, r.name))
        if prev is not None and _severity(prev) >= _severity(r):
            continue
        out[(kind, r.name)] = r
    return out


def remember(memory: Memory, snap: Snapshot, p: Plan, outcome: Outcome | None) -> Memory:
    """The reconciler's memory after acting on `p` (`outcome` None: status-only, nothing acted on)."""
    new = dataclasses.replace(memory, topology=p.topology, broker=p.broker, backend=p.backend,
                              transport_options=p.transport_options,
                              worker_restarts=tuple(stale.restarts(snap.pods)))
    if outcome is None:
        return new
    new = dataclasses.replace(new, held_since=p.held_since, apply_errors=outcome.apply_errors)
    if outcome.declare_error is not None:
        return dataclasses.replace(new, declare_error=outcome.declare_error, declare_failed_at=snap.monotonic)
    if outcome.declared is not None:
        new = dataclasses.replace(new, declared=outcome.declared, declare_error=None)
        if outcome.declare_ok and p.declaration is not None:
            new = dataclasses.replace(new, declared_digest=p.declaration.digest, declared_at=snap.monotonic)
    return new


# -- statuses and gauges -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Polled:
    """The poller's findings the statuses show (its own, read-only here)."""

    poll: decide.Poll = field(default_factory=decide.Poll)
    polled_at: float = float("-inf")  # monotonic
    quarantined: list[Body] | None = None
    quarantine_problem: str | None = None


@dataclass(frozen=True)
class PoolGauges:
    desired: int
    current: int
    ready: int
    worker_deaths: Mapping[str, int]


@dataclass(frozen=True)
class Report:
    statuses: dict[ObjKey, decide.Desired]
    pools: Mapping[str, PoolGauges] = field(default_factory=dict)
    # None: the app is gone (its series were dropped with it)
    beat_entries: Mapping[str, tuple[float | None, float | None, int]] | None = None


def managed_problem(snap: Snapshot) -> workloads.WorkloadProblem | None:
    """Why a managed broker or result backend StatefulSet is not ready, if one is not: its claims, then
    its pods."""
    for (kind, name), sts in sorted(snap.children.items()):
        if kind != "StatefulSet":
            continue
        st, spec = sts.get("status") or {}, sts.get("spec") or {}
        want = int(spec.get("replicas", 1))
        if int(st.get("readyReplicas") or 0) >= want:
            continue
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        problem = None
        reading = snap.claims.get(name)
        if reading is not None:  # an unbound claim is the root cause of an unschedulable pod
            problem = workloads.claim_problem(reading.claims, reading.events)
        if problem is None or not problem.degraded:
            problem = workloads.pod_problem([p for p in snap.pods if has_labels(p, match)]) or problem
        if problem is None:
            problem = workloads.WorkloadProblem(api.Reason.BROKER_NOT_READY,
                                                f"{int(st.get('readyReplicas') or 0)}/{want} ready", degraded=False)
        return dataclasses.replace(problem, message=f"StatefulSet {name}: {problem.message}")
    return None


def unready_claimed(children: Mapping[ObjKey, Body]) -> list[str]:
    """StatefulSets with claim templates that are not ready: whose claims observe reads."""
    out = []
    for (kind, name), sts in sorted(children.items()):
        st, spec = sts.get("status") or {}, sts.get("spec") or {}
        if kind == "StatefulSet" and spec.get("volumeClaimTemplates") and \
                int(st.get("readyReplicas") or 0) < int(spec.get("replicas", 1)):
            out.append(name)
    return out


def claims_of(claims: list[Body], statefulset: str) -> list[Body]:
    """A StatefulSet's claims (`<template>-<statefulset>-<ordinal>`)."""
    return [c for c in claims if c["metadata"]["name"].rsplit("-", 1)[0].endswith(f"-{statefulset}")]


def poll_seen(memory: Memory, polled: Polled) -> decide.Poll:
    """The broker as last seen: a declaration that failed after the last poll says it is down."""
    if memory.declare_error is not None and memory.declare_failed_at > polled.polled_at:
        return dataclasses.replace(polled.poll, broker_up=False, error=memory.declare_error)
    return polled.poll


def report(snap: Snapshot, p: Plan, memory: Memory, scale: Mapping[str, PoolScale], polled: Polled,
           outcome: Outcome | None = None) -> Report:
    """The statuses of the app's objects, and the pools' and beat's gauges (the children as observed, and
    as the executor applied them)."""
    if outcome is not None and outcome.applied:
        snap = dataclasses.replace(snap, children={**snap.children, **outcome.applied})
    if p.topology is None:
        return Report(decide.statuses(decide.Facts(namespace=snap.namespace, app_name=snap.app_name,
                                                   bodies=snap.bodies)))
    topo = p.topology
    autoscaled = {pool.meta.name for pool in topo.pools if pool.autoscaling is not None}
    # The autoscaler's view of its pools; before its first poll of a pool, and while a pool is paused, the
    # count the Deployment was rendered with.
    views = {n: v for n, v in scale.items() if n in autoscaled}
    for n in (autoscaled - set(views)) | p.paused:
        views[n] = dataclasses.replace(views.get(n) or PoolScale(), desired=p.replicas[n])
    facts = decide.Facts(
        namespace=snap.namespace, app_name=snap.app_name, bodies=snap.bodies, topology=topo, broker=p.broker,
        backend=p.backend, config_hash=p.config_hash, children=snap.children, pods=snap.pods, scale=views,
        poll=poll_seen(memory, polled), declared=memory.declared, apply_errors=list(memory.apply_errors),
        managed_problem=managed_problem(snap), reconcile_error=memory.last_error, flower_problem=p.flower_problem,
        quarantined=polled.quarantined, quarantine_problem=polled.quarantine_problem, now=snap.now)
    pools = {}
    for pool in topo.pools:
        dep = (snap.children.get(("Deployment", names.worker(snap.app_name, pool.meta.name))) or {}).get(
            "status") or {}
        st = views.get(pool.meta.name)
        match = {api.LABEL_APP: snap.app_name, api.LABEL_POOL: pool.meta.name}
        pools[pool.meta.name] = PoolGauges(
            desired=st.desired if st is not None and st.desired is not None else pool.replicas,
            current=int(dep.get("replicas") or 0), ready=int(dep.get("readyReplicas") or 0),
            worker_deaths=quarantine.deaths_by_reason([x for x in snap.pods if has_labels(x, match)]))
    beat, _ = decide.beat_state(facts)
    entries = {}
    for entry, known in decide.beat_entries(topo, beat).items():
        upcoming = known.next_run()
        entries[entry] = (known.last_run / schedule.US if known.last_run is not None else None,
                          upcoming / schedule.US if upcoming is not None else None, known.skipped_runs)
    return Report(decide.statuses(facts), pools, entries)
