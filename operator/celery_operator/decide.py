"""PURE: from what was observed about one app to what every object's status should say.

The reconciler observes (custom resources, children, pods, broker results, scaling state), then
calls `statuses(facts)` for the desired status of each custom resource, and `status_patch` to know
whether one must be written (only when a value changed) and which Event the change deserves (only
on a transition of the Ready condition). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator import api, autoscale, conditions, cron, drift, quarantine, schedule, workloads
from celery_operator.brokers.base import DeclareResult, DepthReport
from celery_operator.conditions import Condition
from celery_operator.endpoints import Endpoint
from celery_operator.models import CeleryBeatSchedule, CeleryExchange, CeleryQueue, CeleryWorkerPool, SecretKeyRef
from celery_operator.render import flower as flower_render
from celery_operator.render import names
from celery_operator.render.labels import has_labels
from celery_operator.topology import ObjKey, Problem, Topology

Body = dict[str, Any]

# Problems that are worth saying but leave the object working: Ready stays True with this reason,
# and the Event is a Warning.
WARNINGS = frozenset({api.Reason.TIMEZONE_CONFLICT, api.Reason.UNSUPPORTED_BY_BROKER,
                      api.Reason.VISIBILITY_TIMEOUT_TOO_SHORT, api.Reason.PREFETCH_HIDES_BACKLOG,
                      api.Reason.SCHEDULE_OVERLAPS, api.Reason.INVALID_SCHEDULE,
                      api.Reason.QUARANTINE_QUEUE_CONFLICT})
APPLY_FAILED = "ApplyFailed"


@dataclass(frozen=True)
class PoolScale:
    """What the autoscaler knows of one pool (from its last poll)."""

    desired: int | None = None
    depth: int | None = None
    in_flight: int | None = None
    source: str | None = None
    last_scale_time: str | None = None
    wait_seconds: int | None = None
    schedule: str | None = None  # the autoscaling schedule whose window raises the minimum
    fallback: bool = False  # the fallback count applies


@dataclass(frozen=True)
class Poll:
    """The app's last broker poll: None fields until the first one."""

    broker_up: bool | None = None
    error: str | None = None
    report: DepthReport | None = None
    failed_polls: int = 0  # in a row


@dataclass
class Facts:
    """Everything observed about one app that its objects' statuses depend on."""

    namespace: str
    app_name: str
    bodies: dict[ObjKey, Body]  # the app (if it exists) and every object naming it
    topology: Topology | None = None  # None when the app does not exist
    broker: Endpoint | None = None
    backend: Endpoint | None = None
    config_hash: str = ""
    children: dict[ObjKey, Body] = field(default_factory=dict)  # live children of the app
    pods: list[Body] = field(default_factory=list)
    scale: Mapping[str, PoolScale] = field(default_factory=dict)
    poll: Poll = field(default_factory=Poll)
    declared: Mapping[ObjKey, DeclareResult] = field(default_factory=dict)  # (kind, Celery name)
    apply_errors: list[str] = field(default_factory=list)
    managed_problem: workloads.WorkloadProblem | None = None
    reconcile_error: str | None = None
    flower_problem: tuple[str, str] | None = None  # (reason, message): Flower enabled but not run
    now: float = 0.0  # epoch seconds (the year from which a schedule's DST changes are checked); 0: 2025
    # Poison tasks: the quarantine records the workers wrote to the app's Redis, newest first (None: not read,
    # e.g. no Redis to read them from, `quarantine_problem` says why).
    quarantined: list[Body] | None = None
    quarantine_problem: str | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Desired:
    """An object's desired status: its own fields and its conditions, and Events to post once it is
    written (besides the one a Ready transition gets)."""

    fields: Body
    conditions: list[Condition]
    events: tuple[Event, ...] = ()


def url_from_rendered(objects: list[Body], ref: SecretKeyRef) -> str | None:
    """The URL a rendered (managed) Secret carries, so the first cycle need not wait to read it back."""
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == ref.name:
            raw = (o.get("data") or {}).get(ref.key)
            return base64.b64decode(raw).decode() if raw else None
    return None


