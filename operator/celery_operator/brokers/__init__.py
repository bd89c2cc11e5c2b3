"""Broker side effects: declare exchanges/queues/bindings, delete them, measure queue depth.

`connect(url)` picks the implementation from the URL scheme. Everything is synchronous with a
timeout on every network call; the operator calls it from a thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from celery_operator.brokers.base import (
    Broker,
    BrokerError,
    BrokerUnreachable,
    DeclareResult,
    DepthReport,
    QueueDepth,
)
from celery_operator.brokers.urls import InvalidBrokerUrl, broker_kind, redact

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnreachable",
    "DeclareResult",
    "DepthReport",
    "InvalidBrokerUrl",
    "QueueDepth",
    "connect",
    "redact",
]


def connect(url: str, *, management_url: str | None = None,
            transport_options: Mapping[str, Any] | None = None,
            rabbitmq_stats: Literal["totals", "full"] = "full") -> Broker:
    """A broker client for `url` (amqp://, amqps://, pyamqp://, redis://, rediss://).

    `management_url` is the RabbitMQ management API (resolved by the caller from
    `BrokerSpec.management_url`); `transport_options` are Celery's `broker_transport_options`
    (used on Redis for the key layout). Opens no connection yet.
    """
    if broker_kind(url) == "rabbitmq":
        from celery_operator.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url, management_url, stats=rabbitmq_stats)
    from celery_operator.brokers.redis import RedisBroker

    return RedisBroker(url, transport_options)
