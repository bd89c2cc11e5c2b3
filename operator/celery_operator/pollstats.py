"""PURE: what a poll's reading becomes before any scaling decision.

RabbitMQ's live message totals carry no consumer counts, head timestamps or delivery rates; its
statistics listing does, but lags, so the poller lists statistics only every so often and carries the
last listing over to the polls between (`merge`). A queue RabbitMQ has not yet collected statistics for
(it does every `collect_statistics_interval`, 5 s by default; a queue declared a moment ago is listed by
name only) leaves the listing incomplete, and the next one comes `INCOMPLETE_RETRY_SECONDS` later instead
of after the usual refresh: a new app's consumer counts show within seconds, not half a minute.

Each queue's wait follows from that (`waits`), with drain meters for brokers that count nothing (Redis).
Values in, values out: the poller keeps what is returned in the app's state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from celery_operator.brokers.base import DepthReport, QueueDepth
from celery_operator.waits import DrainMeter, Wait, queue_wait

# RabbitMQ's default statistics interval: by then a new queue's statistics have been collected.
INCOMPLETE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Statistics:
    """The last statistics listing: when (monotonic seconds), each queue's consumers, RabbitMQ's
    per-queue statistics (head timestamp, delivery rate) when the listing had them, and whether it had
    every queue's."""

    at: float = float("-inf")
    consumers: Mapping[str, int | None] = field(default_factory=dict)
    queues: Mapping[str, QueueDepth] = field(default_factory=dict)
    complete: bool = True

    def due(self, now: float, refresh: float) -> bool:
        """Whether this poll lists statistics again: `refresh` seconds after a complete listing, sooner
        after one that lacked a queue's statistics."""
        return now - self.at >= (refresh if self.complete else min(refresh, INCOMPLETE_RETRY_SECONDS))


def merge(last: Statistics, report: DepthReport, fresh: bool, now: float) -> tuple[DepthReport, Statistics]:
    """The poll's report with what its live totals lack taken from the last listing, and the listing to
    keep. A fresh report (a statistics listing) becomes the listing kept. A queue found empty forgets its
    head timestamp: that message is gone."""
    if fresh:
        complete = not report.statistics or all(d.consumers is not None for d in report.queues.values())
        return report, Statistics(now, {n: d.consumers for n, d in report.queues.items()},
                                  dict(report.queues) if report.statistics else {}, complete)
    kept = dict(last.queues)
    queues = {}
    for n, d in report.queues.items():
        if d.consumers is None:
            d = dataclasses.replace(d, consumers=last.consumers.get(n))
        prev = kept.get(n)
        if prev is not None and d.ready == 0:
            kept[n] = prev = dataclasses.replace(prev, oldest_published=None)
        if prev is not None and report.source == "management":
            d = dataclasses.replace(
                d, oldest_published=d.oldest_published if d.oldest_published is not None else prev.oldest_published,
                drain_rate=d.drain_rate if d.drain_rate is not None else prev.drain_rate)
        queues[n] = d
    return dataclasses.replace(report, queues=queues), dataclasses.replace(last, queues=kept)


def waits(drains: Mapping[str, DrainMeter], report: DepthReport, now: float,
          mono: float) -> tuple[dict[str, Wait | None], dict[str, DrainMeter]]:
    """Each queue's wait (waits.py) at wall-clock `now`, and the drain meters moved on to monotonic `mono`.
    A queue the broker does not have waits nothing."""
    meters = dict(drains)
    out: dict[str, Wait | None] = {}
    for n, d in report.queues.items():
        meter = meters[n] = meters.get(n, DrainMeter()).observe(mono, d.ready)
        rate = d.drain_rate if d.drain_rate is not None else meter.rate
        out[n] = queue_wait(d.ready, d.oldest_published, rate, now)
    out.update(dict.fromkeys(report.missing, Wait(0.0, None)))
    return out, meters