def _problems(topo: Topology, kind: str, name: str, *, warnings: bool = True) -> list[Condition] | None:
    """Conditions for the object's topology problems; with `warnings=False`, only when one is not a warning."""
    problems = topo.problems_of(kind, name)
    if not problems:
        return None
    text = "; ".join(p.message for p in problems)
    if all(p.reason in WARNINGS for p in problems):
        return conditions.ready(problems[0].reason, text) if warnings else None
    return conditions.not_ready(problems[0].reason, text)


def broker_conditions(facts: Facts) -> list[Condition] | None:
    """Why the app's broker cannot be used, if it cannot."""
    broker = facts.broker
    if broker is None:
        return None
    if broker.url is None:
        return conditions.not_ready(broker.problem_reason, broker.problem or "broker URL unknown",
                                    progressing=broker.problem_reason == api.Reason.APP_NOT_READY)
    if facts.poll.broker_up is False:
        return conditions.not_ready(api.Reason.BROKER_UNREACHABLE, facts.poll.error or "broker unreachable",
                                    progressing=True)
    return None


def flower_status(facts: Facts, topo: Topology) -> tuple[Body, Condition, tuple[Event, ...]]:
    """status.flower, the FlowerReady condition, and a Warning Event when Flower is refused."""
    app = topo.app
    f = app.flower
    if not f.enabled:
        return ({"state": "Off"}, Condition(api.FLOWER_READY, False, api.FlowerReason.DISABLED,
                                            "spec.flower.enabled is false"), ())
    if facts.flower_problem is not None:
        reason, message = facts.flower_problem
        old: Body = next((c for c in ((facts.bodies.get((api.APP, app.meta.name)) or {}).get("status") or {}).get(
            "conditions") or [] if c.get("type") == api.FLOWER_READY), {})
        said = old.get("reason") == reason and old.get("message") == message  # the Event went with it
        return ({"state": "Blocked"}, Condition(api.FLOWER_READY, False, reason, message),
                () if said else (Event("Warning", reason, message),))
    dep = facts.children.get(("Deployment", names.flower(app.meta.name))) or {}
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    fields: Body = {"state": "Ready" if ready else "Starting", "url": flower_render.url(app), "readyReplicas": ready}
    if not ready:
        return fields, Condition(api.FLOWER_READY, False, api.FlowerReason.PROGRESSING,
                                 "Flower's pod is not ready yet"), ()
    if not f.authenticated:
        return fields, Condition(api.FLOWER_READY, True, api.FlowerReason.UNAUTHENTICATED,
                                 f"Flower runs WITHOUT authentication at {fields['url']} "
                                 "(spec.flower.allowUnauthenticated)"), ()
    return fields, Condition(api.FLOWER_READY, True, api.FlowerReason.READY, f"Flower serves {fields['url']}"), ()


def _app(facts: Facts, topo: Topology) -> Desired:
    app = topo.app
    broker, backend = facts.broker, facts.backend
    assert broker is not None
    fields: Body = {
        "brokerSecretRef": {"name": broker.ref.name, "key": broker.ref.key},
        "configMapName": names.config_map(app.meta.name), "configHash": facts.config_hash,
        "workerPools": len(topo.effective_pools), "beat": topo.has_beat,
    }
    if backend is not None:
        fields["resultBackendSecretRef"] = {"name": backend.ref.name, "key": backend.ref.key}
    conds: list[Condition] | None = None
    if facts.reconcile_error is not None:
        conds = conditions.not_ready(api.Reason.RECONCILE_ERROR,
                                     f"reconcile failed (retried with backoff): {facts.reconcile_error}",
                                     progressing=True)
    if conds is None and facts.managed_problem is not None:
        # A managed broker that is not running explains an unreachable broker: say the root cause.
        p = facts.managed_problem
        conds = conditions.not_ready(p.reason, p.message, progressing=not p.degraded, degraded=p.degraded)
    if conds is None:
        conds = broker_conditions(facts)
    if conds is None and backend is not None and backend.url is None and not backend.managed:
        conds = conditions.not_ready(api.Reason.SECRET_NOT_FOUND, backend.problem or "result backend URL unknown")
    if conds is None and facts.apply_errors:
        conds = conditions.not_ready(APPLY_FAILED, "; ".join(facts.apply_errors))
    if conds is None:
        conds = _problems(topo, api.APP, app.meta.name)
    fields["flower"], flower_cond, events = flower_status(facts, topo)
    if facts.quarantined is not None:
        fields["quarantinedTasks"] = quarantine.app_list(facts.quarantined)
    return Desired(fields, [*(conds or conditions.ready()), flower_cond], events)


