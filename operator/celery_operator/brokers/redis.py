"""Redis side effects, laid out exactly as kombu's Redis transport lays out its keys.

Key layout (kombu/transport/redis.py), every key prefixed with `global_keyprefix`:

* a queue is one list per priority step: `queue` for step 0, `queue<sep><step>` for the others
  (`priority_steps` default [0, 3, 6, 9], `sep` default '\\x06\\x16');
* a binding is a member `routing_key<sep>pattern<sep>queue` of the set `_kombu.binding.<exchange>`
  (pattern: the regex of a topic binding, empty otherwise); kombu >= 5.7 also keeps the member in
  `_kombu.binding_permanent.<exchange>` so its sweep of expiring bindings leaves the table alone.
  Redis keeps no exchange objects: a publisher's channel knows the exchange type itself;
* delivered-but-unacknowledged messages sit in the hash `unacked` (tag -> JSON
  [message, exchange, routing_key]) until acked or restored.

Cost of `measure()`: ready counts are ONE pipelined round trip of LLEN per priority list
(queues x steps commands, O(1) each), with, in the same round trip, LINDEX -1 of each list: its
oldest message (kombu pushes on the left and pops on the right), whose publish timestamp gives the
queue's wait (waits.py); that transfers one message per non-empty list and poll. In-flight counts
(only when asked) add HLEN of `unacked` to that same round trip; the hash does not record the
queue, so attributing entries means fetching every value (the full message bodies: O(total unacked
bytes)) and resolving exchange/routing key through the binding tables, as kombu does when it
restores them. That read is capped at `unacked_attribution_limit` entries (default 10,000): above
it, only the HLEN total is reported, as `unattributed_in_flight`, with a note saying so.
"""

from __future__ import annotations

import contextlib
import json
import re
from bisect import bisect
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, cast

import redis
import redis.exceptions
from kombu.transport.virtual.exchange import TopicExchange

from celery_operator import api
from celery_operator.brokers.base import (
    CONNECT_TIMEOUT_SECONDS,
    IO_TIMEOUT_SECONDS,
    BrokerError,
    BrokerUnreachable,
    DeclareResult,
    DepthReport,
    QueueDepth,
    queue_exchange,
)
from celery_operator.brokers.urls import parse_redis, redact
from celery_operator.models import CeleryExchange, CeleryQueue
from celery_operator.topology import policy_fields
from celery_operator.waits import published_at

DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
DEFAULT_SEP = "\x06\x16"
BINDING_KEY = "_kombu.binding.%s"
BINDING_PERMANENT_KEY = "_kombu.binding_permanent.%s"
UNACKED_KEY = "unacked"
UNACKED_ATTRIBUTION_LIMIT = 10_000
REDIS_EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout"})


def topic_pattern(routing_key: str) -> str:
    """The regex kombu's TopicExchange stores for a topic binding key (`*` one word, `#` any)."""
    return str(cast(Any, TopicExchange)(None).key_to_pattern(routing_key))


