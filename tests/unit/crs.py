"""Fully defaulted custom resources for unit tests (the defaults the CRD schema would apply).

Every factory returns a model built from a CR dict, like the operator sees it after the API server
has defaulted it. `seed()` is the reference topology: app `proj`, exchanges `default`/`task`,
queues `default`, `high_queue`, `low_queue`, one pool per queue and a beat schedule.
"""

from __future__ import annotations

import copy
from typing import Any

from celery_operator import api
from celery_operator.models import (
    CeleryApp,
    CeleryBeatSchedule,
    CeleryExchange,
    CeleryQueue,
    CeleryWorkerPool,
)
from celery_operator.topology import Topology

NS = "team"
APP = "proj"
UID_PREFIX = "00000000-0000-0000-0000-"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def body(kind: str, name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z",
         namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": f"{UID_PREFIX}{name}",
                         "generation": 1, "creationTimestamp": created},
            "spec": spec}


def app(name: str = APP, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> CeleryApp:
    base = {"image": "registry.local/proj:1", "app": "sample_tasks.app",
            "broker": {"rabbitmq": {"image": "rabbitmq:3.13-management"}},
            "defaultQueue": "celery", "defaultExchange": "celery", "defaultRoutingKey": "celery"}
    return CeleryApp.of(body(api.APP, name, {**base, **spec}, created))


def exchange(name: str, /, created: str = "2026-01-01T00:00:00Z", app_name: str = APP,
             **spec: Any) -> CeleryExchange:
    base = {"appRef": {"name": app_name}, "type": "direct", "durable": True, "autoDelete": False,
            "deletionPolicy": "Retain"}
    return CeleryExchange.of(body(api.EXCHANGE, name, _merge(base, spec), created))


def queue(name: str, /, created: str = "2026-01-01T00:00:00Z", app_name: str = APP,
          **spec: Any) -> CeleryQueue:
    base = {"appRef": {"name": app_name}, "durable": True, "autoDelete": False,
            "queueType": "classic", "deletionPolicy": "Retain"}
    return CeleryQueue.of(body(api.QUEUE, name, _merge(base, spec), created))


def pool(name: str, queues: list[str], created: str = "2026-01-01T00:00:00Z", app_name: str = APP,
         **spec: Any) -> CeleryWorkerPool:
    base = {"appRef": {"name": app_name}, "queues": queues, "replicas": 1, "concurrency": 2,
            "pool": "prefork", "prefetchMultiplier": 1, "terminationGracePeriodSeconds": 60}
    return CeleryWorkerPool.of(body(api.POOL, name, _merge(base, spec), created))


AUTOSCALING_DEFAULTS = {"minReplicas": 1, "targetMessagesPerReplica": 10, "activationMessages": 0,
                        "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0,
                        "scaleDownStabilizationSeconds": 300, "scaleDownDrainSeconds": 60, "countInFlight": True}


def schedule(name: str, entries: list[dict[str, Any]], created: str = "2026-01-01T00:00:00Z",
             app_name: str = APP, timezone: str = "UTC") -> CeleryBeatSchedule:
    spec = {"appRef": {"name": app_name}, "timezone": timezone, "entries": entries}
    return CeleryBeatSchedule.of(body(api.SCHEDULE, name, spec, created))


def seed_app() -> CeleryApp:
    return app(defaultQueue="default", defaultExchange="default", defaultRoutingKey="default",
               resultBackend={"redis": {"image": "redis:7"}})


def seed() -> Topology:
    """app proj; exchanges default/task; queues default, high_queue, low_queue; a pool per queue."""
    return Topology.of(
        seed_app(),
        exchanges=[exchange("default"), exchange("task", type="topic")],
        queues=[
            queue("default", exchange="default", routingKey="default"),
            queue("high-queue", name="high_queue", exchange="task", routingKey="high_task",
                  maxPriority=10, tasks=["sample_tasks.tasks.add"]),
            queue("low-queue", name="low_queue", exchange="task", routingKey="low_task",
                  messageTTLSeconds=60, tasks=["sample_tasks.tasks.slow*"]),
        ],
        pools=[
            pool("default", ["default"]),
            pool("high", ["high_queue"], concurrency=4,
                 autoscaling={**AUTOSCALING_DEFAULTS, "maxReplicas": 5}),
            pool("low", ["low_queue"]),
        ],
        schedules=[schedule("nightly", [
            {"name": "add-every-minute", "task": "sample_tasks.tasks.add", "cron": "* * * * *",
             "args": [1, 2], "queue": "high_queue", "priority": 5},
            {"name": "slow-every-30s", "task": "sample_tasks.tasks.slow", "everySeconds": 30,
             "kwargs": {"seconds": 0.1}, "expiresSeconds": 25},
        ])],
    )