def _declared(result: DeclareResult | None, broker_conds: list[Condition] | None) -> list[Condition]:
    if result is not None and result.ok:
        if result.reason:  # declared, but a setting has no effect on this broker
            return conditions.ready(result.reason, result.message)
        return conditions.ready(api.Reason.DECLARED, "declared on the broker")
    if result is not None:
        return conditions.not_ready(result.reason or api.Reason.BROKER_CONFLICT, result.message)
    if broker_conds is not None:
        return broker_conds
    return conditions.not_ready(api.Reason.BROKER_UNREACHABLE, "not declared yet", progressing=True, degraded=False)


def schedule_problems(pool: CeleryWorkerPool, year: int) -> list[tuple[str, str]]:
    """(reason, message) for each autoscaling schedule whose window overlaps the next firing where the CRD could
    not tell (cron.overlap_problem: a DST change, a cron shape CEL does not read), or that names a time zone (or,
    stored under an older CRD, a cron) the operator cannot read. Such a schedule is skipped."""
    out = []
    for s in pool.autoscaling.schedules if pool.autoscaling is not None else ():
        try:
            text = cron.overlap_problem(s.cron, s.timezone, s.duration_seconds, year)
        except ValueError as e:
            out.append((api.Reason.INVALID_SCHEDULE, f"autoscaling schedule {s.name}: {e}; the schedule is skipped"))
            continue
        if text is not None:
            out.append((api.Reason.SCHEDULE_OVERLAPS, f"autoscaling schedule {s.name}: {text}"))
    return out


def _pause_condition(pause: autoscale.Pause) -> Condition:
    if pause.problem is not None:
        return Condition(api.AUTOSCALING_PAUSED, True, api.Reason.INVALID_PAUSE_ANNOTATION, pause.problem)
    if pause.paused:
        held = f"held at {pause.replicas} replicas" if pause.replicas is not None else \
            "the Deployment keeps its replicas"
        return Condition(api.AUTOSCALING_PAUSED, True, api.Reason.AUTOSCALING_PAUSED,
                         f"scaling paused by {pause.source}: {held}")
    return Condition(api.AUTOSCALING_PAUSED, False, api.Reason.AUTOSCALING_ACTIVE, "scaling is not paused")


def _pause_events(body: Body | None, pause: autoscale.Pause, cond: Condition) -> list[Event]:
    """AutoscalingPaused / AutoscalingResumed once per transition of status.paused; a Warning when the pause
    annotation becomes unreadable."""
    old = (body or {}).get("status") or {}
    out = []
    if bool(old.get("paused")) != pause.paused:
        out.append(Event("Normal", api.Reason.AUTOSCALING_PAUSED, cond.message) if pause.paused else
                   Event("Normal", api.Reason.AUTOSCALING_RESUMED,
                         "scaling resumed: the autoscaler continues from the Deployment's replicas"))
    before = next((c for c in old.get("conditions") or [] if c.get("type") == api.AUTOSCALING_PAUSED), None)
    if pause.problem is not None and (before is None or before.get("reason") != cond.reason
                                      or before.get("message") != cond.message):
        out.append(Event("Warning", api.Reason.INVALID_PAUSE_ANNOTATION, pause.problem))
    return out


