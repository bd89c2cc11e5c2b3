"""Table tests of the KEDA-style autoscaling features: pause, fallback, scaling policies (the HPA's
behavior), queue aggregation and weights, scheduled minimums."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from celery_operator import api
from celery_operator.autoscale import (
    History,
    Pause,
    ScaleEvent,
    ScaleEvents,
    decide,
    fallback_replicas,
    pause_of,
    paused_replicas,
    pool_depth,
    scale_down_limit,
    scale_up_limit,
    schedule_floor,
)
from celery_operator.decide import PoolScale
from celery_operator.models import Autoscaling, CeleryWorkerPool, Fallback, ScalingRules
from celery_operator.plan import pool_replicas
from celery_operator.poolstate import PoolState

DEFAULTS: dict[str, Any] = {
    "minReplicas": 1, "maxReplicas": 20, "targetMessagesPerReplica": 10, "activationMessages": 0,
    "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 0,
    "scaleDownDrainSeconds": 60, "countInFlight": True,
}
PAUSED, PAUSED_REPLICAS = api.ANNOTATION_PAUSED, api.ANNOTATION_PAUSED_REPLICAS


def policy(**overrides: Any) -> Autoscaling:
    p = Autoscaling.of({**DEFAULTS, **overrides})
    assert p is not None
    return p


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC).timestamp()


# -- pause -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("annotations", "spec", "expected"), [
    ({}, {}, Pause()),
    ({PAUSED: "false"}, {}, Pause()),
    ({PAUSED: "true"}, {}, Pause(True, None, f"annotation {PAUSED}")),
    ({PAUSED: "True"}, {"pausedReplicas": 2}, Pause(True, 2, f"annotation {PAUSED}")),
    ({PAUSED_REPLICAS: "3"}, {}, Pause(True, 3, f"annotation {PAUSED_REPLICAS}")),
    ({PAUSED_REPLICAS: "0"}, {"pausedReplicas": 2}, Pause(True, 0, f"annotation {PAUSED_REPLICAS}")),
    ({}, {"paused": True}, Pause(True, None, "spec.autoscaling.paused")),
    ({}, {"paused": True, "pausedReplicas": 4}, Pause(True, 4, "spec.autoscaling.paused")),
    ({}, {"pausedReplicas": 4}, Pause()),  # the count alone does not pause
    ({PAUSED: "false"}, {"paused": True}, Pause(True, None, "spec.autoscaling.paused")),  # either pauses
])
def test_pause_comes_from_the_annotations_or_the_spec(annotations: dict[str, str], spec: dict[str, Any],
                                                      expected: Pause) -> None:
    assert pause_of(annotations, policy(**spec)) == expected


@pytest.mark.parametrize(("annotations", "held", "problem"), [
    ({PAUSED: "yes"}, None, 'write "true" or "false"'),
    ({PAUSED_REPLICAS: "two"}, None, "write a replica count"),
    ({PAUSED_REPLICAS: "-1"}, None, "write a replica count"),
    ({PAUSED_REPLICAS: "21"}, None, "above maxReplicas 20"),
    ({PAUSED: "true", PAUSED_REPLICAS: "x"}, None, "write a replica count"),
])
def test_a_malformed_pause_annotation_pauses_at_the_current_count_and_says_why(
        annotations: dict[str, str], held: int | None, problem: str) -> None:
    p = pause_of(annotations, policy())
    assert p.paused and p.replicas == held
    assert p.problem is not None and problem in p.problem


@pytest.mark.parametrize(("pause", "live", "expected"), [
    (Pause(True, 3), 7, 3),
    (Pause(True, None), 7, 7),  # a count set by hand stays
    (Pause(True, None), None, 2),  # no Deployment yet
])
def test_paused_replicas(pause: Pause, live: int | None, expected: int) -> None:
    assert paused_replicas(pause, live, 2) == expected


def pool(annotations: dict[str, str] | None = None, autoscaling: dict[str, Any] | None = None) -> CeleryWorkerPool:
    spec: dict[str, Any] = {"appRef": {"name": "a"}, "queues": ["q"], "replicas": 1, "concurrency": 1,
                            "pool": "prefork", "prefetchMultiplier": 1, "terminationGracePeriodSeconds": 60}
    if autoscaling is not None:
        spec["autoscaling"] = {**DEFAULTS, **autoscaling}
    return CeleryWorkerPool.of({"metadata": {"name": "p", "namespace": "n", "annotations": annotations or {}},
                                "spec": spec})


def test_paused_pool_keeps_a_hand_set_replica_count() -> None:
    assert pool_replicas(pool(autoscaling={}), None, False, 2) == (2, False)
    # the autoscaler's count was 5; kubectl scale deployment --replicas=9 while paused
    assert pool_replicas(pool({PAUSED: "true"}, {}), PoolScale(desired=5), False, 9) == (9, True)


def test_paused_replicas_set_the_deployment_count() -> None:
    assert pool_replicas(pool({PAUSED_REPLICAS: "3"}, {}), None, False, 9) == (3, True)
    assert pool_replicas(pool(None, {"paused": True, "pausedReplicas": 0}), None, False, 3) == (0, True)


def test_resumed_pool_continues_from_the_deployments_replicas_not_its_memory() -> None:
    # the autoscaler knew 4 before the pause; the Deployment was set to 7 while paused
    assert pool_replicas(pool(autoscaling={}), PoolScale(desired=4), True, 7) == (7, False)
    assert pool_replicas(pool(autoscaling={}), PoolScale(desired=4), False, 7) == (4, False)


def test_resume_forgets_what_the_autoscaler_knew_before_the_pause() -> None:
    st = PoolState(desired=4, history=History.of_pairs([(0.0, 4)]), paused=True, depth=9)
    resumed = st.resume()
    assert (resumed.desired, resumed.history, resumed.paused, resumed.depth) == (None, None, False, 9)
    assert (st.desired, st.paused) == (4, True)  # a value: the state it came from is unchanged


def test_a_new_autoscaled_pool_starts_at_min_replicas_and_a_restarted_operator_keeps_the_deployments() -> None:
    assert pool_replicas(pool(autoscaling={"minReplicas": 2}), None, False, None) == (2, False)
    assert pool_replicas(pool(autoscaling={"minReplicas": 2, "maxReplicas": 5}), None, False, 9) == (5, False)


def test_a_pool_without_autoscaling_can_be_paused_too() -> None:
    assert pool_replicas(pool({PAUSED: "true"}), None, False, 6) == (6, True)  # spec.replicas is 1
    assert pool_replicas(pool(), None, False, 6) == (1, False)


# -- fallback --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("behavior", "current", "expected"), [
    ("static", 7, 3), ("static", 0, 3),
    ("currentReplicas", 7, 7),
    ("currentReplicasIfHigher", 7, 7), ("currentReplicasIfHigher", 1, 3),
    ("currentReplicasIfLower", 7, 3), ("currentReplicasIfLower", 1, 1),
])
def test_fallback_behaviors_are_kedas(behavior: str, current: int, expected: int) -> None:
    assert fallback_replicas(Fallback(3, 3, behavior), current) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("failed", "current", "expected", "fallback"), [
    (1, 7, 7, False), (2, 7, 7, False),  # below the threshold: hold
    (3, 7, 2, True), (9, 7, 2, True),
    (3, 0, 2, True),  # never 0 because the broker is away
])
def test_fallback_applies_after_failure_threshold_polls_in_a_row(failed: int, current: int, expected: int,
                                                                 fallback: bool) -> None:
    p = policy(minReplicas=0, fallback={"failureThreshold": 3, "replicas": 2, "behavior": "static"})
    d = decide(p, ready=None, in_flight=None, current=current, now=0.0, history=None, failed_polls=failed)
    assert (d.desired, d.fallback) == (expected, fallback)


def test_without_fallback_the_pool_holds_its_replicas_however_long_the_broker_is_away() -> None:
    d = decide(policy(), ready=None, in_flight=None, current=5, now=0.0, history=None, failed_polls=1000)
    assert (d.desired, d.fallback) == (5, False)


def test_fallback_never_goes_below_the_minimum() -> None:
    p = policy(minReplicas=4, fallback={"failureThreshold": 1, "replicas": 2, "behavior": "static"})
    assert decide(p, ready=None, in_flight=None, current=6, now=0.0, history=None, failed_polls=1).desired == 4


# -- scaling policies (the HPA's behavior) ------------------------------------------------------------------

def rules(*policies: tuple[str, int, int], select: str = "Max") -> ScalingRules:
    r = ScalingRules.of({"policies": [{"type": t, "value": v, "periodSeconds": s} for t, v, s in policies],
                         "selectPolicy": select})
    assert r is not None
    return r


def events(*pairs: tuple[float, int]) -> ScaleEvents:
    return ScaleEvents(tuple(ScaleEvent(at, change) for at, change in pairs))


@pytest.mark.parametrize(("r", "current", "past", "expected"), [
    (rules(("Pods", 4, 60)), 10, events(), 14),
    (rules(("Percent", 100, 60)), 10, events(), 20),
    (rules(("Percent", 50, 60)), 3, events(), 5),  # ceil(4.5)
    (rules(("Pods", 4, 60)), 14, events((90.0, 4)), 14),  # 4 added 10 s ago: the period started at 10
    (rules(("Pods", 4, 60)), 14, events((40.0, 4)), 18),  # 60 s ago: outside the period
    (rules(("Pods", 4, 60)), 8, events((90.0, -2)), 14),  # removals raise the period's start
    (rules(("Pods", 4, 60), ("Percent", 100, 60)), 10, events(), 20),  # Max: the larger change
    (rules(("Pods", 4, 60), ("Percent", 100, 60), select="Min"), 10, events(), 14),
    (rules(("Pods", 4, 60), select="Disabled"), 10, events(), 10),
])
def test_scale_up_limit_is_the_hpas(r: ScalingRules, current: int, past: ScaleEvents, expected: int) -> None:
    assert scale_up_limit(r, current, past, now=100.0) == expected


@pytest.mark.parametrize(("r", "current", "past", "expected"), [
    (rules(("Pods", 2, 60)), 10, events(), 8),
    (rules(("Percent", 50, 60)), 5, events(), 2),  # int(2.5)
    (rules(("Percent", 10, 60)), 10, events(), 9),
    (rules(("Pods", 2, 60)), 8, events((90.0, -2)), 8),  # already removed 2 in the period
    (rules(("Pods", 2, 60)), 12, events((90.0, 2)), 8),  # additions lower the period's start
    (rules(("Pods", 1, 60), ("Percent", 50, 60)), 10, events(), 5),  # Max: the larger change
    (rules(("Pods", 1, 60), ("Percent", 50, 60), select="Min"), 10, events(), 9),
    (rules(("Pods", 1, 60), select="Disabled"), 10, events(), 10),
])
def test_scale_down_limit_is_the_hpas(r: ScalingRules, current: int, past: ScaleEvents, expected: int) -> None:
    assert scale_down_limit(r, current, past, now=100.0) == expected


def test_scale_up_policy_limits_a_burst_and_allows_more_once_the_period_passed() -> None:
    p = policy(scaleUp={"policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}], "selectPolicy": "Max"})
    d = decide(p, ready=200, in_flight=0, current=2, now=0.0, history=None)
    assert d.desired == 6 and "scaleUp policies" in d.reason
    past = ScaleEvents().record(0.0, 2, 6, p)
    assert decide(p, ready=200, in_flight=0, current=6, now=30.0, history=d.history, events=past).desired == 6
    assert decide(p, ready=200, in_flight=0, current=6, now=60.0, history=d.history, events=past).desired == 10


def test_scale_down_disabled_never_shrinks_the_pool() -> None:
    p = policy(scaleDown={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                          "selectPolicy": "Disabled"})
    assert decide(p, ready=0, in_flight=0, current=8, now=0.0, history=None).desired == 8


def test_scale_events_are_kept_for_the_longest_policy_period_only() -> None:
    p = policy(scaleUp={"policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}]},
               scaleDown={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]})
    e = ScaleEvents().record(0.0, 1, 5, p).record(200.0, 5, 4, p).record(301.0, 4, 3, p)
    assert [(x.at, x.change) for x in e.entries] == [(200.0, -1), (301.0, -1)]
    assert ScaleEvents().record(0.0, 1, 5, policy()).entries == ()  # no policies: nothing to keep


# -- queues ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "queues", "expected"), [
    ({}, [("a", 5, 1), ("b", 7, 2)], (12, 3)),
    ({"queueWeights": {"a": 3}}, [("a", 5, 1), ("b", 7, 2)], (22, 5)),
    ({"queueWeights": {"b": 0}}, [("a", 5, 1), ("b", 7, 2)], (5, 1)),
    ({"queueAggregation": "Max"}, [("a", 5, 1), ("b", 7, 2)], (7, 2)),
    ({"queueAggregation": "Max", "queueWeights": {"a": 2}}, [("a", 5, 1), ("b", 7, 2)], (10, 2)),
    ({"queueAggregation": "Max"}, [("a", 5, 9), ("b", 7, 0)], (5, 9)),  # deepest counting in-flight
    ({"queueAggregation": "Max", "countInFlight": False}, [("a", 5, 9), ("b", 7, 0)], (7, 0)),
    ({}, [("a", None, None), ("b", 7, 2)], (None, None)),  # one unknown queue: unknown
    ({"queueAggregation": "Max"}, [("a", None, None), ("b", 7, 2)], (None, None)),
    ({"queueWeights": {"a": 0}}, [("a", None, None), ("b", 7, 2)], (7, 2)),  # an ignored queue is not needed
    ({}, [("a", 5, None), ("b", 7, 2)], (12, None)),
])
def test_queue_depths_combine_by_weight_and_aggregation(spec: dict[str, Any], queues: list[Any],
                                                        expected: tuple[int | None, int | None]) -> None:
    assert pool_depth(policy(**spec), queues) == expected


# -- scheduled minimums --------------------------------------------------------------------------------------

BUSINESS = {"name": "business", "cron": "0 8 * * mon-fri", "timezone": "Europe/Paris", "durationSeconds": 36000,
            "minReplicas": 5}
NIGHT = {"name": "night", "cron": "0 22 * * *", "timezone": "America/New_York", "durationSeconds": 6 * 3600,
         "minReplicas": 3}


@pytest.mark.parametrize(("schedules", "now", "expected"), [
    ([BUSINESS], utc(2026, 1, 5, 6, 59), (1, None)),  # Monday 07:59 in Paris (UTC+1)
    ([BUSINESS], utc(2026, 1, 5, 7, 0), (5, "business")),  # 08:00 Paris
    ([BUSINESS], utc(2026, 1, 5, 16, 59), (5, "business")),
    ([BUSINESS], utc(2026, 1, 5, 17, 0), (1, None)),  # 18:00: the 10 h window is over
    ([BUSINESS], utc(2026, 1, 3, 9, 0), (1, None)),  # Saturday
    ([BUSINESS], utc(2026, 7, 6, 6, 0), (5, "business")),  # summer time: 08:00 is 06:00 UTC
    ([BUSINESS], utc(2026, 3, 30, 6, 0), (5, "business")),  # the Monday after the DST change
    ([NIGHT], utc(2026, 1, 6, 2, 59), (1, None)),  # 21:59 in New York
    ([NIGHT], utc(2026, 1, 6, 4, 30), (3, "night")),  # 23:30 in New York
    ([NIGHT], utc(2026, 1, 6, 8, 59), (3, "night")),  # 03:59 the next day: the window spans midnight
    ([NIGHT], utc(2026, 1, 6, 9, 0), (1, None)),
])
def test_schedule_raises_the_minimum_during_its_window(schedules: list[Any], now: float,
                                                       expected: tuple[int, str | None]) -> None:
    assert schedule_floor(policy(schedules=schedules), now) == expected


def test_the_largest_active_schedule_sets_the_minimum() -> None:
    late = {**NIGHT, "name": "late", "cron": "0 17 * * *", "timezone": "Europe/Paris", "minReplicas": 8}
    assert schedule_floor(policy(schedules=[BUSINESS, late]), utc(2026, 1, 5, 16, 30)) == (8, "late")


def test_a_schedule_with_an_unknown_time_zone_is_skipped() -> None:
    bad = {**BUSINESS, "timezone": "Mars/Olympus_Mons"}
    assert schedule_floor(policy(schedules=[bad]), utc(2026, 1, 5, 7, 0)) == (1, None)


def test_a_window_scales_up_to_its_minimum_at_once_and_releases_it_after() -> None:
    p = policy(schedules=[BUSINESS], scaleUp={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]})
    inside = decide(p, ready=0, in_flight=0, current=1, now=utc(2026, 1, 5, 7, 0), history=None)
    assert (inside.desired, inside.schedule) == (5, "business")
    after = decide(p, ready=0, in_flight=0, current=5, now=utc(2026, 1, 5, 17, 0), history=None)
    assert (after.desired, after.schedule) == (1, None)


def test_a_window_raises_the_minimum_while_the_broker_is_away() -> None:
    d = decide(policy(schedules=[BUSINESS]), ready=None, in_flight=None, current=2, now=utc(2026, 1, 5, 7, 0),
               history=None)
    assert d.desired == 5 and "schedule business" in d.reason
