"""The one interface the operator uses for broker side effects, and its plain inputs/outputs.

Implementations (`rabbitmq.RabbitMQBroker`, `redis.RedisBroker`) are synchronous, put a timeout on
every network call and raise `BrokerUnreachable` when the broker cannot be reached. They never
report zeros for a broker they could not reach: the autoscaler must hold replicas instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

from celery_operator.models import CeleryExchange, CeleryQueue

CONNECT_TIMEOUT_SECONDS = 5.0
IO_TIMEOUT_SECONDS = 10.0

DepthSource = Literal["management", "passive", "redis"]
DeclaredKind = Literal["exchange", "queue", "binding", "policy"]


class BrokerError(Exception):
    """A broker operation failed. Messages never contain passwords."""


class BrokerUnreachable(BrokerError):
    """The broker could not be reached (refused, timed out, authentication failed)."""


@dataclass(frozen=True)
class DeclareResult:
    """The outcome of declaring one exchange, queue or binding.

    `conflict` is True when the broker refused because the object already exists with other
    properties (AMQP 406 PRECONDITION_FAILED); `message` is then the broker's own text.
    For bindings and policies, `name` is the queue and `exchange`/`routing_key` say what it was bound to.
    `reason` (an `api.Reason`) says why when it is not the plain outcome: a policy that could not be
    applied (`ok` False), or a setting the broker ignores (`ok` True: the queue works without it).
    """

    kind: DeclaredKind
    name: str
    ok: bool
    conflict: bool = False
    message: str = ""
    exchange: str | None = None
    routing_key: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int
    in_flight: int | None  # delivered, not yet acknowledged; None when unknown
    consumers: int | None  # None when unknown
    # For the queue wait (waits.py): the oldest ready message's publish time (epoch seconds), None when
    # unknown or unstamped; the broker's measured delivery rate (messages/s), None when it has none.
    oldest_published: float | None = None
    drain_rate: float | None = None


@dataclass(frozen=True)
class DepthReport:
    """Depth of the asked queues, read in one poll.

    `missing` lists asked queues the broker does not have (RabbitMQ only: on Redis an absent queue
    is an empty one). `unattributed_in_flight` is set when in-flight messages were counted only in
    total (Redis, over the attribution bound); `note` then says why. `statistics` is True when the
    report comes from RabbitMQ's statistics listing (consumers, head timestamps, delivery rates).
    """

    source: DepthSource
    queues: dict[str, QueueDepth] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    unattributed_in_flight: int | None = None
    note: str = ""
    statistics: bool = False

    def ready(self, names: Sequence[str] | None = None) -> int:
        return sum(d.ready for n, d in self.queues.items() if names is None or n in names)

    def in_flight(self, names: Sequence[str] | None = None) -> int | None:
        """Sum of in-flight messages, None if unknown for any of the queues."""
        picked = [d for n, d in self.queues.items() if names is None or n in names]
        if any(d.in_flight is None for d in picked):
            return self.unattributed_in_flight
        return sum(d.in_flight or 0 for d in picked) + (self.unattributed_in_flight or 0)


def queue_exchange(q: CeleryQueue) -> str:
    """The exchange a queue is bound to: Celery's implicit direct exchange is named like the queue."""
    return q.exchange if q.exchange is not None else q.name


class Broker(Protocol):
    """Broker side effects. Every method opens at most one connection per call."""

    def declare(self, exchanges: Sequence[CeleryExchange],
                queues: Sequence[CeleryQueue]) -> list[DeclareResult]:
        """Declare exchanges, then queues, then each queue's binding, then the settings that can
        change on a live queue (a RabbitMQ policy per queue; a `policy` result for each queue that
        has such settings). One result per object; a refused object does not stop the rest.
        Raises BrokerUnreachable."""
        ...

    def delete_queue(self, name: str) -> None:
        """Delete a queue (and its messages, and its operator-owned policy). Deleting an absent
        queue is not an error."""
        ...

    def delete_exchange(self, name: str) -> None:
        """Delete an exchange (and its bindings). Deleting an absent exchange is not an error."""
        ...

    def measure(self, queue_names: Sequence[str], count_in_flight: bool = False) -> DepthReport:
        """Depth of the named queues in one poll. In-flight counts come free from RabbitMQ; on
        Redis they cost a read of the unacked hash, so they are only read when asked."""
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> Self:
        ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        ...