def _pool(facts: Facts, topo: Topology, pool: CeleryWorkerPool, broker_conds: list[Condition] | None,
          body: Body | None = None) -> Desired:
    app_name = topo.app.meta.name
    dep = facts.children.get(("Deployment", names.worker(app_name, pool.meta.name))) or {}
    dst = dep.get("status") or {}
    st = facts.scale.get(pool.meta.name)
    desired = st.desired if st is not None and st.desired is not None else pool.replicas
    pause = autoscale.pause_of(pool.meta.annotations, pool.autoscaling)
    match = (dep.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    fields: Body = {"replicas": int(dst.get("replicas") or 0), "readyReplicas": int(dst.get("readyReplicas") or 0),
                    "desiredReplicas": desired, "selector": ",".join(f"{k}={v}" for k, v in sorted(match.items())),
                    "paused": pause.paused}
    report = facts.poll.report
    if report is not None:  # every pool's queues are measured by the app's poll
        queues = topo.pool_queues(pool)
        fields.update({k: v for k, v in (("queueDepth", report.ready(queues)),
                                         ("messagesInFlight", report.in_flight(queues)),
                                         ("depthSource", report.source)) if v is not None})
    if facts.poll.broker_up is not None:
        fields["failedPolls"] = facts.poll.failed_polls
    if st is not None:
        fields.update({k: v for k, v in (("queueDepth", st.depth), ("messagesInFlight", st.in_flight),
                                         ("depthSource", st.source), ("lastScaleTime", st.last_scale_time))
                       if v is not None})
        # null, not left out, when no window is active / the wait is not known: a merge patch keeps a
        # field it does not mention, and a stale wait would read as the current one
        fields["activeSchedule"] = st.schedule
        fields["waitSeconds"] = st.wait_seconds
    pause_cond = _pause_condition(pause)
    events = tuple(_pause_events(body, pause, pause_cond))
    year = time.gmtime(facts.now).tm_year if facts.now else 2025
    own = [Problem(r, m) for r, m in schedule_problems(pool, year)]

    pool_pods = [p for p in facts.pods if match and has_labels(p, match)]
    poison = quarantine.pool_report(topo.pool_queues(pool), facts.quarantined or [], pool_pods,
                                    ((body or {}).get("status") or {}).get("quarantinedTaskIds") or [],
                                    pool.max_worker_deaths)
    fields.update(poison.fields)
    poison_cond = poison.condition
    if facts.quarantined is None and facts.quarantine_problem is not None:
        poison_cond = Condition(api.TASKS_QUARANTINED, False, api.Reason.QUARANTINE_OFF, facts.quarantine_problem)
    events += tuple(Event(*e) for e in poison.events)

    def done(conds: list[Condition]) -> Desired:
        return Desired(fields, [*conds, pause_cond, poison_cond], events)

    # Warnings (settings that bite) show once the workers are ready; until then, their progress does.
    conds = _problems(topo, api.POOL, pool.meta.name, warnings=False)
    if conds is None and pool.autoscaling is not None and broker_conds is not None:
        # Replicas are held (or set to the fallback count); say why the autoscaler is blind.
        held = f"holding {desired} replicas"
        if st is not None and st.fallback and pool.autoscaling.fallback is not None:
            fb = pool.autoscaling.fallback
            held = (f"fallback ({fb.behavior}, {fb.replicas} replicas) after {facts.poll.failed_polls} failed polls: "
                    f"{desired} replicas")
        conds = conditions.not_ready(broker_conds[0].reason, f"{held}: {broker_conds[0].message}",
                                     progressing=False)
    if conds is not None:
        return done(conds)
    ready = fields["readyReplicas"]
    if not dep:
        return done(conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING, "Deployment not created yet",
                                         progressing=True, degraded=False))
    if ready >= desired:
        text = f"{ready}/{desired} workers ready"
        warned = topo.problems_of(api.POOL, pool.meta.name) + own
        return done(conditions.ready(warned[0].reason, f"{'; '.join(w.message for w in warned)} ({text})")
                    if warned else conditions.ready(api.Reason.DEPLOYMENT_READY, text))
    problem = workloads.pod_problem([p for p in facts.pods if match and has_labels(p, match)])
    if problem is not None:
        return done(conditions.not_ready(problem.reason, f"{ready}/{desired} workers ready; {problem.message}",
                                         degraded=problem.degraded))
    return done(conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING, f"{ready}/{desired} workers ready",
                                     progressing=True, degraded=False))


