"""The poison-task ledger in the app's Redis (celery_operator.poison): where it is, and reading it.

The workers keep it in the result backend when that is Redis, else in the broker when that is Redis;
with neither, the protection is off (the pool's TasksQuarantined condition says so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions

from celery_operator import poison
from celery_operator.brokers.base import BrokerError

try:
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError
    CONNECTION_ERRORS: tuple[type[Exception], ...] = (KombuError, AMQPError, redis.exceptions.RedisError)
except ImportError:  # pragma: no cover - both come with kombu
    CONNECTION_ERRORS = (redis.exceptions.RedisError,)

REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")


def ledger_url(broker_url: str | None, backend_url: str | None) -> str | None:
    """The Redis URL the workers keep the ledger in, or None when neither is Redis."""
    for url in (backend_url, broker_url):
        if url and url.startswith(REDIS_SCHEMES):
            return url
    return None


def _client(url: str) -> Any:
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10, retry_on_timeout=False,
                                health_check_interval=0)


def read_quarantine(url: str) -> dict[str, bytes]:
    """Task id -> quarantine record (JSON, as the worker wrote it)."""
    try:
        with _client(url) as c:
            raw = c.hgetall(poison.QUARANTINE_KEY)
    except (redis.exceptions.RedisError, OSError) as e:
        raise BrokerError(f"reading the quarantine records: {e}") from e
    return {(k.decode(errors="replace") if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}


def forget(url: str, task_ids: list[str]) -> None:
    """Clear the death counts and quarantine records of `task_ids` (they were replayed or purged)."""
    if not task_ids:
        return
    try:
        with _client(url) as c:
            pipe = c.pipeline()
            pipe.hdel(poison.QUARANTINE_KEY, *task_ids)
            pipe.delete(*(poison.LEDGER_PREFIX + i for i in task_ids))
            pipe.execute()
    except (redis.exceptions.RedisError, OSError) as e:
        raise BrokerError(f"clearing the quarantine records: {e}") from e


def move_back(broker_url: str, transport_options: dict[str, Any] | None, queues: list[str],
              selected: Callable[[dict[str, Any]], bool], purge: bool = False,
              ledger_at: str | None = None) -> list[str]:
    """Put the quarantined messages of `queues` (quarantine queues) that `selected(record)` picks back on
    the queue they came from, unchanged but for the quarantine header, or drop them (`purge`). The others
    stay. The death counts and quarantine record of each (in the ledger at `ledger_at`) are cleared before it
    is published again: a worker that receives it at once must not find it poison. Returns the ids moved.
    Each message is acknowledged in quarantine only once it is published again (RabbitMQ and Redis alike:
    the ones not picked go back when the channel closes, unacknowledged). On RabbitMQ "published" means
    confirmed, whatever the app's confirm_publish: a quorum queue can drop, without an error, the last
    messages a channel sent before it closed (config/celeryconfig.py, `confirms_publishes`), and these are
    acknowledged in quarantine already (kombu's Redis transport ignores the option)."""
    from kombu.connection import Connection
    from kombu.entity import Queue

    moved: list[str] = []
    try:
        options = {**(transport_options or {}), "confirm_publish": True}
        connection = Connection(broker_url, transport_options=options,  # type: ignore[no-untyped-call]
                                connect_timeout=10)
        with connection as conn:
            for name in queues:
                channel = conn.channel()
                try:
                    queue = Queue(name, durable=True, auto_delete=False)(channel)  # type: ignore[no-untyped-call]
                    queue.declare()  # type: ignore[no-untyped-call] # as the workers declare it: a queue nobody quarantined into yet is empty
                    producer = conn.Producer(channel)
                    for _ in range(100_000):
                        message = queue.get(no_ack=False)  # type: ignore[no-untyped-call]
                        if message is None:
                            break
                        headers = dict(message.headers or {})
                        record = poison.load_entry(headers.get(poison.QUARANTINE_HEADER)) or {}
                        if not selected(record):
                            continue  # left unacknowledged: back in quarantine when the channel closes
                        headers.pop(poison.QUARANTINE_HEADER, None)
                        task_id = str(record.get("id") or headers.get("id") or "")
                        if ledger_at is not None and task_id:
                            forget(ledger_at, [task_id])
                        if not purge:
                            source = str(record.get("queue") or name.removesuffix(poison.QUARANTINE_SUFFIX))
                            props = {k: message.properties[k] for k in ("correlation_id", "reply_to", "priority",
                                                                         "timestamp", "message_id", "type", "app_id")
                                     if message.properties.get(k) is not None}
                            producer.publish(message.body, exchange="", routing_key=source, headers=headers,
                                             content_type=message.content_type,
                                             content_encoding=message.content_encoding, delivery_mode=2, **props)
                        message.ack()
                        moved.append(task_id)
                finally:
                    channel.close()
    except (OSError, *CONNECTION_ERRORS) as e:  # type: ignore[misc]
        raise BrokerError(f"moving quarantined tasks: {e}") from e
    return moved
