"""A poll that raises (a bug, not a broker failure) is logged and counted, and the poller goes on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from celery_operator.controller import poller as poller_module
from celery_operator.controller.poller import Poller
from celery_operator.controller.state import AppState
from celery_operator.metrics import OperatorMetrics


def test_a_poll_that_raises_is_logged_and_counted_and_polling_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics()
    p = Poller(client=None, cache=None, recorder=None, metrics=metrics,  # type: ignore[arg-type]
               after_poll=lambda key, full: None)
    monkeypatch.setattr(poller_module, "poll_interval", lambda topo: 0.0)
    polls = 0
    fourth = asyncio.Event()

    async def poll(key: Any, state: AppState) -> None:
        nonlocal polls
        polls += 1
        if polls == 4:
            fourth.set()
        if polls <= 2:
            raise RuntimeError(f"bug {polls}")

    monkeypatch.setattr(p, "poll", poll)

    def errors() -> float | None:
        return metrics.registry.get_sample_value("celery_operator_poller_errors_total",
                                                 {"namespace": "ns", "app": "proj"})

    async def run() -> float | None:
        task = asyncio.create_task(p.run(("ns", "proj"), AppState(uid="u")))
        await asyncio.wait_for(fourth.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return errors()

    with caplog.at_level(logging.ERROR, logger=poller_module.__name__):
        assert asyncio.run(run()) == 2
    failures = [r for r in caplog.records if r.getMessage() == "polling ns/proj failed"]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["bug 1", "bug 2"]


def test_an_app_whose_polls_never_raised_exports_zero_poller_errors() -> None:
    metrics = OperatorMetrics()
    p = Poller(client=None, cache=None, recorder=None, metrics=metrics,  # type: ignore[arg-type]
               after_poll=lambda key, full: None)

    async def run() -> None:
        task = asyncio.create_task(p.run(("ns", "proj"), AppState(uid="u")))  # no topology: nothing to poll
        await asyncio.sleep(0)  # the poller starts, polls nothing and waits for the next poll
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert metrics.registry.get_sample_value("celery_operator_poller_errors_total",
                                             {"namespace": "ns", "app": "proj"}) == 0