def _queue_depth(report: DepthReport | None, name: str) -> Body:
    d = report.queues.get(name) if report is not None else None
    if d is None:
        return {}
    return {k: v for k, v in (("messagesReady", d.ready), ("messagesInFlight", d.in_flight),
                              ("consumers", d.consumers)) if v is not None}


def statuses(facts: Facts) -> dict[ObjKey, Desired]:
    """The desired status of the app and of every object naming it (none for objects being deleted)."""
    topo = facts.topology
    live = {k: b for k, b in facts.bodies.items() if not b["metadata"].get("deletionTimestamp")}
    if topo is None:
        msg = (f"CeleryApp {facts.app_name} not found in namespace {facts.namespace}: create it or fix "
               "spec.appRef.name")
        return {k: Desired({}, conditions.not_ready(api.Reason.APP_NOT_FOUND, msg)) for k in live if k[0] != api.APP}
    out: dict[ObjKey, Desired] = {(api.APP, topo.app.meta.name): _app(facts, topo)}
    broker_conds = broker_conditions(facts)
    declared: list[tuple[str, CeleryExchange | CeleryQueue]] = [
        *((api.EXCHANGE, e) for e in topo.exchanges), *((api.QUEUE, q) for q in topo.queues)]
    for kind, obj in declared:
        if (kind, obj.meta.name) not in live:
            continue
        result = facts.declared.get((kind, obj.name))
        # A policy that could not be applied leaves the queue itself declared.
        fields: Body = {"declared": result is not None and (result.ok or result.kind == "policy")}
        if kind == api.QUEUE:
            fields.update(_queue_depth(facts.poll.report, obj.name))
        conds = _problems(topo, kind, obj.meta.name) or _declared(result, broker_conds)
        out[(kind, obj.meta.name)] = Desired(fields, conds)
    for pool in topo.pools:
        if (api.POOL, pool.meta.name) in live:
            out[(api.POOL, pool.meta.name)] = _pool(facts, topo, pool, broker_conds, live[(api.POOL, pool.meta.name)])
    state, unreadable = beat_state(facts)
    for sched in topo.schedules:
        if (api.SCHEDULE, sched.meta.name) in live:
            out[(api.SCHEDULE, sched.meta.name)] = _schedule(facts, topo, sched, live[(api.SCHEDULE, sched.meta.name)],
                                                             state, unreadable)
    return out


# -- beat ---------------------------------------------------------------------------------------------

def beat_state(facts: Facts) -> tuple[schedule.State | None, str | None]:
    """Beat's state as its ConfigMap holds it: (state, None); (None, why) when it cannot be read; (None,
    None) when there is none yet."""
    cm = facts.children.get(("ConfigMap", names.beat_state(facts.app_name)))
    if cm is None:
        return None, None
    try:
        return schedule.State.of_json((cm.get("data") or {}).get(schedule.STATE_KEY)), None
    except ValueError as e:
        return None, str(e)


def beat_entries(topo: Topology, state: schedule.State | None) -> dict[str, schedule.EntryState]:
    """The state of every entry in effect that beat has taken on."""
    known = state.entries if state is not None else {}
    return {e.name: known[e.name] for _, e in topo.beat_entries if e.name in known}


