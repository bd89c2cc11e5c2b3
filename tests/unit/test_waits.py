"""How long a queue's tasks wait (pure): from the oldest publish time, else depth / drain rate."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_operator.waits import DrainMeter, Wait, longest, published_at, queue_wait

NOW = 1_800_000_000.0


def test_an_empty_queue_waits_nothing_whatever_else_is_known() -> None:
    assert queue_wait(0, NOW - 500, 0.0, NOW) == Wait(0.0, None)


def test_the_oldest_publish_time_wins_over_the_drain_rate() -> None:
    assert queue_wait(20, NOW - 42, 10.0, NOW) == Wait(42.0, "timestamp")


def test_a_clock_ahead_of_the_operators_never_gives_a_negative_wait() -> None:
    assert queue_wait(3, NOW + 5, None, NOW) == Wait(0.0, "timestamp")


def test_without_a_timestamp_depth_over_drain_rate() -> None:
    assert queue_wait(2000, None, 400.0, NOW) == Wait(5.0, "drain_rate")


@pytest.mark.parametrize("rate", [None, 0.0])
def test_without_timestamp_or_drain_the_wait_is_unknown(rate: float | None) -> None:
    assert queue_wait(7, None, rate, NOW) is None


def test_a_pool_waits_as_long_as_its_slowest_queue_and_not_at_all_when_all_are_empty() -> None:
    assert longest([Wait(3.0, "drain_rate"), Wait(40.0, "timestamp"), Wait(0.0, None)]) == Wait(40.0, "timestamp")
    assert longest([Wait(0.0, None), Wait(0.0, None)]) == Wait(0.0, None)
    assert longest([Wait(0.0, None), Wait(0.0, "timestamp")]) == Wait(0.0, "timestamp")
    assert longest([]) == Wait(0.0, None)


def test_one_unknown_queue_makes_the_pools_wait_unknown() -> None:
    assert longest([Wait(40.0, "timestamp"), None]) is None


@pytest.mark.parametrize(("value", "expected"), [
    (1_700_000_000, 1_700_000_000.0),  # AMQP: whole seconds
    (1_700_000_000.25, 1_700_000_000.25),
    (datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC), 1_700_000_000.0),
    (datetime.datetime(2023, 11, 14, 22, 13, 20), 1_700_000_000.0),  # naive: UTC, as py-amqp decodes it
    ({"__type__": "datetime", "__value__": "2023-11-14T22:13:20+00:00"}, 1_700_000_000.0),  # kombu JSON
    ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
    (None, None), (True, None), ("yesterday", None), ({"__type__": "date", "__value__": "x"}, None), ([], None),
])
def test_published_at_reads_every_form_a_timestamp_property_takes(value: object, expected: float | None) -> None:
    assert published_at(value) == expected


def test_the_drain_meter_measures_how_fast_the_ready_count_falls() -> None:
    m = DrainMeter().observe(0.0, 100)
    assert m.rate is None
    m = m.observe(10.0, 60)
    assert m.rate == 4.0
    m = m.observe(20.0, 40)  # 2/s now: smoothed with the 4/s before
    assert m.rate == 3.0
    m = m.observe(30.0, 50)  # rising: arrivals hide departures; the estimate stands
    assert m.rate == 3.0
    assert m.observe(30.0, 10).rate == 3.0  # no time passed: no sample


@given(st.integers(0, 10_000), st.one_of(st.none(), st.floats(NOW - 1e6, NOW + 100)),
       st.one_of(st.none(), st.floats(0, 1e4)))
def test_a_wait_is_never_negative_and_an_empty_queue_waits_nothing(
        ready: int, oldest: float | None, rate: float | None) -> None:
    w = queue_wait(ready, oldest, rate, NOW)
    if w is None:
        return
    assert w.seconds >= 0
    if ready == 0:
        assert w == Wait(0.0, None)
