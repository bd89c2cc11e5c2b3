"""The pure decisions of a reconcile: what to apply and delete, what each status says, which Events."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator import api, conditions, decide
from celery_operator.brokers.base import DeclareResult, DepthReport, QueueDepth
from celery_operator.endpoints import Endpoint
from celery_operator.models import CeleryApp, CeleryQueue, CeleryWorkerPool, SecretKeyRef
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