def _reported_skips(body: Body) -> dict[str, int]:
    """skippedRuns per entry as the schedule's status says (the skips already posted as Events)."""
    entries = (body.get("status") or {}).get("entries")
    if not isinstance(entries, list):
        return {}
    return {str(e.get("name")): int(e.get("skippedRuns") or 0) for e in entries if isinstance(e, dict)}


def _skip_message(entry: str, s: schedule.Skip) -> str:
    runs = f"1 run scheduled at {schedule.to_rfc3339(s.first)}" if s.count == 1 else \
        f"{s.count} runs scheduled from {schedule.to_rfc3339(s.first)} to {schedule.to_rfc3339(s.last)}"
    if s.reason == schedule.DEADLINE_EXCEEDED:
        why = f"missed by more than startingDeadlineSeconds ({s.deadline_seconds} s) when beat could send them"
    else:
        why = ("a later run was due too when beat could send them, and without startingDeadlineSeconds only the "
               "most recent missed run is sent")
    return f"entry {entry}: skipped {runs}: {why}"


def skip_events(entry: str, known: schedule.EntryState, reported: int) -> list[Event]:
    """An Event for each skip beat recorded since `reported` skipped runs were (one for those whose record
    beat no longer keeps)."""
    if known.skipped_runs <= reported:
        return []
    new = [s for s in known.skips if s.total > reported]
    unlisted = (new[0].total - new[0].count if new else known.skipped_runs) - reported
    out = []
    if unlisted > 0:
        out.append(Event("Warning", api.Reason.RUNS_SKIPPED, f"entry {entry}: skipped {unlisted} runs (beat "
                         f"keeps the last {schedule.MAX_SKIPS} skips only)"))
    out += [Event("Warning", api.Reason.RUNS_SKIPPED, _skip_message(entry, s)) for s in new]
    return out


def _schedule(facts: Facts, topo: Topology, sched: CeleryBeatSchedule, body: Body, state: schedule.State | None,
              unreadable: str | None) -> Desired:
    beat = names.beat(topo.app.meta.name)
    mine = [e for s, e in topo.beat_entries if s.meta.name == sched.meta.name]
    known = beat_entries(topo, state)
    reported = _reported_skips(body)
    entries: list[Body] = []
    events: list[Event] = []
    for e in mine:
        item: Body = {"name": e.name}
        k = known.get(e.name)
        if k is not None:
            if k.last_run is not None:
                item["lastRunTime"] = schedule.to_rfc3339(k.last_run)
            upcoming = k.next_run()
            if upcoming is not None:
                item["nextRunTime"] = schedule.to_rfc3339(upcoming)
            item["skippedRuns"] = k.skipped_runs
            events += skip_events(e.name, k, reported.get(e.name, 0))
        entries.append(item)
    conds = _problems(topo, api.SCHEDULE, sched.meta.name)
    if conds is None and ("Deployment", beat) not in facts.children:
        conds = conditions.not_ready(api.Reason.DEPLOYMENT_PROGRESSING, "beat Deployment not created yet",
                                     progressing=True, degraded=False)
    if conds is None:
        text = f"{len(mine)} entries served by {beat}"
        if unreadable is not None:
            text += f"; its state ConfigMap {names.beat_state(topo.app.meta.name)} cannot be read ({unreadable})"
        conds = conditions.ready(api.Reason.RECONCILED, text)
    return Desired({"entries": entries}, conds, tuple(events))


def status_patch(body: Body, desired: Desired, now: str) -> tuple[Body | None, Event | None]:
    """The status patch to write (None when nothing changed) and the Event the change deserves
    (only when the Ready condition's status or reason changed)."""
    old = body.get("status") or {}
    gen = int(body["metadata"].get("generation") or 0)
    conds = conditions.merge(old.get("conditions"), desired.conditions, gen, now)
    status = {**desired.fields, "observedGeneration": gen, "conditions": conds}
    if conditions.same(old.get("conditions"), conds) and all(old.get(k) == v for k, v in status.items()
                                                             if k != "conditions"):
        return None, None
    before = next((c for c in old.get("conditions") or [] if c.get("type") == api.READY), None)
    ready = next((c for c in desired.conditions if c.type == api.READY), None)
    event = None
    if ready is not None and (before is None or before.get("reason") != ready.reason
                              or (before.get("status") == "True") != ready.status):
        kind, name = body.get("kind", "object"), body["metadata"]["name"]
        event = Event("Normal" if ready.status and ready.reason not in WARNINGS else "Warning", ready.reason,
                      ready.message or f"{kind} {name} is ready")
    return {"status": status}, event


