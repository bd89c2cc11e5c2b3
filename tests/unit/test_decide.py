"""The pure decisions of a reconcile: what to apply and delete, what each status says, which Events."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator import api, conditions, decide, schedule
from celery_operator.brokers.base import DeclareResult, DepthReport, QueueDepth
from celery_operator.endpoints import Endpoint
from celery_operator.models import CeleryApp, CeleryBeatSchedule, CeleryQueue, CeleryWorkerPool, SecretKeyRef
from celery_operator.render import render_all
from celery_operator.render.broker import SecretsContext
from celery_operator.topology import Topology

NS = "team"


def body(kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "1"},
            "spec": spec}


APP = body(api.APP, "proj", {"image": "img:1", "app": "m.app", "broker": {"external": {
    "urlSecretRef": {"name": "broker", "key": "url"}}}, "config": {}, "env": [], "envFrom": [],
    "defaultQueue": "celery", "defaultExchange": "celery", "defaultRoutingKey": "celery"})
QUEUE = body(api.QUEUE, "work", {"appRef": {"name": "proj"}, "durable": True, "autoDelete": False,
                                 "queueType": "classic", "deletionPolicy": "Retain", "tasks": []})
POOL = body(api.POOL, "w", {"appRef": {"name": "proj"}, "queues": ["work"], "replicas": 2, "concurrency": 1,
                            "pool": "prefork", "prefetchMultiplier": 1, "extraArgs": [], "env": [],
                            "terminationGracePeriodSeconds": 30})


def topology() -> Topology:
    return Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(POOL)], ())


def facts(**kw: Any) -> decide.Facts:
    bodies = {(api.APP, "proj"): APP, (api.QUEUE, "work"): QUEUE, (api.POOL, "w"): POOL}
    defaults: dict[str, Any] = {"namespace": NS, "app_name": "proj", "bodies": bodies, "topology": topology(),
                                "broker": Endpoint(ref=SecretKeyRef("broker", "url"), url="amqp://b//")}
    return decide.Facts(**{**defaults, **kw})


def rendered() -> list[dict[str, Any]]:
    return render_all(topology(), SecretsContext())


def test_nothing_is_applied_when_every_live_child_matches_what_was_last_applied() -> None:
    live = {decide.child_key(o): copy.deepcopy(o) for o in map(decide.stamped, rendered())}
    for obj in live.values():
        obj["status"] = {"observed": True}  # what the server adds
    plan = decide.child_plan(rendered(), live)
    assert plan.apply == [] and plan.delete == []


def test_missing_changed_and_hand_edited_children_are_applied_with_the_reason() -> None:
    live = {decide.child_key(o): copy.deepcopy(o) for o in map(decide.stamped, rendered())}
    del live[("ConfigMap", "proj-celery-config")]
    dep = live[("Deployment", "proj-w")]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"  # a hand edit
    plan = decide.child_plan(rendered(), live)
    assert plan.why == {("ConfigMap", "proj-celery-config"): "missing",
                        ("Deployment", "proj-w"): ".spec.template.spec.containers[0].image"}


def test_a_field_the_operator_stopped_setting_is_applied_again_by_its_digest() -> None:
    old = decide.stamped({**rendered()[-1]})
    old["metadata"]["annotations"][api.ANNOTATION_APPLIED] = "something-else"
    plan = decide.child_plan(rendered(), {decide.child_key(old): old})
    assert plan.why[decide.child_key(old)] == "rendered form changed"


def test_children_no_longer_rendered_are_deleted_only_if_the_operator_made_them() -> None:
    ours = {"kind": "Deployment", "metadata": {"name": "proj-old", "labels": {
        api.LABEL_MANAGED_BY: api.OPERATOR_NAME}}}
    theirs = {"kind": "Deployment", "metadata": {"name": "proj-theirs", "labels": {}}}
    plan = decide.child_plan([], {("Deployment", "proj-old"): ours, ("Deployment", "proj-theirs"): theirs})
    assert plan.delete == [("Deployment", "proj-old")]


def test_children_of_an_earlier_incarnation_of_the_app_are_replaced_not_adopted() -> None:
    """The app was deleted and recreated under its name: its old children (another owner uid) are deleted
    first, never applied over; everything else of the new app goes ahead."""
    live = {decide.child_key(o): copy.deepcopy(o) for o in map(decide.stamped, rendered())}
    old = live[("Deployment", "proj-w")]
    old["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-app"
    plan = decide.child_plan(rendered(), live)
    assert plan.replace == [("Deployment", "proj-w")]
    assert plan.apply == [] and plan.delete == [] and plan.hold == []


def test_a_missing_deployment_waits_until_no_pod_it_would_select_remains() -> None:
    live = {decide.child_key(o): copy.deepcopy(o) for o in map(decide.stamped, rendered())}
    dep = live.pop(("Deployment", "proj-w"))
    old_pod = {"kind": "Pod", "metadata": {"name": "proj-w-abc", "deletionTimestamp": "2026-01-01T00:00:00Z",
                                           "labels": dict(dep["spec"]["template"]["metadata"]["labels"])}}
    other = {"kind": "Pod", "metadata": {"name": "proj-beat-abc", "labels": {api.LABEL_APP: "proj"}}}
    plan = decide.child_plan(rendered(), live, [old_pod, other])
    assert plan.hold == [("Deployment", "proj-w")] and plan.apply == []
    plan = decide.child_plan(rendered(), live, [other])  # the old pod is gone
    assert plan.hold == [] and plan.why == {("Deployment", "proj-w"): "missing"}


def test_a_pool_whose_broker_is_unreachable_holds_its_replicas_and_says_why() -> None:
    pool_body = body(api.POOL, "w", {**POOL["spec"], "autoscaling": {
        "minReplicas": 1, "maxReplicas": 5, "targetMessagesPerReplica": 10, "activationMessages": 0,
        "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 300,
        "scaleDownDrainSeconds": 60, "countInFlight": True}})
    topo = Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(pool_body)], ())
    out = decide.statuses(facts(topology=topo, bodies={(api.APP, "proj"): APP, (api.POOL, "w"): pool_body},
                                poll=decide.Poll(broker_up=False, error="connection refused"),
                                scale={"w": decide.PoolScale(desired=3)}))
    ready = out[(api.POOL, "w")].conditions[0]
    assert not ready.status and ready.reason == api.Reason.BROKER_UNREACHABLE
    assert "holding 3 replicas: connection refused" in ready.message


def test_queue_status_reports_declaration_and_depth() -> None:
    report = DepthReport(source="management", queues={"work": QueueDepth("work", ready=7, in_flight=2, consumers=1)})
    out = decide.statuses(facts(declared={(api.QUEUE, "work"): DeclareResult("queue", "work", ok=True)},
                                poll=decide.Poll(broker_up=True, report=report)))
    q = out[(api.QUEUE, "work")]
    assert q.fields == {"declared": True, "messagesReady": 7, "messagesInFlight": 2, "consumers": 1}
    assert q.conditions[0].status and q.conditions[0].reason == api.Reason.DECLARED


def test_objects_of_a_missing_app_get_app_not_found() -> None:
    out = decide.statuses(decide.Facts(namespace=NS, app_name="proj", bodies={(api.QUEUE, "work"): QUEUE}))
    c = out[(api.QUEUE, "work")].conditions[0]
    assert c.reason == api.Reason.APP_NOT_FOUND and "fix spec.appRef.name" in c.message


def test_an_unchanged_status_is_not_written_and_a_transition_gets_one_event() -> None:
    want = decide.Desired({"declared": True}, conditions.ready(api.Reason.DECLARED, "declared on the broker"))
    patch, event = decide.status_patch(QUEUE, want, "2026-01-01T00:00:00Z")
    assert patch is not None and event is not None and event.type == "Normal"
    written = {**QUEUE, "status": patch["status"]}
    assert decide.status_patch(written, want, "2026-01-01T00:00:09Z") == (None, None)
    moved = decide.Desired({"declared": True, "messagesReady": 3}, want.conditions)
    patch, event = decide.status_patch(written, moved, "2026-01-01T00:00:09Z")
    assert patch is not None and event is None  # a value moved; Ready did not


def test_a_warning_reason_keeps_ready_true_but_its_event_is_a_warning() -> None:
    want = decide.Desired({}, conditions.ready(api.Reason.TIMEZONE_CONFLICT, "two timezones"))
    _, event = decide.status_patch(QUEUE, want, "2026-01-01T00:00:00Z")
    assert event is not None and event.type == "Warning"


# -- beat ---------------------------------------------------------------------------------------------

SCHEDULE = body(api.SCHEDULE, "ticks", {"appRef": {"name": "proj"}, "timezone": "UTC", "entries": [
    {"name": "tick", "task": "t.tick", "everySeconds": 10, "startingDeadlineSeconds": 30},
    {"name": "daily", "task": "t.daily", "cron": "0 3 * * *"}]})


def beat_facts(state: schedule.State | str | None, reported: list[dict[str, Any]] | None = None) -> decide.Facts:
    sched = copy.deepcopy(SCHEDULE)
    if reported is not None:
        sched["status"] = {"entries": reported}
    topo = Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(POOL)],
                       [CeleryBeatSchedule.of(sched)])
    children: dict[tuple[str, str], dict[str, Any]] = {("Deployment", "proj-beat"): {"metadata": {}}}
    if state is not None:
        text = state if isinstance(state, str) else state.to_json()
        children[("ConfigMap", "proj-beat-state")] = {"metadata": {"name": "proj-beat-state"},
                                                     "data": {schedule.STATE_KEY: text}}
    return facts(topology=topo, children=children,
                 bodies={(api.APP, "proj"): APP, (api.QUEUE, "work"): QUEUE, (api.POOL, "w"): POOL,
                         (api.SCHEDULE, "ticks"): sched})


def tick_state(decided: str, last: str | None, *skips: schedule.Skip) -> schedule.State:
    spec = schedule.schedule_of({"every_seconds": 10}).spec
    entry = schedule.EntryState(spec, schedule.from_rfc3339(decided),
                                schedule.from_rfc3339(last) if last else None)
    for s in skips:
        entry = schedule.claim(entry, schedule.Plan((), s, entry.decided_through))
    return schedule.State({"tick": entry})


def test_schedule_status_lists_each_entry_with_its_last_and_next_run_from_beats_state() -> None:
    want = decide.statuses(beat_facts(tick_state("2026-01-01T00:01:00Z", "2026-01-01T00:00:50Z")))[
        (api.SCHEDULE, "ticks")]
    assert want.fields == {"entries": [
        {"name": "tick", "lastRunTime": "2026-01-01T00:00:50Z", "nextRunTime": "2026-01-01T00:01:10Z",
         "skippedRuns": 0},
        {"name": "daily"},  # not taken on by beat yet
    ]}
    assert want.events == ()
    assert want.conditions[0].status and "2 entries served by proj-beat" in want.conditions[0].message


def skip(first: str, last: str, count: int, reason: str = schedule.DEADLINE_EXCEEDED) -> schedule.Skip:
    return schedule.Skip(schedule.from_rfc3339(first), schedule.from_rfc3339(last), count, reason,
                         schedule.from_rfc3339(last) + 60 * schedule.US,
                         30 if reason == schedule.DEADLINE_EXCEEDED else None)


def test_each_skip_beat_recorded_since_the_status_last_said_is_one_warning_event() -> None:
    state = tick_state("2026-01-01T01:00:00Z", "2026-01-01T01:00:00Z",
                       skip("2026-01-01T00:00:10Z", "2026-01-01T00:00:30Z", 3),
                       skip("2026-01-01T00:30:10Z", "2026-01-01T00:30:10Z", 1, schedule.SUPERSEDED))
    want = decide.statuses(beat_facts(state, reported=[{"name": "tick", "skippedRuns": 0}]))[(api.SCHEDULE, "ticks")]
    assert want.fields["entries"][0]["skippedRuns"] == 4
    assert [(e.type, e.reason) for e in want.events] == [("Warning", api.Reason.RUNS_SKIPPED)] * 2
    assert want.events[0].message == (
        "entry tick: skipped 3 runs scheduled from 2026-01-01T00:00:10Z to 2026-01-01T00:00:30Z: missed by "
        "more than startingDeadlineSeconds (30 s) when beat could send them")
    assert want.events[1].message.startswith("entry tick: skipped 1 run scheduled at 2026-01-01T00:30:10Z: a "
                                             "later run was due too")
    # Once the status says 3 were reported, only the newer skip is new.
    again = decide.statuses(beat_facts(state, reported=[{"name": "tick", "skippedRuns": 3}]))[(api.SCHEDULE, "ticks")]
    assert [e.message[:40] for e in again.events] == [want.events[1].message[:40]]
    assert decide.statuses(beat_facts(state, reported=[{"name": "tick", "skippedRuns": 4}]))[
        (api.SCHEDULE, "ticks")].events == ()


def test_skips_whose_records_beat_no_longer_keeps_are_reported_in_one_event() -> None:
    skips = [skip(f"2026-01-0{d}T00:00:10Z", f"2026-01-0{d}T00:00:20Z", 2) for d in range(1, 10)]
    skips += [skip(f"2026-01-1{d}T00:00:10Z", f"2026-01-1{d}T00:00:20Z", 2) for d in range(0, 5)]
    state = tick_state("2026-02-01T00:00:00Z", None, *skips)
    assert len(state.entries["tick"].skips) == schedule.MAX_SKIPS
    events = decide.statuses(beat_facts(state, reported=[{"name": "tick", "skippedRuns": 2}]))[
        (api.SCHEDULE, "ticks")].events
    assert events[0].message == f"entry tick: skipped 6 runs (beat keeps the last {schedule.MAX_SKIPS} skips only)"
    assert len(events) == 1 + schedule.MAX_SKIPS


def test_an_unreadable_beat_state_leaves_the_entries_bare_and_says_why() -> None:
    want = decide.statuses(beat_facts("{not json"))[(api.SCHEDULE, "ticks")]
    assert want.fields == {"entries": [{"name": "tick"}, {"name": "daily"}]}
    assert want.conditions[0].status and "proj-beat-state cannot be read" in want.conditions[0].message


def test_beats_own_writes_to_its_state_and_lease_are_told_from_changes_to_apply() -> None:
    from celery_operator.controller.runtime import beat_wrote

    cm = {"metadata": {"name": "proj-beat-state", "labels": {"a": "1"}, "resourceVersion": "1"}, "data": {}}
    written = {**cm, "metadata": {**cm["metadata"], "resourceVersion": "2"}, "data": {schedule.STATE_KEY: "{}"}}
    assert beat_wrote("ConfigMap", "proj", written, cm)
    relabelled = {**written, "metadata": {**written["metadata"], "labels": {}}}
    assert not beat_wrote("ConfigMap", "proj", relabelled, cm)
    lease = {"metadata": {"name": "proj-beat", "resourceVersion": "1"}, "spec": {"holderIdentity": "a"}}
    assert beat_wrote("Lease", "proj", {**lease, "spec": {"holderIdentity": "b"}}, lease)
    assert not beat_wrote("ConfigMap", "proj", {**written, "metadata": {"name": "proj-celery-config"}},
                          {**cm, "metadata": {"name": "proj-celery-config"}})
