"""When a replica runs its next lease cycle (kube/shards.next_wake): no servers needed."""

from __future__ import annotations

from celery_operator.kube.shards import next_wake


def test_with_no_foreign_lease_the_next_cycle_is_one_retry_period_away() -> None:
    assert next_wake(100.0, 2.0, []) == 2.0


def test_a_foreign_lease_expiring_before_the_retry_period_wakes_the_replica_at_its_expiry() -> None:
    assert next_wake(100.0, 2.0, [100.5, 107.0]) == 0.5


def test_a_foreign_lease_expiring_after_the_retry_period_does_not_delay_the_next_cycle() -> None:
    assert next_wake(100.0, 2.0, [109.0]) == 2.0


def test_an_expired_lease_whose_take_failed_waits_the_retry_period_instead_of_spinning() -> None:
    # Its expiry was 3 s ago: the cycle that just ran tried to take it. Waking "at its expiry" again
    # (0 s, or a small margin) is what had a standby retry every 50 ms while the API server was away.
    assert next_wake(100.0, 2.0, [97.0]) == 2.0
    assert next_wake(100.0, 2.0, [97.0, 100.0, 101.25]) == 1.25
