"""What the autoscaler knows of a pool between polls (poolstate, pure): each poll's reading, a count held
outside the policy (paused, resumed, first seen), the policy's decision, and a scale, each a new value."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from celery_operator.autoscale import Decision, History, ScaleEvents
from celery_operator.brokers.base import DepthReport, QueueDepth
from celery_operator.models import Autoscaling
from celery_operator.poolstate import PoolState, decided, held, measured, policy_depth, scaled
from celery_operator.waits import Wait

BEFORE = PoolState(desired=3, history=History.of_pairs([(0.0, 3)]), last_scale_time="2026-01-01T00:00:00Z",
                   depth=7, in_flight=1, source="management", wait=Wait(9.0, "timestamp"),
                   schedule="business", fallback=True)


def policy(**overrides: Any) -> Autoscaling:
    p = Autoscaling.of({"minReplicas": 1, "maxReplicas": 10, "targetMessagesPerReplica": 10, "activationMessages": 0,
                        "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0,
                        "scaleDownStabilizationSeconds": 0, "scaleDownDrainSeconds": 60, "countInFlight": True,
                        **overrides})
    assert p is not None
    return p


def report(**queues: tuple[int, int | None]) -> DepthReport:
    return DepthReport(source="redis", queues={n: QueueDepth(n, ready, in_flight, None)
                                               for n, (ready, in_flight) in queues.items()})


def test_a_poll_reads_its_queues_total_depth_and_longest_wait_and_leaves_the_rest() -> None:
    waits = {"a": Wait(4.0, "drain_rate"), "b": Wait(30.0, "timestamp"), "other": Wait(900.0, "timestamp")}
    st = measured(BEFORE, report(a=(5, 1), b=(2, 0), other=(100, 100)), ["a", "b"], waits)
    assert (st.depth, st.in_flight, st.source, st.wait) == (7, 1, "redis", Wait(30.0, "timestamp"))
    assert dataclasses.replace(st, depth=BEFORE.depth, in_flight=BEFORE.in_flight, source=BEFORE.source,
                               wait=BEFORE.wait) == BEFORE


def test_a_failed_poll_knows_no_depth_nor_wait_and_keeps_the_last_source() -> None:
    st = measured(BEFORE, None, ["a"], {"a": Wait(4.0, "drain_rate")})
    assert (st.depth, st.in_flight, st.source, st.wait) == (None, None, "management", None)
    assert (st.desired, st.history) == (BEFORE.desired, BEFORE.history)


def test_a_paused_pool_is_held_at_its_count_with_no_fallback_and_the_schedule_in_force() -> None:
    schedules = [{"name": "always", "cron": "* * * * *", "durationSeconds": 3600, "minReplicas": 2}]
    st = held(BEFORE, policy(schedules=schedules), 5, True, 1_700_000_000.0)
    assert (st.paused, st.desired, st.fallback, st.schedule) == (True, 5, False, "always")
    assert held(BEFORE, policy(), 5, True, 0.0).schedule is None
    assert st.history == BEFORE.history  # a pause decides nothing: a resume forgets it


def test_a_resumed_pool_forgets_what_the_policy_knew_and_continues_from_the_rendered_count() -> None:
    paused = dataclasses.replace(BEFORE, paused=True,
                                 events=ScaleEvents().record(0.0, 1, 3, policy(scaleUp={"policies": [
                                     {"type": "Pods", "value": 1, "periodSeconds": 60}]})))
    st = held(paused, policy(), 6, False, 0.0)
    assert (st.paused, st.desired, st.history, st.events) == (False, 6, None, ScaleEvents())
    assert (st.depth, st.last_scale_time) == (BEFORE.depth, BEFORE.last_scale_time)


def test_a_pool_first_seen_takes_the_rendered_count_and_keeps_its_reading() -> None:
    first = PoolState(depth=4, source="redis")
    assert held(first, policy(), 2, False, 0.0) == dataclasses.replace(first, desired=2)


@pytest.mark.parametrize(("spec", "rep", "expected"), [
    ({}, report(a=(5, 1), b=(7, 2)), (12, 3)),  # the total, as read
    ({"queueAggregation": "Max"}, report(a=(5, 1), b=(7, 2)), (7, 2)),
    ({"queueWeights": {"a": 2}}, report(a=(5, 1), b=(7, 2)), (17, 4)),
    ({"queueAggregation": "Max"}, report(a=(5, 1)), (5, 1)),  # a queue not reported is empty
    ({"queueAggregation": "Max"}, None, (None, None)),  # a failed poll: unknown
])
def test_the_policy_decides_on_the_total_unless_it_weighs_the_queues_or_takes_the_deepest(
        spec: dict[str, Any], rep: DepthReport | None, expected: tuple[int | None, int | None]) -> None:
    total = (rep.ready(["a", "b"]), rep.in_flight(["a", "b"])) if rep is not None else (None, None)
    assert policy_depth(policy(**spec), rep, ["a", "b"], total) == expected


def test_a_decision_keeps_its_history_schedule_and_fallback_but_not_its_count() -> None:
    history = History.of_pairs([(10.0, 8)])
    st = decided(BEFORE, Decision(8, 3, history, "up", raw=8, fallback=False, schedule=None))
    assert (st.history, st.schedule, st.fallback, st.desired) == (history, None, False, 3)


def test_a_scale_records_the_count_its_time_and_an_event_for_the_scaling_policies() -> None:
    p = policy(scaleDown={"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]})
    st = scaled(BEFORE, 3, 2, 100.0, "2026-01-02T00:00:00Z", p)
    assert (st.desired, st.last_scale_time) == (2, "2026-01-02T00:00:00Z")
    assert st.events == ScaleEvents().record(100.0, 3, 2, p) and st.events.removed(100.0, 60) == 1
    assert BEFORE.desired == 3 and BEFORE.events == ScaleEvents()  # a new value: the old one is unchanged


def test_a_pools_state_cannot_be_changed_in_place() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BEFORE.desired = 4  # type: ignore[misc]
