"""Cross-object checks of one app's topology (what a CRD schema cannot see)."""

from __future__ import annotations

import pytest

from celery_operator import api
from celery_operator.models import CeleryQueue
from celery_operator.topology import Problem, Topology
from tests.unit import crs

R = api.Reason
OLD, NEW = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


def test_seed_topology_has_no_problems() -> None:
    assert crs.seed().problems() == {}


def test_objects_of_other_apps_and_namespaces_are_left_out() -> None:
    spec = {"appRef": {"name": crs.APP}, "durable": True, "autoDelete": False, "queueType": "classic",
            "deletionPolicy": "Retain"}
    other_ns = CeleryQueue.of(crs.body(api.QUEUE, "elsewhere", spec, namespace="other"))
    topo = Topology.of(crs.app(), queues=[crs.queue("mine"), crs.queue("theirs", app_name="other"),
                                          other_ns])
    assert [q.meta.name for q in topo.queues] == ["mine"]


@pytest.mark.parametrize(
    ("topology", "expected"),
    [
        pytest.param(
            Topology.of(crs.app(), queues=[crs.queue("q", exchange="nope")]),
            {(api.QUEUE, "q"): [R.EXCHANGE_NOT_FOUND]},
            id="queue-names-undeclared-exchange",
        ),
        pytest.param(
            Topology.of(crs.app(), queues=[crs.queue("q")]),
            {},
            id="queue-without-exchange-uses-implicit-one",
        ),
        pytest.param(
            Topology.of(crs.app(), queues=[crs.queue("q", exchange="celery")]),
            {},
            id="default-exchange-is-implicitly-declared",
        ),
        pytest.param(
            Topology.of(crs.app(), pools=[crs.pool("p", ["celery"])]),
            {},
            id="default-queue-is-known-without-a-cr",
        ),
        pytest.param(
            Topology.of(crs.app(), pools=[crs.pool("p", ["celery", "ghost"])]),
            {(api.POOL, "p"): [R.QUEUE_NOT_FOUND]},
            id="pool-names-unknown-queue",
        ),
        pytest.param(
            Topology.of(crs.app(), queues=[crs.queue("b", NEW, name="jobs"), crs.queue("a", OLD, name="jobs")]),
            {(api.QUEUE, "b"): [R.DUPLICATE_QUEUE]},
            id="later-of-two-queues-with-one-name-is-duplicate",
        ),
        pytest.param(
            Topology.of(crs.app(), queues=[crs.queue("b", OLD, name="jobs"), crs.queue("a", OLD, name="jobs")]),
            {(api.QUEUE, "b"): [R.DUPLICATE_QUEUE]},
            id="same-age-duplicates-ordered-by-name",
        ),
        pytest.param(
            Topology.of(crs.app(), exchanges=[crs.exchange("x2", NEW, name="x"), crs.exchange("x1", OLD, name="x")]),
            {(api.EXCHANGE, "x2"): [R.DUPLICATE_EXCHANGE]},
            id="later-of-two-exchanges-with-one-name-is-duplicate",
        ),
        pytest.param(
            Topology.of(crs.app(), schedules=[
                crs.schedule("s2", [{"name": "e", "task": "t", "everySeconds": 5}], NEW),
                crs.schedule("s1", [{"name": "e", "task": "t", "everySeconds": 9}], OLD)]),
            {(api.SCHEDULE, "s2"): [R.DUPLICATE_ENTRY]},
            id="entry-name-used-by-two-schedules",
        ),
        pytest.param(
            Topology.of(crs.app(), schedules=[
                crs.schedule("s", [{"name": "e", "task": "t", "everySeconds": 5, "queue": "ghost"}])]),
            {(api.SCHEDULE, "s"): [R.QUEUE_NOT_FOUND]},
            id="entry-routed-to-unknown-queue",
        ),
        pytest.param(
            Topology.of(crs.app(), schedules=[
                crs.schedule("s", [{"name": "e", "task": "t", "cron": "every tuesday"}])]),
            {(api.SCHEDULE, "s"): [R.INVALID_SPEC]},
            id="entry-with-unparsable-cron",
        ),
        pytest.param(
            Topology.of(crs.app(), schedules=[
                crs.schedule("s1", [], OLD, timezone="Europe/Paris"), crs.schedule("s2", [], NEW)]),
            {(api.SCHEDULE, "s2"): [R.TIMEZONE_CONFLICT]},
            id="schedule-timezone-differs-from-the-apps",
        ),
    ],
)
def test_problems_name_the_object_and_reason(topology: Topology, expected: dict[tuple[str, str], list[str]]) -> None:
    got = {key: [p.reason for p in problems] for key, problems in topology.problems().items()}
    assert got == expected


