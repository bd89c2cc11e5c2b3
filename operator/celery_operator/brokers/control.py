"""Celery's remote control over an app's broker: what each worker holds, and stopping or restarting
its consumers. Used only while a pool scales in (`controller/scalein_executor.py`): nothing between scale-ins.

Every command goes to named workers (`destination`: their node names), so a call returns as soon as
all of them answered, or after `timeout` for those that did not. The operator speaks as the app's
workers expect: the control exchange, serializer and broker transport options of the app's `config`
(e.g. Redis' `global_keyprefix`). It never accepts pickle: an app whose workers reply in pickle gets
no answers, and the scale-in falls back to the ReplicaSet's choice.

Synchronous, like the rest of brokers/: the operator calls it from a thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from celery_operator.brokers.base import CONNECT_TIMEOUT_SECONDS, BrokerUnreachable
from celery_operator.brokers.urls import redact
from celery_operator.scalein import Load

REPLY_TIMEOUT_SECONDS = 2.0
# Settings of the app's `config` that shape the remote-control conversation.
CONTROL_SETTINGS = ("control_exchange", "control_queue_ttl", "control_queue_expires", "control_queue_exclusive",
                    "control_queue_durable", "broker_use_ssl", "broker_login_method")
UNSAFE_CONTENT = frozenset({"pickle", "application/x-python-serialize"})


def control_config(app_config: Mapping[str, Any], transport_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator's Celery settings for talking to the app's workers."""
    conf = {k: app_config[k] for k in CONTROL_SETTINGS if k in app_config}
    serializer = str(app_config.get("task_serializer") or "json")
    accept = [c for c in app_config.get("accept_content") or ["json"] if c not in UNSAFE_CONTENT]
    conf.update(
        task_serializer=serializer if serializer not in UNSAFE_CONTENT else "json",
        accept_content=accept or ["json"],
        broker_transport_options=dict(transport_options or {}),
        broker_connection_timeout=CONNECT_TIMEOUT_SECONDS,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_pool_limit=1,
    )
    return conf


def loads_of(active: Mapping[str, Any] | None, reserved: Mapping[str, Any] | None) -> dict[str, Load]:
    """Per node, the ids of its running and reserved tasks, from `inspect().active()` and `.reserved()`
    replies. A node missing from either reply is missing from the result (it did not answer)."""
    out: dict[str, Load] = {}
    for node in set(active or {}) & set(reserved or {}):
        out[node] = Load(active=_ids((active or {})[node]), reserved=_ids((reserved or {})[node]))
    return out


def _ids(tasks: Any) -> tuple[str, ...]:
    if not isinstance(tasks, list):
        return ()
    return tuple(str(t.get("id")) for t in tasks if isinstance(t, dict))


class RemoteControl:
    """One broker connection for a scale-in's commands."""

    def __init__(self, url: str, app_config: Mapping[str, Any] | None = None,
                 transport_options: Mapping[str, Any] | None = None, *,
                 timeout: float = REPLY_TIMEOUT_SECONDS) -> None:
        from celery import Celery

        self.timeout = timeout
        self._where = redact(url)
        self.app = Celery("celery-operator", set_as_current=False, broker=url)
        self.app.conf.update(control_config(app_config or {}, transport_options))
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self.app.connection_for_write()
            try:
                conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_SECONDS)
            except Exception as e:  # noqa: BLE001 - kombu raises transport-specific errors
                conn.release()
                raise BrokerUnreachable(f"remote control: cannot connect to {self._where}: {e}") from None
            self._conn = conn
        return self._conn

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn(self._connection())
        except BrokerUnreachable:
            raise
        except Exception as e:  # noqa: BLE001 - a lost connection surfaces as any kombu/transport error
            self.close()
            raise BrokerUnreachable(f"remote control ({what}) on {self._where}: {e}") from None

    def loads(self, nodes: Sequence[str]) -> dict[str, Load]:
        """What each named worker runs and holds reserved; workers that did not answer are missing."""
        if not nodes:
            return {}
        dest = list(nodes)

        def ask(conn: Any) -> dict[str, Load]:
            inspect = self.app.control.inspect(destination=dest, timeout=self.timeout, connection=conn)
            return loads_of(inspect.active(), inspect.reserved())

        return dict(self._call("inspect", ask))

    def cancel_consumers(self, queues: Iterable[str], nodes: Sequence[str]) -> set[str]:
        """Stop the named workers consuming `queues` (they finish what they hold); the nodes that
        confirmed every queue."""
        return self._consumers("cancel_consumer", queues, nodes)

    def add_consumers(self, queues: Iterable[str], nodes: Sequence[str]) -> set[str]:
        """Make the named workers consume `queues` again (as configured); the nodes that confirmed."""
        return self._consumers("add_consumer", queues, nodes)

    def _consumers(self, command: str, queues: Iterable[str], nodes: Sequence[str]) -> set[str]:
        confirmed = set(nodes)
        for queue in queues:
            def send(conn: Any, queue: str = queue) -> Any:
                return self.app.control.broadcast(command, arguments={"queue": queue}, destination=list(nodes),
                                                  reply=True, timeout=self.timeout, connection=conn)

            replies = self._call(command, send) or []
            answered = {node for reply in replies if isinstance(reply, dict) for node in reply}
            confirmed &= answered
        return confirmed

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            finally:
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
