"""One reconcile as a value (plan.py): what a full and a status-only reconcile change, what the reconciler
remembers after acting, and the statuses that follow, from snapshots built here (no server)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
from typing import Any

from celery_operator import api, decide, plan
from celery_operator.brokers.base import DeclareResult
from celery_operator.decide import PoolScale
from tests.unit.test_autoscale_keda import DEFAULTS as AUTOSCALING
from tests.unit.test_decide import APP, NS, POOL, QUEUE, body

BROKER_SECRET = {"url": "amqp://u:p@rabbit:5672//"}


def snapshot(*extra: dict[str, Any], app: dict[str, Any] | None = APP, now: float = 1_800_000_000.0,
             monotonic: float = 1000.0, **kw: Any) -> plan.Snapshot:
    objs = [o for o in (app, QUEUE, POOL, *extra) if o is not None]
    bodies = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objs}
    defaults: dict[str, Any] = {"secrets": {"broker": BROKER_SECRET}}
    return plan.Snapshot(NS, "proj", bodies, **{**defaults, **kw}, now=now, monotonic=monotonic)


def live(p: plan.Plan) -> dict[tuple[str, str], dict[str, Any]]:
    """The children as the API server would hold them once `p` was applied."""
    assert p.children is not None
    return {decide.child_key(o): o for o in p.children.apply}


def test_a_full_reconcile_of_a_new_app_applies_every_child_and_declares_its_topology() -> None:
    p = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    assert p.children is not None
    kinds = {o["kind"] for o in p.children.apply}
    assert {"ConfigMap", "Deployment"} <= kinds
    assert set(p.children.why.values()) == {"missing"}
    assert p.declaration is not None and p.declaration.url == BROKER_SECRET["url"]
    assert [q.name for q in p.declaration.queues] == [q.name for q in p.topology.effective_queues]  # type: ignore[union-attr]


def test_a_status_only_reconcile_changes_nothing_in_the_cluster_or_on_the_broker() -> None:
    p = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=False)
    assert (p.children, p.declaration, p.finalizers, p.requeue_after) == (None, None, (), None)
    assert p.topology is not None and p.config_hash


def test_an_unchanged_app_applies_nothing_and_redeclares_only_after_redeclare_seconds() -> None:
    first = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    assert first.declaration is not None
    results = [DeclareResult("queue", "work", True)]
    memory = plan.remember(plan.Memory(), snapshot(), first,
                           plan.Outcome(declared=plan.declared_by_object(results), declare_ok=True))
    again = plan.plan(snapshot(children=live(first), monotonic=1010.0), memory, {}, frozenset(), full=True)
    assert again.children is not None and again.children.apply == [] and again.declaration is None
    later = plan.plan(snapshot(children=live(first), monotonic=1000.0 + plan.REDECLARE_SECONDS + 1), memory, {},
                      frozenset(), full=True)
    assert later.declaration is not None


def test_a_declaration_that_failed_is_not_remembered_as_done_and_reads_as_the_broker_down_until_a_poll() -> None:
    p = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    memory = plan.remember(plan.Memory(), snapshot(), p, plan.Outcome(declare_error="connection refused"))
    assert memory.declared_digest is None
    retry = plan.plan(snapshot(monotonic=1001.0), memory, {}, frozenset(), full=True)
    assert retry.declaration is not None  # declared again at the next full reconcile
    older_poll = plan.Polled(decide.Poll(True, None, None, 0), polled_at=999.0)
    assert plan.poll_seen(memory, older_poll) == decide.Poll(False, "connection refused", None, 0)
    newer_poll = plan.Polled(decide.Poll(True, None, None, 0), polled_at=1001.0)
    assert plan.poll_seen(memory, newer_poll).broker_up is True


def test_an_object_the_broker_refused_keeps_the_declaration_due() -> None:
    p = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    refused = [DeclareResult("queue", "work", True),
               DeclareResult("queue", "work", False, message="x-max-priority differs", conflict=True)]
    memory = plan.remember(plan.Memory(), snapshot(), p, plan.Outcome(declared=plan.declared_by_object(refused)))
    assert memory.declared[(api.QUEUE, "work")].message == "x-max-priority differs"  # the failure says most
    assert plan.plan(snapshot(monotonic=1001.0), memory, {}, frozenset(), full=True).declaration is not None


def test_a_queue_with_deletion_policy_delete_gets_the_finalizer_and_loses_it_once_retained() -> None:
    deleting = body(api.QUEUE, "gone", {**QUEUE["spec"], "deletionPolicy": "Delete"})
    p = plan.plan(snapshot(deleting), plan.Memory(), {}, frozenset(), full=True)
    (step,) = [s for s in p.finalizers if s.body["metadata"]["name"] == "gone"]
    assert step.action == "add" and step.finalizers() == [plan.FINALIZER]

    deleting["metadata"].update(finalizers=[plan.FINALIZER, "other"], deletionTimestamp="2027-01-15T08:00:00Z")
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    p = plan.plan(snapshot(deleting, now=now + 5), plan.Memory(), {}, frozenset(), full=True)
    (step,) = [s for s in p.finalizers if s.body["metadata"]["name"] == "gone"]
    assert (step.action, step.give_up, step.what) == ("delete-from-broker", False, "queue gone")
    assert step.finalizers() == ["other"]
    late = plan.plan(snapshot(deleting, now=now + plan.GIVE_UP_DELETING_AFTER_SECONDS + 1), plan.Memory(), {},
                     frozenset(), full=True)
    assert [s.give_up for s in late.finalizers if s.body["metadata"]["name"] == "gone"] == [True]

    without_app = plan.plan(snapshot(deleting, app=None), plan.Memory(), {}, frozenset(), full=True)
    (step,) = [s for s in without_app.finalizers if s.body["metadata"]["name"] == "gone"]
    assert step.action == "retain" and "CeleryApp proj is gone" in step.message
    assert without_app.topology is None and without_app.children is None


def test_an_autoscaled_pool_renders_the_autoscalers_count_and_a_paused_one_its_paused_count() -> None:
    auto = copy.deepcopy(POOL)
    auto["spec"]["autoscaling"] = {**AUTOSCALING, "minReplicas": 1, "maxReplicas": 9}
    snap = dataclasses.replace(snapshot(), bodies={**snapshot().bodies, (api.POOL, "w"): auto})
    p = plan.plan(snap, plan.Memory(), {"w": PoolScale(desired=6)}, frozenset(), full=True)
    (dep,) = [o for o in p.children.apply if o["kind"] == "Deployment"]  # type: ignore[union-attr]
    assert dep["spec"]["replicas"] == 6 and p.paused == frozenset()

    auto["metadata"]["annotations"] = {api.ANNOTATION_PAUSED_REPLICAS: "2"}
    snap = dataclasses.replace(snap, bodies={**snap.bodies, (api.POOL, "w"): auto})
    p = plan.plan(snap, plan.Memory(), {"w": PoolScale(desired=6)}, frozenset(), full=True)
    (dep,) = [o for o in p.children.apply if o["kind"] == "Deployment"]  # type: ignore[union-attr]
    assert dep["spec"]["replicas"] == 2 and p.paused == {"w"} and p.replicas == {"w": 2}
    status = plan.report(snap, p, plan.Memory(), {"w": PoolScale(desired=6)}, plan.Polled())
    assert status.statuses[(api.POOL, "w")].fields["desiredReplicas"] == 2


def test_a_held_deployment_waits_for_the_old_pods_then_is_created_after_its_grace_period() -> None:
    pods = [{"metadata": {"name": "old", "namespace": NS, "labels": {
        api.LABEL_APP: "proj", api.LABEL_POOL: "w", "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/instance": "proj", "app.kubernetes.io/name": "celery"}}, "status": {}}]
    first = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    (dep,) = [o for o in first.children.apply if o["kind"] == "Deployment"]  # type: ignore[union-attr]
    pods[0]["metadata"]["labels"] = dict(dep["spec"]["selector"]["matchLabels"])
    held = plan.plan(snapshot(pods=pods), plan.Memory(), {}, frozenset(), full=True)
    assert held.children is not None and held.children.hold == [("Deployment", dep["metadata"]["name"])]
    assert held.newly_held == tuple(held.children.hold) and held.requeue_after == plan.HOLD_RECHECK_SECONDS
    memory = plan.remember(plan.Memory(), snapshot(pods=pods), held, plan.Outcome())
    still = plan.plan(snapshot(pods=pods, monotonic=1010.0), memory, {}, frozenset(), full=True)
    assert still.newly_held == () and still.overdue == ()
    grace = POOL["spec"]["terminationGracePeriodSeconds"]
    late = plan.plan(snapshot(pods=pods, monotonic=1000.0 + grace + plan.HOLD_MARGIN_SECONDS + 1), memory, {},
                     frozenset(), full=True)
    assert late.overdue == tuple(held.children.hold)
    assert late.children is not None and late.children.why[late.overdue[0]] == "old pods still there"


def test_a_pending_claim_is_named_as_the_managed_servers_problem() -> None:
    sts = {"kind": "StatefulSet", "metadata": {"name": "proj-rabbitmq"},
           "spec": {"replicas": 1, "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                    "selector": {"matchLabels": {"x": "y"}}}, "status": {"readyReplicas": 0}}
    children = {("StatefulSet", "proj-rabbitmq"): sts}
    assert plan.unready_claimed(children) == ["proj-rabbitmq"]
    claims = [{"metadata": {"name": "data-proj-rabbitmq-0"}, "status": {"phase": "Pending"}},
              {"metadata": {"name": "data-other-0"}, "status": {"phase": "Pending"}}]
    assert [c["metadata"]["name"] for c in plan.claims_of(claims, "proj-rabbitmq")] == ["data-proj-rabbitmq-0"]
    reading = plan.ClaimReading(plan.claims_of(claims, "proj-rabbitmq"), [])
    problem = plan.managed_problem(snapshot(children=children, claims={"proj-rabbitmq": reading}))
    assert problem is not None and problem.message.startswith("StatefulSet proj-rabbitmq:")
    assert "data-proj-rabbitmq-0" in problem.message
    sts["status"]["readyReplicas"] = 1
    assert plan.unready_claimed(children) == [] and plan.managed_problem(snapshot(children=children)) is None


def test_a_managed_brokers_first_reconcile_takes_its_url_from_the_secret_being_applied() -> None:
    managed = copy.deepcopy(APP)
    managed["spec"]["broker"] = {"rabbitmq": {"image": "rabbitmq:3"}}
    snap = snapshot(app=managed, secrets={}, new_passwords={"broker": "fresh-password"})
    p = plan.plan(snap, plan.Memory(), {}, frozenset(), full=True)
    assert p.broker is not None and p.broker.url is not None and "fresh-password" in p.broker.url
    secrets = [o for o in p.children.apply if o["kind"] == "Secret"]  # type: ignore[union-attr]
    assert any(base64.b64decode(v).decode() == p.broker.url for s in secrets for v in (s.get("data") or {}).values())


def test_pools_and_queues_that_left_the_app_are_named_for_their_series_to_go() -> None:
    first = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=False)
    memory = plan.remember(plan.Memory(), snapshot(), first, None)
    snap = snapshot()
    bodies = {k: v for k, v in snap.bodies.items() if k[0] not in (api.POOL, api.QUEUE)}
    p = plan.plan(dataclasses.replace(snap, bodies=bodies), memory, {}, frozenset(), full=False)
    assert p.gone_pools == ("w",) and "work" in p.gone_queues


def test_before_its_first_poll_an_autoscaled_pools_status_wants_the_count_it_was_rendered_with() -> None:
    auto = copy.deepcopy(POOL)
    auto["spec"]["autoscaling"] = {**AUTOSCALING, "minReplicas": 3, "maxReplicas": 9}  # spec.replicas is 2
    snap = dataclasses.replace(snapshot(), bodies={**snapshot().bodies, (api.POOL, "w"): auto})
    p = plan.plan(snap, plan.Memory(), {}, frozenset(), full=True)
    assert p.replicas == {"w": 3}
    r = plan.report(snap, p, plan.Memory(), {}, plan.Polled())
    assert r.statuses[(api.POOL, "w")].fields["desiredReplicas"] == 3 and r.pools["w"].desired == 3
    polled = plan.report(snap, p, plan.Memory(), {"w": PoolScale(desired=5)}, plan.Polled())
    assert polled.statuses[(api.POOL, "w")].fields["desiredReplicas"] == 5


def test_the_statuses_read_the_children_as_the_api_server_returned_them_when_applied() -> None:
    p = plan.plan(snapshot(), plan.Memory(), {}, frozenset(), full=True)
    (dep,) = [o for o in p.children.apply if o["kind"] == "Deployment"]  # type: ignore[union-attr]
    served = {**dep, "status": {"replicas": 2, "readyReplicas": 2}}
    before = plan.report(snapshot(), p, plan.Memory(), {}, plan.Polled())
    after = plan.report(snapshot(), p, plan.Memory(), {}, plan.Polled(),
                        plan.Outcome(applied={decide.child_key(dep): served}))
    assert before.pools["w"].ready == 0 and after.pools["w"].ready == 2


def created_at(obj: dict[str, Any], epoch: float) -> dict[str, Any]:
    """`obj` as the API server would have stamped it at `epoch` (whole seconds, rounded down)."""
    out = copy.deepcopy(obj)
    out["metadata"]["creationTimestamp"] = datetime.datetime.fromtimestamp(
        int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


NOW = 1_800_000_000.0


def test_a_new_apps_first_render_waits_until_its_objects_stop_arriving() -> None:
    last = created_at(body(api.QUEUE, "late", {"appRef": {"name": "proj"}}), NOW)
    snap = snapshot(last, now=NOW + 0.5, monotonic=1000.0)
    # Stamped NOW, so created within [NOW, NOW + 1): the quiet second is counted from NOW + 1.
    assert plan.first_render_hold(snap, first_seen=1000.0) == 0.5 + plan.FIRST_RENDER_QUIET_SECONDS
    settled = snapshot(created_at(last, NOW - 3), now=NOW, monotonic=1000.0)
    assert plan.first_render_hold(settled, first_seen=1000.0) == 0.0


def test_the_first_render_hold_is_bounded_by_the_operators_own_clock() -> None:
    # An API server clock an hour ahead: its timestamps look new for an hour; the hold ends 10 s after the app
    # was first seen.
    ahead = created_at(body(api.QUEUE, "late", {"appRef": {"name": "proj"}}), NOW + 3600)
    snap = snapshot(ahead, now=NOW, monotonic=1004.0)
    assert plan.first_render_hold(snap, first_seen=1000.0) == plan.FIRST_RENDER_MAX_HOLD_SECONDS - 4.0
    assert plan.first_render_hold(snapshot(ahead, now=NOW, monotonic=1020.0), first_seen=1000.0) == 0.0


def test_an_app_that_runs_workloads_is_never_held() -> None:
    new = created_at(body(api.QUEUE, "late", {"appRef": {"name": "proj"}}), NOW)
    for kind in ("Deployment", "StatefulSet"):
        snap = snapshot(new, now=NOW, monotonic=1000.0, children={(kind, "proj-w"): {"metadata": {}}})
        assert plan.first_render_hold(snap, first_seen=1000.0) == 0.0