def test_problem_messages_name_the_missing_thing() -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["ghost", "celery"])])
    [problem] = topo.problems_of(api.POOL, "p")
    assert problem == Problem(R.QUEUE_NOT_FOUND, "queue(s) ghost not declared in app 'proj'")


def test_duplicate_queue_leaves_the_older_in_effect() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("b", NEW, name="jobs", maxPriority=5),
                                          crs.queue("a", OLD, name="jobs", maxPriority=7)])
    assert [q.meta.name for q in topo.effective_queues] == ["a"]
    decl = topo.declared_queue("jobs")
    assert decl is not None
    assert decl.arguments == {"x-max-priority": 7}


def test_queue_with_unknown_exchange_is_not_declared_and_pools_cannot_use_it() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("q", exchange="nope")], pools=[crs.pool("p", ["q"])])
    assert topo.queue_names == ["celery"]
    assert topo.effective_pools == []
    assert topo.problems_of(api.POOL, "p")[0].reason == R.QUEUE_NOT_FOUND


def test_pool_consumes_only_its_known_queues_in_its_order() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("a"), crs.queue("b")],
                       pools=[crs.pool("p", ["b", "ghost", "celery", "a", "b"])])
    [pool] = topo.effective_pools
    assert topo.pool_queues(pool) == ["b", "celery", "a"]


def test_pools_for_queue_lists_effective_consumers() -> None:
    topo = crs.seed()
    assert [p.meta.name for p in topo.pools_for_queue("high_queue")] == ["high"]
    assert topo.pools_for_queue("nobody") == []


def test_duplicate_entry_drops_only_that_entry_of_the_later_schedule() -> None:
    topo = Topology.of(crs.app(), schedules=[
        crs.schedule("late", [{"name": "e", "task": "t2", "everySeconds": 5},
                              {"name": "f", "task": "t3", "everySeconds": 5}], NEW),
        crs.schedule("early", [{"name": "e", "task": "t1", "everySeconds": 5}], OLD)])
    assert [(s.meta.name, e.name, e.task) for s, e in topo.beat_entries] == [
        ("early", "e", "t1"), ("late", "f", "t3")]
    assert topo.has_beat


def test_no_schedule_entries_means_no_beat() -> None:
    assert not Topology.of(crs.app(), schedules=[crs.schedule("s", [])]).has_beat


def test_default_queue_declared_by_a_cr_uses_its_exchange_and_comes_first() -> None:
    topo = crs.seed()
    first = topo.declared_queues[0]
    assert (first.name, first.exchange.name, first.routing_key) == ("default", "default", "default")
    assert first.source is not None


def test_implicit_default_queue_uses_the_apps_default_exchange_and_key() -> None:
    topo = Topology.of(crs.app(defaultQueue="dq", defaultExchange="dx", defaultRoutingKey="dk"))
    [q] = topo.declared_queues
    assert (q.name, q.exchange.name, q.exchange.type, q.routing_key, q.source) == ("dq", "dx", "direct", "dk", None)
    assert [e.name for e in topo.declared_exchanges] == ["dx"]


