"""The pure cross-object model of one CeleryApp: which objects are in effect and what is wrong.

A CRD schema checks one object at a time; this module checks what only the whole set can show:
references to exchanges and queues that do not exist, two objects claiming one Celery name, two
schedules claiming one beat entry. Rules:

- Objects are ordered oldest first (creationTimestamp, then metadata.name). Of two queues (or
  exchanges) with one Celery name the older wins; the later gets `DuplicateQueue`
  (`DuplicateExchange`) and is left out of the config.
- The app's default exchange is always declared (Celery declares it with the default queue), as a
  direct exchange unless a CeleryExchange declares it. A queue without `exchange` uses Celery's
  implicit direct exchange named like the queue. A queue naming any other undeclared exchange gets
  `ExchangeNotFound` and is left out.
- The app's default queue always exists (Celery declares it), from a CeleryQueue if one declares it.
  A pool naming an unknown queue gets `QueueNotFound`; it consumes the queues it can. A pool with no
  known queue is not in effect (no worker Deployment).
- A beat entry name already used by an older schedule gets `DuplicateEntry` on the later schedule,
  and that entry (only that one) is dropped. An entry routed to an unknown queue gets `QueueNotFound`
  and is dropped; an entry whose cron is not one (`celery_operator.cron`: the CRD rejects those, but an object
  stored under an older CRD may hold one) gets `InvalidSpec` and is dropped.
- Celery has one timezone per app: the app's `config.timezone` if set, else the oldest schedule's.
  A schedule with another timezone gets `TimezoneConflict`; its entries run in the app's timezone.

Settings that work but bite (warnings: the object stays in effect):
- On a Redis broker, a message not acknowledged within the visibility timeout
  (`broker_transport_options.visibility_timeout`, 3600 s by default) is delivered again. With
  `task_acks_late`, a pool whose `timeLimitSeconds` reaches it gets `VisibilityTimeoutTooShort` (a
  long task runs twice); whatever the ack mode, so does the app when its `maxCountdownSeconds`
  reaches it (a countdown/ETA task waits unacknowledged in a worker until it is due).
- An autoscaled pool with `task_acks_late` and `prefetchMultiplier` other than 1 gets
  `PrefetchHidesBacklog`: each worker reserves messages it cannot start yet, which neither other
  replicas nor new ones can take.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, TypeVar

from celery_operator import api, cron, poison
from celery_operator.models import (
    BeatEntry,
    CeleryApp,
    CeleryBeatSchedule,
    CeleryExchange,
    CeleryQueue,
    CeleryWorkerPool,
    Meta,
)

ObjKey = tuple[str, str]  # (kind, metadata.name)
BrokerKind = Literal["rabbitmq", "redis"]

DEFAULT_TIMEZONE = "UTC"

@dataclass(frozen=True)
class Problem:
    reason: str  # one of api.Reason
    message: str


@dataclass(frozen=True)
class ExchangeDecl:
    """An exchange as Celery and the broker see it; `source` is None when it is implicit."""

    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    source: CeleryExchange | None = None


@dataclass(frozen=True)
class QueueDecl:
    """A queue as Celery and the broker see it; `source` is None for the implicit default queue."""

    name: str
    exchange: ExchangeDecl
    routing_key: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)  # x-* queue arguments
    source: CeleryQueue | None = None


# Which queue settings go where on RabbitMQ. A queue's declare arguments can never change: RabbitMQ
# refuses a redeclare with other arguments (PRECONDITION_FAILED). Settings a policy can carry are
# therefore applied as an operator-owned policy (brokers/rabbitmq.py), which RabbitMQ applies to the
# live queue and its messages; only what no policy can set stays in the declaration (and in the
# generated config, since workers and producers declare the queue too):
# - x-queue-type: fixed at declare time, not a policy key;
# - x-max-priority: fixed at declare time (RabbitMQ does not accept it from policies);
# - durable, auto-delete: declare properties, not arguments.
# message-ttl, max-length, dead-letter-exchange and dead-letter-routing-key are policy keys.


def queue_arguments(q: CeleryQueue) -> dict[str, Any]:
    """The AMQP `x-*` arguments fixed when the queue is declared (names as RabbitMQ spells them)."""
    args: dict[str, Any] = {}
    if q.max_priority is not None:
        args["x-max-priority"] = q.max_priority
    if q.queue_type != "classic":
        args["x-queue-type"] = q.queue_type
    return args


def queue_policy(q: CeleryQueue) -> dict[str, Any]:
    """The settings of a CeleryQueue that can change on a live queue: a RabbitMQ policy definition
    (keys as RabbitMQ spells them). Empty when the queue sets none of them."""
    definition: dict[str, Any] = {}
    if q.message_ttl_seconds is not None:
        definition["message-ttl"] = round(q.message_ttl_seconds * 1000)
    if q.max_length is not None:
        definition["max-length"] = q.max_length
    if q.dead_letter is not None:
        definition["dead-letter-exchange"] = q.dead_letter.exchange
        if q.dead_letter.routing_key is not None:
            definition["dead-letter-routing-key"] = q.dead_letter.routing_key
    return definition


# The spec fields behind each policy key (what a condition names when a policy cannot be applied).
POLICY_FIELDS: dict[str, str] = {
    "message-ttl": "messageTTLSeconds",
    "max-length": "maxLength",
    "dead-letter-exchange": "deadLetter",
    "dead-letter-routing-key": "deadLetter",
}


def policy_fields(q: CeleryQueue) -> list[str]:
    """The spec fields of `q` that are applied as a policy (in spec order, no repeats)."""
    return list(dict.fromkeys(POLICY_FIELDS[k] for k in queue_policy(q)))


class _HasMeta(Protocol):
    @property
    def meta(self) -> Meta: ...


_M = TypeVar("_M", bound=_HasMeta)


def oldest_first(objs: Iterable[_M]) -> list[_M]:
    """Objects in precedence order: older creationTimestamp first, then metadata.name."""
    return sorted(objs, key=lambda o: (o.meta.creation_timestamp, o.meta.name))


@dataclass(frozen=True)
class Topology:
    """One app and the objects that name it (others are dropped by `of`)."""

    app: CeleryApp
    exchanges: Sequence[CeleryExchange] = ()
    queues: Sequence[CeleryQueue] = ()
    pools: Sequence[CeleryWorkerPool] = ()
    schedules: Sequence[CeleryBeatSchedule] = ()
    # What an external broker's URL says it is (the caller reads the Secret); None when unknown.
    external_broker_kind: BrokerKind | None = None

    @classmethod
    def of(
        cls,
        app: CeleryApp,
        exchanges: Iterable[CeleryExchange] = (),
        queues: Iterable[CeleryQueue] = (),
        pools: Iterable[CeleryWorkerPool] = (),
        schedules: Iterable[CeleryBeatSchedule] = (),
        external_broker_kind: BrokerKind | None = None,
    ) -> Topology:
        """Keep only the objects in the app's namespace whose appRef names it, oldest first."""
        name, ns = app.meta.name, app.meta.namespace

        def mine(objs: Iterable[Any]) -> list[Any]:
            return oldest_first(o for o in objs if o.app_name == name and o.meta.namespace == ns)

        return cls(app, tuple(mine(exchanges)), tuple(mine(queues)), tuple(mine(pools)),
                   tuple(mine(schedules)), external_broker_kind)

    @property
    def broker_kind(self) -> BrokerKind | None:
        """RabbitMQ or Redis: from the spec for brokers the operator knows, else from the URL."""
        b = self.app.broker
        if b.managed is not None:
            return b.managed.kind
        if b.rabbitmq_cluster is not None:
            return "rabbitmq"
        return self.external_broker_kind

    # -- analysis (computed once; the dataclass is frozen) --------------------------------------

    @cached_property
    def _found(self) -> dict[ObjKey, list[Problem]]:
        """Problems recorded by the analysis properties (each runs once and adds its own kinds)."""
        return {}

    def _add(self, kind: str, name: str, reason: str, message: str) -> None:
        self._found.setdefault((kind, name), []).append(Problem(reason, message))

    @property
    def _problems(self) -> dict[ObjKey, list[Problem]]:
        _ = self.effective_exchanges, self.effective_queues, self.effective_pools, self.beat_entries
        _ = self.quarantine_queues
        _ = self._settings_checked
        return self._found

    def problems(self) -> dict[ObjKey, list[Problem]]:
        """Problems per object, keyed by (kind, metadata.name); objects without problems absent."""
        return {k: list(v) for k, v in self._problems.items()}

    def problems_of(self, kind: str, name: str) -> list[Problem]:
        return list(self._problems.get((kind, name), []))

    @cached_property
    def effective_exchanges(self) -> list[CeleryExchange]:
        """The CeleryExchanges in effect: the oldest of each Celery name."""
        winners: dict[str, CeleryExchange] = {}
        for ex in self.exchanges:
            first = winners.get(ex.name)
            if first is None:
                winners[ex.name] = ex
                continue
            self._add(api.EXCHANGE, ex.meta.name, api.Reason.DUPLICATE_EXCHANGE,
                      f"exchange {ex.name!r} is already declared by CeleryExchange {first.meta.name!r}")
        return list(winners.values())

    @cached_property
    def _exchange_decls(self) -> dict[str, ExchangeDecl]:
        decls = {
            ex.name: ExchangeDecl(ex.name, ex.type, ex.durable, ex.auto_delete, dict(ex.arguments), ex)
            for ex in self.effective_exchanges
        }
        if self.app.default_exchange not in decls:
            decls[self.app.default_exchange] = ExchangeDecl(self.app.default_exchange, "direct")
        return decls

    @cached_property
    def effective_queues(self) -> list[CeleryQueue]:
        """The CeleryQueues in effect: the oldest of each Celery name, if its exchange exists."""
        winners: dict[str, CeleryQueue] = {}
        for q in self.queues:
            first = winners.get(q.name)
            if first is not None:
                self._add(api.QUEUE, q.meta.name, api.Reason.DUPLICATE_QUEUE,
                          f"queue {q.name!r} is already declared by CeleryQueue {first.meta.name!r}")
                continue
            winners[q.name] = q
        known = self._exchange_decls
        effective = []
        for q in winners.values():
            if q.exchange is not None and q.exchange not in known:
                self._add(api.QUEUE, q.meta.name, api.Reason.EXCHANGE_NOT_FOUND,
                          f"exchange {q.exchange!r} is not declared by any CeleryExchange of app "
                          f"{self.app.meta.name!r}")
                continue
            effective.append(q)
        return effective

    @cached_property
    def declared_queues(self) -> list[QueueDecl]:
        """Every queue Celery declares for this app, the default queue first."""
        decls: dict[str, QueueDecl] = {}
        app = self.app
        by_name = {q.name: q for q in self.effective_queues}
        if app.default_queue not in by_name:
            decls[app.default_queue] = QueueDecl(
                app.default_queue, self._exchange_decls[app.default_exchange], app.default_routing_key)
        for q in self.effective_queues:
            implicit = q.exchange is None
            exchange = ExchangeDecl(q.name, "direct") if implicit else self._exchange_decls[str(q.exchange)]
            decls[q.name] = QueueDecl(q.name, exchange, q.routing_key, q.durable, q.auto_delete,
                                      queue_arguments(q), q)
        if app.default_queue in decls:  # default queue first, whichever way it was declared
            decls = {app.default_queue: decls[app.default_queue],
                     **{k: v for k, v in decls.items() if k != app.default_queue}}
        return list(decls.values())

    @cached_property
    def declared_exchanges(self) -> list[ExchangeDecl]:
        """Every exchange Celery declares: CeleryExchanges, the default one, implicit per-queue ones."""
        decls = dict(self._exchange_decls)
        for q in self.declared_queues:
            decls.setdefault(q.exchange.name, q.exchange)
        return list(decls.values())

    @cached_property
    def queue_names(self) -> list[str]:
        """Names of the queues that exist for Celery (the default queue included)."""
        return [q.name for q in self.declared_queues]

    @cached_property
    def quarantine_queues(self) -> dict[str, str]:
        """Each queue's quarantine queue (poison tasks): its CeleryQueue's spec.quarantineQueue, else
        `<name>.quarantine`, which is also used when the chosen name is a queue the app declares."""
        declared = set(self.queue_names)
        out = {n: poison.quarantine_queue(n) for n in self.queue_names}
        for q in self.effective_queues:
            chosen = q.quarantine_queue
            if chosen is None or q.name not in out:
                continue
            if chosen in declared:
                self._add(api.QUEUE, q.meta.name, api.Reason.QUARANTINE_QUEUE_CONFLICT,
                          f"spec.quarantineQueue {chosen!r} is a queue the app declares, where its poison tasks "
                          f"would run again: they go to {out[q.name]!r} until it names another queue")
                continue
            out[q.name] = chosen
        return out

    def declared_queue(self, name: str) -> QueueDecl | None:
        return next((q for q in self.declared_queues if q.name == name), None)

    def pool_queues(self, pool: CeleryWorkerPool) -> list[str]:
        """The queues a pool's workers consume: the known ones it names, in its order."""
        known = set(self.queue_names)
        return [q for q in dict.fromkeys(pool.queues) if q in known]

    @cached_property
    def effective_pools(self) -> list[CeleryWorkerPool]:
        """Pools that get a worker Deployment: those naming at least one known queue."""
        known = set(self.queue_names)
        effective = []
        for pool in self.pools:
            missing = [q for q in dict.fromkeys(pool.queues) if q not in known]
            if missing:
                self._add(api.POOL, pool.meta.name, api.Reason.QUEUE_NOT_FOUND,
                          f"queue(s) {', '.join(missing)} not declared in app {self.app.meta.name!r}")
            if self.pool_queues(pool):
                effective.append(pool)
        return effective

    def pools_for_queue(self, queue: str) -> list[CeleryWorkerPool]:
        """Effective pools whose workers consume `queue`."""
        return [p for p in self.effective_pools if queue in self.pool_queues(p)]

    @cached_property
    def timezone(self) -> str:
        configured = self.app.config.get("timezone")
        if isinstance(configured, str) and configured:
            return configured
        return self.schedules[0].timezone if self.schedules else DEFAULT_TIMEZONE

    @cached_property
    def beat_entries(self) -> list[tuple[CeleryBeatSchedule, BeatEntry]]:
        """The beat entries in effect, with their schedule, oldest schedule first."""
        known = set(self.queue_names)
        owner: dict[str, str] = {}
        kept: list[tuple[CeleryBeatSchedule, BeatEntry]] = []
        for sched in self.schedules:
            if sched.timezone != self.timezone:
                self._add(api.SCHEDULE, sched.meta.name, api.Reason.TIMEZONE_CONFLICT,
                          f"timezone {sched.timezone!r} differs from the app's {self.timezone!r}; "
                          "entries run in the app's timezone")
            for entry in sched.entries:
                if entry.name in owner:
                    self._add(api.SCHEDULE, sched.meta.name, api.Reason.DUPLICATE_ENTRY,
                              f"entry {entry.name!r} is already defined by CeleryBeatSchedule "
                              f"{owner[entry.name]!r}; this one is ignored")
                    continue
                if entry.queue is not None and entry.queue not in known:
                    self._add(api.SCHEDULE, sched.meta.name, api.Reason.QUEUE_NOT_FOUND,
                              f"entry {entry.name!r} routes to queue {entry.queue!r}, not declared in "
                              f"app {self.app.meta.name!r}; the entry is ignored")
                    continue
                if (entry.cron is None) == (entry.every_seconds is None):
                    self._add(api.SCHEDULE, sched.meta.name, api.Reason.INVALID_SPEC,
                              f"entry {entry.name!r} needs exactly one of cron or everySeconds; the entry "
                              "is ignored")
                    continue
                bad_cron = cron.problem(entry.cron) if entry.cron is not None else None
                if bad_cron is not None:  # stored before the CRD checked it as it does now
                    self._add(api.SCHEDULE, sched.meta.name, api.Reason.INVALID_SPEC,
                              f"entry {entry.name!r}: {bad_cron}; the entry is ignored")
                    continue
                owner[entry.name] = sched.meta.name
                kept.append((sched, entry))
        return kept

    @cached_property
    def _settings_checked(self) -> bool:
        """Record the warnings of settings that work but bite (see the module docstring)."""
        app = self.app
        acks_late = app.acks_late
        if self.broker_kind == "redis":
            vt = app.visibility_timeout_seconds
            fix = (f"raise broker_transport_options.visibility_timeout in CeleryApp {app.meta.name}'s "
                   f"spec.config above it")
            if app.max_countdown_seconds is not None and app.max_countdown_seconds >= vt:
                self._add(api.APP, app.meta.name, api.Reason.VISIBILITY_TIMEOUT_TOO_SHORT,
                          f"maxCountdownSeconds {app.max_countdown_seconds} reaches the Redis broker's "
                          f"visibility_timeout {vt:g} s: a task waiting for its countdown/ETA is delivered "
                          f"again to another worker and runs twice; {fix}, or lower maxCountdownSeconds")
            for pool in self.effective_pools if acks_late else ():
                limit = pool.time_limit_seconds
                if limit is not None and limit >= vt:
                    self._add(api.POOL, pool.meta.name, api.Reason.VISIBILITY_TIMEOUT_TOO_SHORT,
                              f"timeLimitSeconds {limit} reaches the Redis broker's visibility_timeout {vt:g} s "
                              f"with task_acks_late: a task still running then is delivered again to another "
                              f"worker and runs twice; {fix}, or lower timeLimitSeconds")
        for pool in self.effective_pools if acks_late else ():
            if pool.autoscaling is not None and pool.prefetch_multiplier != 1:
                reserved = ("every ready message" if pool.prefetch_multiplier == 0 else
                            f"up to {pool.prefetch_multiplier * pool.concurrency} messages")
                self._add(api.POOL, pool.meta.name, api.Reason.PREFETCH_HIDES_BACKLOG,
                          f"prefetchMultiplier {pool.prefetch_multiplier} with task_acks_late on an autoscaled "
                          f"pool: each worker reserves {reserved} while it runs {pool.concurrency}, so backlog "
                          "waits in busy workers where new replicas cannot take it; set prefetchMultiplier: 1")
        return True

    @property
    def has_beat(self) -> bool:
        """One beat runs per app, when at least one schedule entry is in effect."""
        return bool(self.beat_entries)

    def task_routes(self) -> dict[str, str]:
        """Task name (glob) -> queue, from the effective queues' `tasks` (first claim wins)."""
        routes: dict[str, str] = {}
        for q in self.effective_queues:
            for pattern in q.tasks:
                routes.setdefault(pattern, q.name)
        return routes