def child_key(obj: Body) -> ObjKey:
    return obj["kind"], obj["metadata"]["name"]


@dataclass(frozen=True)
class ChildPlan:
    """Children to apply (rendered, and missing or different live) and to delete (ours, no longer wanted,
    or left by an earlier incarnation of their owner), and those held back until old pods are gone."""

    apply: list[Body]
    delete: list[ObjKey]
    why: dict[ObjKey, str]  # for each child to apply: the first field that differs, or "missing"
    # Live children whose owner was deleted and recreated under the same name (another uid): never
    # adopted; deleted (their pods first), the new one is created once they are gone.
    replace: list[ObjKey] = field(default_factory=list)
    # Missing workloads (Deployments) whose previous pods still run or stop: created once they are gone,
    # so a pool's or beat's old and new workers never run side by side.
    hold: list[ObjKey] = field(default_factory=list)


def stamped(obj: Body) -> Body:
    """The object with the digest of its own content in an annotation (what was last applied)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]
    md = obj["metadata"]
    return {**obj, "metadata": {**md, "annotations": {**(md.get("annotations") or {}),
                                                      api.ANNOTATION_APPLIED: digest}}}


def controller_uid(obj: Body) -> str | None:
    """The uid of the object's controller (its owner reference with `controller: true`)."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _selects(workload: Body, pod: Body) -> bool:
    match = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return bool(match) and has_labels(pod, match)


def child_plan(desired: list[Body], live: Mapping[ObjKey, Body], pods: Sequence[Body] = ()) -> ChildPlan:
    """Only what differs is written: an unchanged child costs nothing, a hand-edited or deleted one
    is restored. A child whose rendered form changed since it was applied (its digest annotation
    differs: this also catches a field the operator stopped setting) is applied; otherwise it is
    applied only when a field the operator sets no longer holds its value (a hand edit). Children
    of the app that the desired state no longer has (a deleted pool, beat without schedules, the
    servers of a broker kind the app left) are deleted. A live child controlled by another uid than
    its rendered owner's (the app or pool was deleted and recreated under the same name) is deleted
    rather than adopted, and a missing Deployment waits until no pod it would select remains."""
    apply: list[Body] = []
    why: dict[ObjKey, str] = {}
    replace: list[ObjKey] = []
    hold: list[ObjKey] = []
    for rendered in desired:
        obj = stamped(rendered)
        key = child_key(obj)
        found = live.get(key)
        owner = controller_uid(obj)
        if found is not None and owner is not None and controller_uid(found) not in (owner, None):
            replace.append(key)
            continue
        if found is None and obj["kind"] == "Deployment" and any(_selects(obj, p) for p in pods):
            hold.append(key)
            continue
        if found is None:
            diff: str | None = "missing"
        elif (found["metadata"].get("annotations") or {}).get(api.ANNOTATION_APPLIED) != \
                obj["metadata"]["annotations"][api.ANNOTATION_APPLIED]:
            diff = "rendered form changed"
        else:
            diff = drift.differs(obj, found)
        if diff is not None:
            apply.append(obj)
            why[key] = diff
    wanted = {child_key(o) for o in desired}
    delete = sorted(k for k, b in live.items() if k not in wanted
                    and (b["metadata"].get("labels") or {}).get(api.LABEL_MANAGED_BY) == api.OPERATOR_NAME)
    return ChildPlan(apply, delete, why, replace, hold)