def test_declared_queue_carries_only_the_arguments_fixed_at_declare_time() -> None:
    """TTL, max length and dead-lettering can change on a live queue: they go to a policy, not the
    declaration that workers and producers repeat."""
    topo = Topology.of(crs.app(), queues=[crs.queue(
        "q", maxPriority=10, messageTTLSeconds=1.5, maxLength=100, queueType="quorum",
        deadLetter={"exchange": "dlx", "routingKey": "dead"})])
    decl = topo.declared_queue("q")
    assert decl is not None
    assert decl.arguments == {"x-max-priority": 10, "x-queue-type": "quorum"}


def test_app_config_timezone_wins_over_schedules() -> None:
    topo = Topology.of(crs.app(config={"timezone": "Asia/Tokyo"}), schedules=[crs.schedule("s", [])])
    assert topo.timezone == "Asia/Tokyo"
    assert topo.problems_of(api.SCHEDULE, "s")[0].reason == R.TIMEZONE_CONFLICT


def test_task_routes_first_queue_claiming_a_pattern_wins() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("a", OLD, tasks=["x.*"]),
                                          crs.queue("b", NEW, tasks=["x.*", "y"])])
    assert topo.task_routes() == {"x.*": "a", "y": "b"}


def test_an_entry_stored_under_an_older_crd_with_a_cron_celery_refuses_is_dropped_as_invalid_spec() -> None:
    topo = Topology.of(crs.app(), schedules=[crs.schedule("s", [{"name": "e", "task": "t", "cron": "0 0 ? * *"}])])
    [problem] = topo.problems_of(api.SCHEDULE, "s")
    assert problem.reason == R.INVALID_SPEC
    assert "cron must be a five-field crontab" in problem.message
    assert not topo.has_beat


# -- settings that work but bite ---------------------------------------------------------------------

REDIS_EXTERNAL = {"external": {"urlSecretRef": {"name": "broker", "key": "url"}}}
ACKS_LATE = {"task_acks_late": True}
AUTOSCALED = {"autoscaling": {**crs.AUTOSCALING_DEFAULTS, "maxReplicas": 4}}


def _reasons(topo: Topology, kind: str, name: str) -> list[str]:
    return [p.reason for p in topo.problems_of(kind, name)]


def test_redis_visibility_timeout_below_a_pools_time_limit_with_acks_late_is_a_warning_on_the_pool() -> None:
    app = crs.app(broker=REDIS_EXTERNAL, config={**ACKS_LATE, "broker_transport_options": {"visibility_timeout": 600}})
    pools = [crs.pool("long", ["celery"], timeLimitSeconds=600, terminationGracePeriodSeconds=600),
             crs.pool("short", ["celery"], timeLimitSeconds=599), crs.pool("unbounded", ["celery"])]
    topo = Topology.of(app, pools=pools, external_broker_kind="redis")
    [problem] = topo.problems_of(api.POOL, "long")
    assert problem.reason == R.VISIBILITY_TIMEOUT_TOO_SHORT
    assert "timeLimitSeconds 600 reaches the Redis broker's visibility_timeout 600 s" in problem.message
    assert "raise broker_transport_options.visibility_timeout in CeleryApp proj's spec.config" in problem.message
    assert _reasons(topo, api.POOL, "short") == _reasons(topo, api.POOL, "unbounded") == []
    assert [p.meta.name for p in topo.effective_pools] == ["long", "short", "unbounded"]  # still in effect


def test_visibility_timeout_defaults_to_kombus_hour_and_matters_only_on_redis_with_acks_late() -> None:
    pool = crs.pool("long", ["celery"], timeLimitSeconds=3600, terminationGracePeriodSeconds=3600)
    redis_late = Topology.of(crs.app(broker=REDIS_EXTERNAL, config=ACKS_LATE), pools=[pool],
                             external_broker_kind="redis")
    assert _reasons(redis_late, api.POOL, "long") == [R.VISIBILITY_TIMEOUT_TOO_SHORT]
    for topo in (Topology.of(crs.app(broker=REDIS_EXTERNAL), pools=[pool], external_broker_kind="redis"),
                 Topology.of(crs.app(config=ACKS_LATE), pools=[pool]),  # managed RabbitMQ
                 Topology.of(crs.app(broker=REDIS_EXTERNAL, config=ACKS_LATE), pools=[pool])):  # kind unknown
        assert _reasons(topo, api.POOL, "long") == []


