"""The work queue: a key enqueued many times is worked once, never by two workers at once."""

from __future__ import annotations

import asyncio

from celery_operator.controller.workqueue import AppKey, WorkQueue


def test_a_burst_of_adds_is_worked_once_and_a_full_add_wins() -> None:
    async def run() -> list[tuple[AppKey, bool]]:
        done: list[tuple[AppKey, bool]] = []
        finished = asyncio.Event()

        async def work(key: AppKey, full: bool) -> None:
            done.append((key, full))
            finished.set()

        q = WorkQueue(work, workers=4, debounce_seconds=0.05)
        q.start()
        for full in (False, True, False, False):
            q.add(("ns", "a"), full=full)
        await asyncio.wait_for(finished.wait(), 5)
        await asyncio.sleep(0.2)
        await q.stop()
        return done

    assert asyncio.run(run()) == [(("ns", "a"), True)]


def test_a_status_only_add_does_not_pull_a_delayed_full_one_forward() -> None:
    """A failed reconcile retried with backoff (a delayed full add) keeps its delay while polls ask for
    status-only passes: those run at once, the full one when due."""
    async def run() -> list[tuple[bool, float]]:
        done: list[tuple[bool, float]] = []
        finished = asyncio.Event()
        t0 = asyncio.get_running_loop().time()

        async def work(key: AppKey, full: bool) -> None:
            done.append((full, asyncio.get_running_loop().time() - t0))
            if full:
                finished.set()

        q = WorkQueue(work, workers=4, debounce_seconds=0.01)
        q.start()
        q.add(("ns", "a"), delay=0.5)
        q.add(("ns", "a"), full=False)
        await asyncio.wait_for(finished.wait(), 5)
        await q.stop()
        return done

    (first_full, first_at), (second_full, second_at) = asyncio.run(run())
    assert (first_full, second_full) == (False, True)
    assert first_at < 0.3 <= 0.45 <= second_at


def test_a_key_is_never_worked_twice_at_once_and_an_add_during_work_runs_after() -> None:
    async def run() -> tuple[int, int]:
        running = peak = runs = 0
        second = asyncio.Event()

        async def work(key: AppKey, full: bool) -> None:
            nonlocal running, peak, runs
            running += 1
            peak = max(peak, running)
            runs += 1
            if runs == 1:
                q.add(key)  # while it is being worked
                await asyncio.sleep(0.2)
            else:
                second.set()
            running -= 1

        q = WorkQueue(work, workers=4, debounce_seconds=0.01)
        q.start()
        q.add(("ns", "a"))
        await asyncio.wait_for(second.wait(), 5)
        await q.stop()
        return peak, runs

    assert asyncio.run(run()) == (1, 2)


def test_different_keys_are_worked_concurrently() -> None:
    async def run() -> int:
        running = peak = 0
        both = asyncio.Event()

        async def work(key: AppKey, full: bool) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if peak == 2:
                both.set()
            await asyncio.sleep(0.1)
            running -= 1

        q = WorkQueue(work, workers=2, debounce_seconds=0.0)
        q.start()
        q.add(("ns", "a"))
        q.add(("ns", "b"))
        await asyncio.wait_for(both.wait(), 5)
        await q.stop()
        return peak

    assert asyncio.run(run()) == 2
