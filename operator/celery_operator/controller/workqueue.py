"""A work queue of app keys (namespace, name): deduplicated, delayed, worked by a bounded pool.

Like client-go's workqueue: a key enqueued many times while waiting is worked once; a key being
worked is not worked by a second worker at the same time, and if enqueued meanwhile it is worked
again afterwards. A full reconcile subsumes a status-only one due at the same time or later, but a
status-only request never pulls a later full one forward: a failed reconcile's backoff holds while
polls keep the statuses current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
AppKey = tuple[str, str]  # (namespace, CeleryApp name): what a reconcile, a poller, a scale-in work on
Work = Callable[[AppKey, bool], Awaitable[None]]  # (key, full)
INF = float("inf")


@dataclass
class WorkQueue:
    work: Work
    workers: int = 16
    debounce_seconds: float = 0.2
    _due: dict[AppKey, tuple[float, float]] = field(default_factory=dict)  # key -> (status-only when, full when)
    _active: set[AppKey] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def add(self, key: AppKey, *, full: bool = True, delay: float | None = None) -> None:
        when = time.monotonic() + (self.debounce_seconds if delay is None else delay)
        status, whole = self._due.get(key, (INF, INF))
        self._due[key] = (status, min(whole, when)) if full else (min(status, when), whole)
        self._wake.set()

    def forget(self, key: AppKey) -> None:
        self._due.pop(key, None)

    def _next(self) -> tuple[AppKey, bool] | float:
        """A due key not being worked (and whether a full reconcile is due), or the seconds until the next."""
        now = time.monotonic()
        soonest = 1.0
        for key, (status, whole) in sorted(self._due.items(), key=lambda kv: min(kv[1])):
            if key in self._active:
                continue
            if whole <= now or (status <= now and whole <= now + self.debounce_seconds):
                del self._due[key]  # a full reconcile writes the statuses too
                return key, True
            if status <= now:
                self._due[key] = (INF, whole)
                if whole == INF:
                    del self._due[key]
                return key, False
            soonest = min(soonest, min(status, whole) - now)
            break
        return soonest

    async def _worker(self) -> None:
        while True:
            got = self._next()
            if isinstance(got, float):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), got)
                continue
            key, full = got
            self._active.add(key)
            try:
                await self.work(key, full)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("working %s/%s failed", *key)
            finally:
                self._active.discard(key)
                self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"reconciler-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