def test_managed_redis_broker_is_known_to_be_redis_without_a_url() -> None:
    app = crs.app(broker={"redis": {"image": "redis:7.2"}}, config=ACKS_LATE)
    topo = Topology.of(app, pools=[crs.pool("long", ["celery"], timeLimitSeconds=4000,
                                            terminationGracePeriodSeconds=4000)])
    assert topo.broker_kind == "redis"
    assert _reasons(topo, api.POOL, "long") == [R.VISIBILITY_TIMEOUT_TOO_SHORT]


def test_countdown_reaching_the_visibility_timeout_is_a_warning_on_the_app_whatever_the_ack_mode() -> None:
    app = crs.app(broker=REDIS_EXTERNAL, maxCountdownSeconds=86400,
                  config={"broker_transport_options": {"visibility_timeout": 43200}})
    topo = Topology.of(app, external_broker_kind="redis")
    [problem] = topo.problems_of(api.APP, "proj")
    assert problem.reason == R.VISIBILITY_TIMEOUT_TOO_SHORT
    assert "maxCountdownSeconds 86400 reaches the Redis broker's visibility_timeout 43200 s" in problem.message
    fine = crs.app(broker=REDIS_EXTERNAL, maxCountdownSeconds=43199,
                   config={"broker_transport_options": {"visibility_timeout": 43200}})
    assert Topology.of(fine, external_broker_kind="redis").problems() == {}


def test_prefetch_above_one_with_acks_late_on_an_autoscaled_pool_is_a_warning() -> None:
    pools = [crs.pool("greedy", ["celery"], prefetchMultiplier=4, concurrency=3, **AUTOSCALED),
             crs.pool("unlimited", ["celery"], prefetchMultiplier=0, **AUTOSCALED),
             crs.pool("one", ["celery"], prefetchMultiplier=1, **AUTOSCALED),
             crs.pool("fixed", ["celery"], prefetchMultiplier=4)]
    topo = Topology.of(crs.app(config=ACKS_LATE), pools=pools)
    [greedy] = topo.problems_of(api.POOL, "greedy")
    assert greedy.reason == R.PREFETCH_HIDES_BACKLOG
    assert "reserves up to 12 messages while it runs 3" in greedy.message
    assert greedy.message.endswith("set prefetchMultiplier: 1")
    assert "reserves every ready message" in topo.problems_of(api.POOL, "unlimited")[0].message
    assert _reasons(topo, api.POOL, "one") == _reasons(topo, api.POOL, "fixed") == []
    assert Topology.of(crs.app(), pools=pools).problems() == {}  # without acks_late


def test_each_queue_quarantines_into_its_chosen_queue_or_queue_dot_quarantine() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("a", quarantineQueue="poisoned"), crs.queue("b"),
                                          crs.queue("c", quarantineQueue="poisoned")])
    assert topo.problems() == {}
    assert topo.quarantine_queues == {"a": "poisoned", "b": "b" + api.QUARANTINE_SUFFIX, "c": "poisoned",
                                      "celery": "celery" + api.QUARANTINE_SUFFIX}


def test_a_chosen_quarantine_queue_that_is_a_declared_queue_warns_and_the_default_is_used() -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("a", quarantineQueue="b"), crs.queue("b")])
    [problem] = topo.problems_of(api.QUEUE, "a")
    assert problem.reason == R.QUARANTINE_QUEUE_CONFLICT and "'b'" in problem.message
    assert topo.quarantine_queues["a"] == "a" + api.QUARANTINE_SUFFIX
