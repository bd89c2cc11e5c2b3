"""Table tests of the queue-depth autoscaling policy."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator import api
from celery_operator.autoscale import (
    Decision,
    History,
    Recommendation,
    decide,
    raw_recommendation,
    total_depth,
)
from celery_operator.models import Autoscaling
from celery_operator.waits import Wait

DEFAULTS: dict[str, Any] = {
    "minReplicas": 1,
    "maxReplicas": 10,
    "targetMessagesPerReplica": 10,
    "activationMessages": 0,
    "pollIntervalSeconds": 10,
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 300,
    "scaleDownDrainSeconds": 60,
    "countInFlight": True,
}


def policy(**overrides: Any) -> Autoscaling:
    p = Autoscaling.of({**DEFAULTS, **overrides})
    assert p is not None
    return p


def hist(*pairs: tuple[float, int]) -> History:
    return History.of_pairs(list(pairs))


@pytest.mark.parametrize(
    ("overrides", "ready", "in_flight", "expected"),
    [
        ({}, 0, 0, 1),  # min 1
        ({}, 1, 0, 1),
        ({}, 10, 0, 1),
        ({}, 11, 0, 2),
        ({}, 12, 4, 2),
        ({}, 12, 9, 3),
        ({"countInFlight": False}, 12, 9, 2),
        ({}, 12, None, 2),  # in-flight unknown counts as 0
        ({}, 1000, 0, 10),  # max
        ({"minReplicas": 3}, 0, 0, 3),
        ({"minReplicas": 0}, 0, 0, 0),
        ({"minReplicas": 0}, 1, 0, 1),
        ({"minReplicas": 0, "activationMessages": 5}, 5, 0, 0),
        ({"minReplicas": 0, "activationMessages": 5}, 3, 2, 0),
        ({"minReplicas": 0, "activationMessages": 5}, 3, 3, 1),
        ({"minReplicas": 0, "activationMessages": 5, "countInFlight": False}, 3, 3, 0),
        ({"minReplicas": 0, "activationMessages": 25}, 26, 0, 3),
        ({"minReplicas": 2, "activationMessages": 50}, 30, 0, 3),  # activation ignored when min > 0
    ],
)
def test_raw_recommendation_is_ceil_of_depth_over_target_clamped(
    overrides: dict[str, Any], ready: int, in_flight: int | None, expected: int
) -> None:
    assert raw_recommendation(policy(**overrides), ready, in_flight) == expected


def test_reason_explains_the_arithmetic() -> None:
    d = decide(policy(), ready=12, in_flight=4, current=2, now=0.0, history=History())
    assert d.desired == 2
    assert d.reason == "12 messages ready + 4 in flight / 10 per replica → 2"
    assert not d.changed
    assert d.direction == "none"


def test_reason_mentions_clamping_to_max() -> None:
    d = decide(policy(maxReplicas=4), ready=100, in_flight=0, current=1, now=0.0, history=History())
    assert d.desired == 4
    assert d.reason == "100 messages ready + 0 in flight / 10 per replica → 10, clamped to max 4"
    assert d.changed
    assert d.direction == "up"


def test_scales_up_immediately_with_zero_up_window() -> None:
    d = decide(policy(), ready=55, in_flight=0, current=1, now=100.0, history=hist((95.0, 1)))
    assert (d.desired, d.raw, d.direction) == (6, 6, "up")


def test_scale_up_goes_to_lowest_recommendation_within_up_window() -> None:
    p = policy(scaleUpStabilizationSeconds=60)
    history = hist((50.0, 3), (70.0, 5))
    d = decide(p, ready=80, in_flight=0, current=1, now=100.0, history=history)
    assert d.raw == 8
    assert d.desired == 3
    assert "scale-up stabilization (60s) keeps 3" in d.reason


def test_scale_up_window_excludes_recommendations_older_than_the_window() -> None:
    p = policy(scaleUpStabilizationSeconds=60)
    history = hist((40.0, 3), (70.0, 5))  # 40 is exactly 60 s old: outside
    d = decide(p, ready=80, in_flight=0, current=1, now=100.0, history=history)
    assert d.desired == 5


def test_scale_down_goes_to_highest_recommendation_within_down_window() -> None:
    history = hist((10.0, 9), (100.0, 6), (200.0, 4))
    d = decide(policy(), ready=5, in_flight=0, current=8, now=350.0, history=history)
    # 10.0 is 340 s old (outside 300 s); the highest inside is 6
    assert d.raw == 1
    assert d.desired == 6
    assert d.direction == "down"
    assert "scale-down stabilization (300s) keeps 6" in d.reason


def test_scale_down_is_immediate_with_zero_down_window() -> None:
    p = policy(scaleDownStabilizationSeconds=0)
    d = decide(p, ready=5, in_flight=0, current=8, now=1.0, history=hist((0.5, 9)))
    assert d.desired == 1


def test_stabilization_never_pushes_above_current_when_recommendations_are_lower() -> None:
    # Window max (6) is above current (4) but raw is 2: stabilization keeps 4, never scales up.
    d = decide(policy(), ready=15, in_flight=0, current=4, now=100.0, history=hist((90.0, 6)))
    assert d.desired == 4
    assert not d.changed


def test_first_decision_seeds_history_with_current_so_restart_does_not_scale_down() -> None:
    d = decide(policy(), ready=0, in_flight=0, current=7, now=1000.0, history=None)
    assert d.desired == 7
    assert d.history is not None
    assert d.history.entries == (Recommendation(1000.0, 7), Recommendation(1000.0, 1))
    later = decide(policy(), ready=0, in_flight=0, current=7, now=1300.0, history=d.history)
    assert later.desired == 1


def test_empty_history_is_not_a_first_decision() -> None:
    # A pool polled less often than its windows has an empty (not None) history: no seeding.
    d = decide(policy(), ready=0, in_flight=0, current=7, now=1000.0, history=History())
    assert d.desired == 1


def test_history_keeps_only_what_the_longest_window_can_reach() -> None:
    p = policy(scaleUpStabilizationSeconds=30, scaleDownStabilizationSeconds=60)
    history = hist((0.0, 5), (50.0, 4), (90.0, 3))
    d = decide(p, ready=20, in_flight=0, current=3, now=100.0, history=history)
    assert d.history == hist((50.0, 4), (90.0, 3), (100.0, 2))


def test_history_stays_empty_when_both_windows_are_zero() -> None:
    p = policy(scaleDownStabilizationSeconds=0)
    d = decide(p, ready=20, in_flight=0, current=3, now=100.0, history=hist((99.0, 5)))
    assert d.history == History()


def test_pool_at_zero_stays_at_zero_while_depth_is_at_or_below_activation() -> None:
    p = policy(minReplicas=0, activationMessages=5)
    d = decide(p, ready=5, in_flight=0, current=0, now=0.0, history=History())
    assert d.desired == 0
    assert d.reason == "5 messages ready + 0 in flight ≤ activation 5 → 0 (idle)"


def test_pool_at_zero_scales_from_zero_above_activation() -> None:
    p = policy(minReplicas=0, activationMessages=5)
    d = decide(p, ready=6, in_flight=0, current=0, now=0.0, history=History())
    assert (d.desired, d.direction) == (1, "up")


def test_running_pool_goes_to_zero_only_after_the_scale_down_window() -> None:
    p = policy(minReplicas=0, scaleDownStabilizationSeconds=120)
    history: History | None = None
    current = 2
    for now in (0.0, 30.0, 60.0, 90.0):
        d = decide(p, ready=0, in_flight=0, current=current, now=now, history=history)
        assert d.desired == 2, now
        history = d.history
    d = decide(p, ready=0, in_flight=0, current=current, now=120.0, history=history)
    assert d.desired == 0
    assert d.direction == "down"


def test_min_replicas_above_zero_wins_over_activation_at_zero() -> None:
    p = policy(minReplicas=2, activationMessages=100)
    d = decide(p, ready=0, in_flight=0, current=0, now=0.0, history=History())
    assert d.desired == 2


def test_pool_keeps_replicas_when_broker_is_unreachable() -> None:
    history = hist((0.0, 9))
    d = decide(policy(), ready=None, in_flight=None, current=5, now=10.0, history=history)
    assert d == Decision(5, 5, hist((0.0, 9), (10.0, 5)),
                         "queue depth unknown (broker unreachable): keeping 5 replicas")
    assert not d.changed


def test_after_an_outage_an_empty_reading_within_the_scale_down_window_keeps_the_held_count() -> None:
    # A RabbitMQ recovering its queues answers "0 ready" at first: that alone must not drop the pool.
    p = policy(scaleDownStabilizationSeconds=30)
    history = None
    for t in (0.0, 5.0, 10.0):  # the outage: the pool is held at 4
        d = decide(p, ready=None, in_flight=None, current=4, now=t, history=history)
        history = d.history
    assert decide(p, ready=0, in_flight=0, current=4, now=15.0, history=history).desired == 4
    assert decide(p, ready=0, in_flight=0, current=4, now=41.0, history=history).desired == 1


def test_unreachable_broker_holds_a_count_above_max() -> None:
    d = decide(policy(maxReplicas=3), ready=None, in_flight=2, current=5, now=10.0, history=None)
    assert d.desired == 5
    assert decide(policy(maxReplicas=3), ready=0, in_flight=0, current=5, now=12.0, history=d.history).desired == 3


def test_unreachable_broker_still_raises_to_min() -> None:
    d = decide(policy(minReplicas=2), ready=None, in_flight=None, current=0, now=0.0, history=None)
    assert (d.desired, d.direction) == (2, "up")
    assert "broker unreachable" in d.reason


def test_count_above_max_is_brought_down_to_max_when_data_is_known() -> None:
    d = decide(policy(maxReplicas=3), ready=100, in_flight=0, current=5, now=0.0, history=None)
    assert d.desired == 3
    assert d.reason == "100 messages ready + 0 in flight / 10 per replica → 10, clamped to max 3"


def test_lowered_max_wins_over_stabilization_holding_an_older_recommendation() -> None:
    # Recorded under an older spec with max 10; the user lowered max to 3.
    d = decide(policy(maxReplicas=3), ready=0, in_flight=0, current=5, now=10.0, history=hist((0.0, 8)))
    assert d.desired == 3
    assert d.reason.endswith("; 5 is outside [1, 3] → 3")


def test_history_round_trips_through_pairs() -> None:
    history = hist((2.0, 1), (1.0, 3))
    assert history.entries[0] == Recommendation(1.0, 3)
    assert History.of_pairs(history.to_pairs()) == history


def test_future_recommendations_are_ignored_and_dropped() -> None:
    # A clock that jumped back must not let a stale "future" entry pin the pool.
    d = decide(policy(), ready=0, in_flight=0, current=5, now=100.0, history=hist((500.0, 9)))
    assert d.desired == 1
    assert d.history == hist((100.0, 1))


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        ([], (0, 0)),
        ([(12, 4), (3, 0)], (15, 4)),
        ([(12, None), (3, 1)], (15, None)),
        ([(12, 4), (None, None)], (None, None)),
    ],
)
def test_total_depth_is_unknown_when_any_queue_is_unknown(
    queues: list[tuple[int | None, int | None]], expected: tuple[int | None, int | None]
) -> None:
    assert total_depth(queues) == expected


# -- targetWaitSeconds ------------------------------------------------------------------------------

def on_wait(**overrides: Any) -> Autoscaling:
    """A pool that scales on wait only (no depth target)."""
    base = {k: v for k, v in DEFAULTS.items() if k != "targetMessagesPerReplica"}
    p = Autoscaling.of({**base, "targetWaitSeconds": 10, **overrides})
    assert p is not None
    return p


@pytest.mark.parametrize(
    ("wait", "workers", "current", "expected"),
    [
        (0.0, 3, 3, 1),  # nothing waits: down to min
        (5.0, 4, 4, 2),  # half the target with 4 workers: 2 would keep it under
        (10.0, 4, 4, 4),  # on target
        (25.0, 2, 2, 5),  # 2.5 x the target: 5 workers
        (25.0, 0, 3, 3),  # none ready yet (starting): hold, never fewer while over the target
        (25.0, 1, 3, 3),  # 1 ready of 3: ceil(2.5) = 3
        (40.0, 1, 3, 4),  # the wait keeps growing while 2 start: linear in the wait, no compounding
        (30.0, None, 2, 6),  # ready workers unknown: the current count
        (1000.0, 2, 2, 10),  # clamped to max
    ],
)
def test_on_wait_the_ready_workers_are_scaled_by_wait_over_target(
        wait: float, workers: int | None, current: int, expected: int) -> None:
    w = Wait(wait, "timestamp" if wait else None)
    assert raw_recommendation(on_wait(), 5, 0, w, workers, current) == expected


def test_slow_tasks_with_a_low_depth_scale_on_wait_and_the_reason_says_so() -> None:
    p = on_wait(targetMessagesPerReplica=100)
    d = decide(p, ready=4, in_flight=2, current=2, now=0.0, history=History(), wait=Wait(31.0, "timestamp"),
               workers=2)
    assert (d.desired, d.direction) == (7, "up")
    assert d.reason == ("4 messages ready + 2 in flight / 100 per replica → 1; tasks wait 31s (oldest task's "
                        "publish time) with 2 ready workers / 10s target → 7 (not fewer while over the target)")


def test_many_fast_tasks_that_wait_little_do_not_scale_on_depth_when_only_wait_is_targeted() -> None:
    d = decide(on_wait(), ready=2000, in_flight=4, current=2, now=0.0, history=History(),
               wait=Wait(3.0, "timestamp"), workers=2)
    assert d.raw == 1


def test_with_both_targets_the_larger_recommendation_wins() -> None:
    p = on_wait(targetMessagesPerReplica=10)
    by_depth = decide(p, ready=80, in_flight=0, current=1, now=0.0, history=History(),
                      wait=Wait(1.0, "drain_rate"), workers=1)
    by_wait = decide(p, ready=5, in_flight=0, current=1, now=0.0, history=History(),
                     wait=Wait(60.0, "timestamp"), workers=1)
    assert (by_depth.raw, by_wait.raw) == (8, 6)


def test_an_unknown_wait_holds_the_current_count_and_leaves_scaling_up_to_depth() -> None:
    d = decide(on_wait(), ready=50, in_flight=0, current=3, now=0.0, history=History(), wait=None, workers=3)
    assert (d.raw, d.desired) == (3, 3)
    assert "wait unknown" in d.reason
    both = decide(on_wait(targetMessagesPerReplica=10), ready=50, in_flight=0, current=3, now=0.0,
                  history=History(), wait=None, workers=3)
    assert both.desired == 5


def test_a_pool_at_zero_on_wait_wakes_above_activation_and_stays_asleep_below() -> None:
    p = on_wait(minReplicas=0, activationMessages=2)
    asleep = decide(p, ready=2, in_flight=0, current=0, now=0.0, history=History(), wait=Wait(99.0, "timestamp"),
                    workers=0)
    woken = decide(p, ready=3, in_flight=0, current=0, now=0.0, history=History(), wait=None, workers=0)
    assert (asleep.desired, woken.desired) == (0, 1)


def test_the_wait_target_is_stabilized_like_depth() -> None:
    p = on_wait(scaleDownStabilizationSeconds=60)
    d = decide(p, ready=1, in_flight=0, current=6, now=100.0, history=hist((70.0, 6)), wait=Wait(0.0, None),
               workers=6)
    assert (d.raw, d.desired) == (1, 6)
    assert "scale-down stabilization (60s) keeps 6" in d.reason


def test_a_pool_naming_no_target_scales_on_depth_at_the_default_target_as_before_wait_targets() -> None:
    base = {k: v for k, v in DEFAULTS.items() if k != "targetMessagesPerReplica"}
    p = Autoscaling.of(base)
    assert p is not None
    assert (p.target_messages_per_replica, p.target_wait_seconds) == (api.DEFAULT_TARGET_MESSAGES_PER_REPLICA, None)
    assert Autoscaling.of({**base, "targetWaitSeconds": 30}).target_messages_per_replica is None  # type: ignore[union-attr]
