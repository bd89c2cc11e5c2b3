"""PURE: how long a queue's tasks wait before a worker takes them.

Depth says how much work waits, not for how long: 2,000 tasks of 10 ms wait less than 20 of a
minute. Per queue, whichever of these the broker can give, in this order:

* `timestamp`: the age of the oldest ready message, from its publish time. The bootstrap module
  stamps the AMQP `timestamp` property on every task the app's producers, workers and beat publish
  (`before_task_publish`; a timestamp set by the producer itself is kept). RabbitMQ reports the
  head's for a classic queue (`head_message_timestamp`, whole seconds, from its statistics database:
  refreshed every `collect_statistics_interval`, 5 s by default); on Redis the operator reads the
  oldest message of each priority list (`LINDEX key -1`) in the depth round trip.
* `drain_rate`: depth / the rate messages leave the queue, where the oldest message carries no
  timestamp (a producer that does not load the generated config; a quorum queue, for which RabbitMQ
  keeps no head timestamp). The rate is RabbitMQ's own (`message_stats.deliver_get_details.rate`),
  or, on Redis (which counts nothing), the rate the ready count fell between polls, smoothed: a lower
  bound while messages also arrive, so the wait is overestimated rather than missed.

An empty queue waits 0. Anything else is unknown, which the autoscaler treats as missing data.
The clocks of producers and operator must agree (NTP): a wait is the operator's now minus the
producer's publish time, never below 0.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

WaitSource = Literal["timestamp", "drain_rate"]
WAIT_SOURCES: tuple[WaitSource, ...] = ("timestamp", "drain_rate")
DRAIN_SMOOTHING = 0.5  # weight of the newest sample in the Redis drain-rate average


@dataclass(frozen=True)
class Wait:
    seconds: float
    source: WaitSource | None  # None: the queue is empty

    def describe(self) -> str:
        if self.source is None:
            return "no task waits"
        how = "oldest task's publish time" if self.source == "timestamp" else "depth / drain rate"
        return f"tasks wait {self.seconds:.0f}s ({how})"


def queue_wait(ready: int, oldest_published: float | None, drain_rate: float | None, now: float) -> Wait | None:
    """A queue's wait: 0 when empty, else from the oldest message's publish time, else from its drain
    rate; None when neither is known."""
    if ready <= 0:
        return Wait(0.0, None)
    if oldest_published is not None:
        return Wait(max(0.0, now - oldest_published), "timestamp")
    if drain_rate is not None and drain_rate > 0:
        return Wait(ready / drain_rate, "drain_rate")
    return None


def longest(waits: Iterable[Wait | None]) -> Wait | None:
    """A pool's wait: its queues' longest. One unknown queue makes it unknown (a partial answer could
    look shorter than the truth, and scale the pool down)."""
    out = Wait(0.0, None)
    for w in waits:
        if w is None:
            return None
        if w.seconds > out.seconds or (out.source is None and w.source is not None):
            out = w
    return out


def published_at(value: Any) -> float | None:
    """A message's `timestamp` property as epoch seconds: a number (AMQP's, whole seconds), a datetime
    (py-amqp decodes it so), kombu's JSON form of one on Redis (`{"__type__": "datetime", ...}`) or an
    ISO 8601 string (older kombu). None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict) and value.get("__type__") == "datetime":
        value = value.get("__value__")
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return float(value.timestamp())
    return None


@dataclass(frozen=True)
class DrainMeter:
    """The rate a queue's ready count fell between polls, for brokers that count nothing (Redis)."""

    at: float | None = None
    ready: int = 0
    rate: float | None = None

    def observe(self, now: float, ready: int) -> DrainMeter:
        if self.at is None or now <= self.at:
            return DrainMeter(now, ready, self.rate)
        fell = self.ready - ready
        rate = self.rate
        if fell > 0:
            sample = fell / (now - self.at)
            rate = sample if rate is None else DRAIN_SMOOTHING * sample + (1 - DRAIN_SMOOTHING) * rate
        return DrainMeter(now, ready, rate)
