"""RabbitMQ's statistics (head timestamps, delivery rates) are carried between listings and each poll becomes
queue waits (pollstats, pure); what a poll changes re-decides the statuses; a stopped poller calls off its drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from celery_operator import pollstats
from celery_operator.brokers.base import DepthReport, QueueDepth
from celery_operator.controller.poller import Poller
from celery_operator.controller.scalein_executor import Drain
from celery_operator.controller.state import AppState
from celery_operator.metrics import OperatorMetrics
from celery_operator.pollstats import Statistics
from celery_operator.poolstate import PoolState
from celery_operator.waits import Wait


def report(statistics: bool, source: str = "management", missing: tuple[str, ...] = (),
           **queues: tuple[int, float | None, float | None]) -> DepthReport:
    return DepthReport(source=source,  # type: ignore[arg-type]
                       queues={n: QueueDepth(n, ready, 0, 1 if statistics else None, oldest, rate)
                               for n, (ready, oldest, rate) in queues.items()},
                       missing=missing, statistics=statistics)



def test_a_statistics_listing_without_a_new_queues_statistics_is_listed_again_at_the_next_interval() -> None:
    # RabbitMQ lists a queue by name only until it first collects its statistics: no consumer count yet.
    listing = report(True, a=(0, None, None), b=(0, None, None))
    listing = dataclasses.replace(listing, queues={**listing.queues, "b": QueueDepth("b", 0, None, None)})
    _, kept = pollstats.merge(Statistics(), listing, True, 100.0)
    assert not kept.complete and kept.consumers == {"a": 1, "b": None}
    assert not kept.due(100.0 + pollstats.INCOMPLETE_RETRY_SECONDS - 1, 30.0)
    assert kept.due(100.0 + pollstats.INCOMPLETE_RETRY_SECONDS, 30.0)
    _, kept = pollstats.merge(kept, report(True, a=(0, None, None), b=(0, None, None)), True, 105.0)
    assert kept.complete and not kept.due(110.0, 30.0) and kept.due(135.0, 30.0)


def test_a_broker_without_statistics_lists_them_only_at_the_usual_refresh() -> None:
    _, kept = pollstats.merge(Statistics(), report(False, source="redis", a=(3, None, None)), True, 100.0)
    assert kept.complete and not kept.due(110.0, 30.0)

def test_live_totals_take_the_head_timestamp_and_rate_of_the_last_statistics_listing() -> None:
    stamp = time.time() - 60
    _, kept = pollstats.merge(Statistics(), report(True, a=(5, stamp, None), b=(9, None, 3.0)), True, 100.0)
    assert kept.at == 100.0 and not kept.due(110.0, 30.0) and kept.due(130.0, 30.0)
    merged, _ = pollstats.merge(kept, report(False, a=(4, None, None), b=(9, None, None)), False, 110.0)
    assert merged.queues["a"].oldest_published == stamp and merged.queues["a"].consumers == 1
    assert merged.queues["b"].drain_rate == 3.0
    waits, _ = pollstats.waits({}, merged, time.time(), 110.0)
    a, b = waits["a"], waits["b"]
    assert a is not None and a.source == "timestamp" and 59 <= a.seconds < 70
    assert b == Wait(3.0, "drain_rate")


def test_a_queue_found_empty_forgets_its_head_timestamp() -> None:
    _, kept = pollstats.merge(Statistics(), report(True, a=(5, time.time() - 600, None)), True, 0.0)
    _, kept = pollstats.merge(kept, report(False, a=(0, None, None)), False, 1.0)
    refilled, _ = pollstats.merge(kept, report(False, a=(2, None, None)), False, 2.0)
    assert refilled.queues["a"].oldest_published is None
    assert pollstats.waits({}, refilled, time.time(), 2.0)[0]["a"] is None  # unknown until the next listing


def test_without_broker_counters_the_drain_rate_comes_from_the_falling_ready_count() -> None:
    waits, meters = pollstats.waits({}, report(False, "redis", q=(100, None, None)), time.time(), 1000.0)
    assert waits["q"] is None and meters["q"].at == 1000.0
    waits, _ = pollstats.waits(meters, report(False, "redis", q=(60, None, None)), time.time(), 1010.0)
    w = waits["q"]
    assert w is not None and w.source == "drain_rate" and 14 < w.seconds < 16  # 60 / 4 per second


def test_a_queue_the_broker_does_not_have_waits_nothing() -> None:
    assert pollstats.waits({}, report(False, missing=("gone",)), time.time(), 0.0)[0]["gone"] == Wait(0.0, None)


def test_a_pools_wait_changing_alone_re_decides_the_statuses() -> None:
    st = PoolState(desired=1, depth=3, wait=Wait(5.0, "timestamp"))
    state = AppState(uid="u", pools={"p": st})
    before = state.seen()
    state.pools = {"p": dataclasses.replace(st, wait=Wait(40.0, "timestamp"))}
    longer = state.seen()
    assert longer != before
    state.pools = {"p": dataclasses.replace(st, wait=Wait(40.4, "timestamp"))}
    assert state.seen() == longer  # the status shows whole seconds: nothing new to write


def test_a_stopped_poller_calls_off_the_drain_it_started() -> None:
    async def scenario() -> bool:
        state = AppState(uid="u")  # no topology yet: each poll returns at once
        drain = asyncio.create_task(asyncio.sleep(3600))
        poller = Poller(None, None, None, OperatorMetrics(),  # type: ignore[arg-type]  # a poll without topology uses none
                        lambda _key, _full: None)
        poller.scale_in.drains[(("ns", "app"), "p")] = Drain(task=drain, drain_from=3)
        task = asyncio.create_task(poller.run(("ns", "app"), state))
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait([drain], timeout=1)
        return drain.cancelled()

    assert asyncio.run(scenario())