class RedisBroker:
    """`transport_options` are Celery's `broker_transport_options`: `priority_steps`, `sep`,
    `global_keyprefix` and `unacked_key` are honoured."""

    def __init__(self, url: str, transport_options: Mapping[str, Any] | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 io_timeout: float = IO_TIMEOUT_SECONDS,
                 unacked_attribution_limit: int = UNACKED_ATTRIBUTION_LIMIT) -> None:
        opts = dict(transport_options or {})
        self.url = parse_redis(url)
        self.priority_steps = tuple(sorted(int(s) for s in opts.get("priority_steps")
                                           or DEFAULT_PRIORITY_STEPS))
        self.sep = str(opts.get("sep") or DEFAULT_SEP)
        self.prefix = str(opts.get("global_keyprefix") or "")
        self.unacked_key = self.prefix + str(opts.get("unacked_key") or UNACKED_KEY)
        self.unacked_attribution_limit = unacked_attribution_limit
        self._where = redact(url)
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=io_timeout,
            retry_on_timeout=False, health_check_interval=0)

    def __repr__(self) -> str:
        return f"RedisBroker({self._where!r})"

    # -- key names (kombu's) ----------------------------------------------------------------------

    def priority_lists(self, queue: str) -> list[str]:
        """Every list key kombu may hold messages of `queue` in (its `_q_for_pri` per step)."""
        return [self.prefix + (f"{queue}{self.sep}{step}" if step else queue)
                for step in self.priority_steps]

    def list_for_priority(self, queue: str, priority: int) -> str:
        steps = self.priority_steps
        step = steps[bisect(steps, priority) - 1]
        return self.prefix + (f"{queue}{self.sep}{step}" if step else queue)

    def binding_member(self, routing_key: str, exchange_type: str, queue: str) -> str:
        pattern = topic_pattern(routing_key) if exchange_type == "topic" else ""
        return self.sep.join([routing_key or "", pattern, queue])

    # -- side effects -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.AuthenticationError, OSError) as e:
            raise BrokerUnreachable(f"{what} on {self._where}: {e}") from None
        except redis.exceptions.RedisError as e:
            raise BrokerError(f"{what} on {self._where}: {e}") from None

    def declare(self, exchanges: Sequence[CeleryExchange],
                queues: Sequence[CeleryQueue]) -> list[DeclareResult]:
        """Record each queue's binding as kombu does; exchanges and queues themselves have no
        state on Redis (lists appear with the first message), so they always declare.
        Queue TTL, max length and dead-lettering do not exist on Redis: a queue that sets them
        gets a `policy` result that says they have no effect (`ok`: the queue itself works)."""
        types = {x.name: x.type for x in exchanges}
        results: list[DeclareResult] = []
        for x in exchanges:
            if x.type in REDIS_EXCHANGE_TYPES:
                results.append(DeclareResult(kind="exchange", name=x.name, ok=True))
            else:
                results.append(DeclareResult(
                    kind="exchange", name=x.name, ok=False,
                    message=f"kombu's Redis transport has no {x.type!r} exchanges"))
        results += [DeclareResult(kind="queue", name=q.name, ok=True) for q in queues]
        pipe = self._client.pipeline(transaction=False)
        bound: list[DeclareResult] = []
        for q in queues:
            ex = queue_exchange(q)
            if not ex:  # kombu's anonymous exchange routes by queue name: nothing to record
                bound.append(DeclareResult(kind="binding", name=q.name, ok=True, exchange="",
                                           routing_key=q.name, message="default exchange"))
                continue
            ex_type = types.get(ex, "direct")  # kombu's default for an exchange it doesn't know
            if ex_type not in REDIS_EXCHANGE_TYPES:
                results.append(DeclareResult(
                    kind="binding", name=q.name, ok=False, exchange=ex, routing_key=q.routing_key,
                    message=f"cannot bind to {ex_type!r} exchange {ex!r} on Redis"))
                continue
            member = self.binding_member(q.routing_key, ex_type, q.name)
            pipe.sadd(self.prefix + BINDING_KEY % ex, member)
            pipe.sadd(self.prefix + BINDING_PERMANENT_KEY % ex, member)
            bound.append(DeclareResult(kind="binding", name=q.name, ok=True, exchange=ex,
                                       routing_key=q.routing_key))
        with self._io("recording bindings"):
            pipe.execute()
        return results + bound + [_ignored_settings(q) for q in queues if policy_fields(q)]

    def delete_queue(self, name: str) -> None:
        """Delete the queue's priority lists and every binding member that names it."""
        with self._io(f"deleting queue {name!r}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(*self.priority_lists(name))
            for key in self._binding_keys():
                for member in cast(set[bytes], self._client.smembers(key)):
                    text = member.decode(errors="replace") if isinstance(member, bytes) else member
                    if text.rsplit(self.sep, 1)[-1] == name:
                        pipe.srem(key, member)
            pipe.execute()

    def delete_exchange(self, name: str) -> None:
        with self._io(f"deleting exchange {name!r}"):
            self._client.delete(self.prefix + BINDING_KEY % name,
                                self.prefix + BINDING_PERMANENT_KEY % name)

    def _binding_keys(self) -> list[bytes]:
        keys: list[bytes] = []
        for pattern in (BINDING_KEY, BINDING_PERMANENT_KEY):
            match = _glob_escape(self.prefix + pattern % "") + "*"
            keys += list(self._client.scan_iter(match=match, count=1000))
        return keys

    # -- depth ------------------------------------------------------------------------------------

    def measure(self, queue_names: Sequence[str], count_in_flight: bool = False) -> DepthReport:
        names = list(dict.fromkeys(queue_names))
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            for key in self.priority_lists(name):
                pipe.llen(key)
                pipe.lindex(key, -1)  # kombu LPUSHes and BRPOPs: the oldest message is the last
        if count_in_flight:
            pipe.hlen(self.unacked_key)
        with self._io("measuring queue depth"):
            replies = pipe.execute()
        n = 2 * len(self.priority_steps)
        per_queue = {name: replies[i * n:(i + 1) * n] for i, name in enumerate(names)}
        ready = {name: sum(int(r) for r in got[0::2]) for name, got in per_queue.items()}
        oldest = {name: _oldest_published(got[0::2], got[1::2]) for name, got in per_queue.items()}
        in_flight: dict[str, int] | None = None
        unattributed: int | None = None
        note = ""
        if count_in_flight:
            total = int(replies[-1])
            if total == 0:
                in_flight = dict.fromkeys(names, 0)
            elif total > self.unacked_attribution_limit:
                unattributed = total
                note = (f"{total} unacked messages exceed the attribution limit "
                        f"{self.unacked_attribution_limit}: in-flight reported as a total only")
            else:
                in_flight = self._attribute_unacked(names)
        return DepthReport(
            source="redis",
            queues={name: QueueDepth(name=name, ready=ready[name],
                                     in_flight=None if in_flight is None else in_flight[name],
                                     consumers=None, oldest_published=oldest[name])
                    for name in names},
            unattributed_in_flight=unattributed,
            note=note,
        )

    def _attribute_unacked(self, names: list[str]) -> dict[str, int]:
        """Count unacked entries per queue: each holds [message, exchange, routing_key]; the
        queue is the one kombu would restore it to (the exchange's bindings, or the routing key
        for the default exchange)."""
        with self._io("reading unacked messages"):
            values = cast(list[bytes], self._client.hvals(self.unacked_key))
        targets: dict[tuple[str, str], int] = {}
        for raw in values:
            try:
                _msg, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            k = (str(exchange or ""), str(routing_key or ""))
            targets[k] = targets.get(k, 0) + 1
        exchanges = sorted({ex for ex, _ in targets if ex})
        tables: dict[str, list[tuple[str, str, str]]] = {}
        if exchanges:
            pipe = self._client.pipeline(transaction=False)
            for ex in exchanges:
                pipe.smembers(self.prefix + BINDING_KEY % ex)
            with self._io("reading bindings"):
                for ex, members in zip(exchanges, pipe.execute(), strict=True):
                    rows = []
                    for m in members:
                        text = m.decode(errors="replace") if isinstance(m, bytes) else str(m)
                        parts = text.split(self.sep)
                        if len(parts) == 3:
                            rows.append((parts[0], parts[1], parts[2]))
                    tables[ex] = rows
        counts = dict.fromkeys(names, 0)
        for (ex, rk), count in targets.items():
            for queue in _route(tables.get(ex), ex, rk):
                if queue in counts:
                    counts[queue] += count
        return counts

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _ignored_settings(q: CeleryQueue) -> DeclareResult:
    fields = ", ".join(policy_fields(q))
    return DeclareResult(
        kind="policy", name=q.name, ok=True, reason=api.Reason.UNSUPPORTED_BY_BROKER,
        message=f"{fields} have no effect on a Redis broker (kombu's Redis transport has no queue TTL, "
                "length limit or dead-lettering): remove them from the CeleryQueue, or use RabbitMQ")


def _oldest_published(lengths: Sequence[Any], tails: Sequence[Any]) -> float | None:
    """The publish time of a queue's oldest message over its priority lists (each list's tail): None
    when a non-empty list's oldest message carries no timestamp (then nothing says which is oldest)."""
    stamps = []
    for length, raw in zip(lengths, tails, strict=True):
        if not int(length) or raw is None:
            continue
        try:
            stamp = published_at(json.loads(raw).get("properties", {}).get("timestamp"))
        except (ValueError, TypeError, AttributeError):
            stamp = None
        if stamp is None:
            return None
        stamps.append(stamp)
    return min(stamps) if stamps else None


def _route(table: list[tuple[str, str, str]] | None, exchange: str, routing_key: str) -> set[str]:
    """The queues a message with this exchange/routing key goes to (kombu's exchange lookup,
    without knowing the exchange type: a stored topic pattern must match, else the key must be
    equal; so a fanout exchange's unacked messages are only attributed on an exact key match)."""
    if not exchange:
        return {routing_key}
    queues: set[str] = set()
    for rk, pattern, queue in table or []:
        if pattern:
            with contextlib.suppress(re.error):
                if re.match(pattern, routing_key):
                    queues.add(queue)
        elif rk == routing_key:
            queues.add(queue)
    return queues


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)
