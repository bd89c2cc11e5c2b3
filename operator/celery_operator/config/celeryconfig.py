"""The generated Celery config: plain JSON data the bootstrap module turns into Celery settings.

Keys are Celery setting names, except `exchanges` (the exchange declarations `task_queues` refer
to by name), `metrics_labels` (the app's namespace and name, which every task metric carries) and
`beat_entries` (per beat entry, what only the operator's scheduler reads: its catch-up deadline).
An app with Flower gets task events on (`worker_send_task_events`, `task_send_sent_event`). A RabbitMQ
app with a quorum queue publishes with confirms (`broker_transport_options.confirm_publish`, see
`confirms_publishes`).
The user's `spec.config` is the base; the operator's keys override it, and `broker_url`/
`result_backend` are dropped from it (they come from Secrets through the environment).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from celery_operator import api, poison
from celery_operator.config.bootstrap import module_sources
from celery_operator.cron import parse_cron
from celery_operator.models import BeatEntry
from celery_operator.topology import ExchangeDecl, QueueDecl, Topology

Config = dict[str, Any]

# Settings whose values reach pods through Secrets, never through the ConfigMap.
SECRET_SETTINGS = ("broker_url", "result_backend", "broker_read_url", "broker_write_url")


def exchange_data(e: ExchangeDecl) -> dict[str, Any]:
    return {"name": e.name, "type": e.type, "durable": e.durable, "auto_delete": e.auto_delete,
            "arguments": dict(e.arguments)}


def queue_data(q: QueueDecl) -> dict[str, Any]:
    return {"name": q.name, "exchange": q.exchange.name, "exchange_type": q.exchange.type,
            "routing_key": q.routing_key, "durable": q.durable, "auto_delete": q.auto_delete,
            "queue_arguments": dict(q.arguments)}


def beat_entry_data(entry: BeatEntry) -> dict[str, Any]:
    if entry.cron is not None:
        fields = parse_cron(entry.cron)
        if fields is None:  # Topology.beat_entries never lets one through
            raise ValueError(f"entry {entry.name!r}: bad cron {entry.cron!r}")
        schedule: dict[str, Any] = {"cron": {
            "minute": fields.minute, "hour": fields.hour, "day_of_month": fields.day_of_month,
            "month_of_year": fields.month_of_year, "day_of_week": fields.day_of_week}}
    else:
        schedule = {"every_seconds": entry.every_seconds}
    options: dict[str, Any] = {}
    if entry.queue is not None:
        options["queue"] = entry.queue
    if entry.priority is not None:
        options["priority"] = entry.priority
    if entry.expires_seconds is not None:
        options["expires"] = entry.expires_seconds
    return {"task": entry.task, "schedule": schedule, "args": list(entry.args),
            "kwargs": dict(entry.kwargs), "options": options}


def confirms_publishes(topology: Topology) -> bool:
    """Whether the app's producers wait for RabbitMQ's confirm of each publish: a RabbitMQ app with a
    quorum queue does. Without confirms, RabbitMQ (3.10.8 here) drops the last messages a channel sent to a
    quorum queue when the channel ends before the queue has taken them: the queue queues a channel's
    messages at low priority and handles the channel's end first, after which they are out of sequence and
    dropped without an error. A producer that exits or closes its connection right after a burst loses
    its tail (bench/quorum_publish.py). A confirmed publish has been taken. Classic queues take a channel's
    messages in order and are left at Celery's default (no confirms)."""
    return topology.broker_kind != "redis" and any(
        q.arguments.get("x-queue-type") == "quorum" for q in topology.declared_queues)


def celery_config(topology: Topology, broker_transport_options: dict[str, Any] | None = None) -> Config:
    """The JSON-serialisable Celery config of one app."""
    app = topology.app
    config: Config = {k: v for k, v in copy.deepcopy(app.config).items() if k not in SECRET_SETTINGS}
    if broker_transport_options:
        config["broker_transport_options"] = {**config.get("broker_transport_options", {}),
                                              **broker_transport_options}
    if confirms_publishes(topology) and isinstance(config.get("broker_transport_options", {}), dict):
        # The user's spec.config.broker_transport_options.confirm_publish, when given, wins.
        config["broker_transport_options"] = {"confirm_publish": True, **config.get("broker_transport_options", {})}
    given_routes = config.get("task_routes")
    user_routes: dict[str, Any] = given_routes if isinstance(given_routes, dict) else {}
    default = topology.declared_queue(app.default_queue)
    assert default is not None  # the default queue is always declared
    config.update({
        "imports": list(app.imports),
        "task_default_queue": app.default_queue,
        "task_default_exchange": default.exchange.name,
        "task_default_exchange_type": default.exchange.type,
        "task_default_routing_key": default.routing_key,
        "exchanges": [exchange_data(e) for e in topology.declared_exchanges],
        "task_queues": [queue_data(q) for q in topology.declared_queues],
        "task_routes": {**user_routes,
                        **{pattern: {"queue": q} for pattern, q in topology.task_routes().items()}},
        "beat_schedule": {entry.name: beat_entry_data(entry) for _, entry in topology.beat_entries},
        api.CONFIG_BEAT_ENTRIES_KEY: {entry.name: {"starting_deadline_seconds": entry.starting_deadline_seconds}
                                      for _, entry in topology.beat_entries},
        "timezone": topology.timezone,
        "broker_connection_retry_on_startup": True,
        api.CONFIG_METRICS_LABELS_KEY: {"namespace": app.meta.namespace, "app": app.meta.name},
    })
    # Only the queues whose quarantine queue is not the default <queue>.quarantine (the workers' fallback), so
    # an app that chose none has the config it had before the setting existed (no rollout on upgrade).
    chosen = {q: target for q, target in topology.quarantine_queues.items() if target != poison.quarantine_queue(q)}
    if chosen:
        config[api.CONFIG_QUARANTINE_QUEUES_KEY] = chosen
    if app.flower.enabled:
        # Flower knows workers and tasks from events: every worker sends them (-E) and producers send
        # task-sent. The cost: 3-4 small messages per task on the celeryev exchange, which Flower consumes.
        config.update({"worker_send_task_events": True, "task_send_sent_event": True})
    return config


def config_json(config: Config) -> str:
    """The ConfigMap text of a config: canonical (sorted keys) so equal configs are equal bytes."""
    return json.dumps(config, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def config_hash(config: Config) -> str:
    """sha256 of the canonical config and the modules' sources: changes when pods must restart."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256()
    digest.update(canonical.encode())
    for source in module_sources().values():
        digest.update(b"\0")
        digest.update(source.encode())
    return digest.hexdigest()
