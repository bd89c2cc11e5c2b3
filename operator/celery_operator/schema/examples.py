"""One example object per kind, shown in the reference docs (and applied by the CRD tests)."""

from __future__ import annotations

from typing import Any

from celery_operator import api

EXAMPLES: dict[str, dict[str, Any]] = {
    api.APP: {
        "apiVersion": api.API_VERSION,
        "kind": api.APP,
        "metadata": {"name": "proj"},
        "spec": {
            "image": "ghcr.io/celery-operator/sample-tasks:0.1.0",
            "app": "sample_tasks.app",
            "broker": {"rabbitmq": {"storage": {"size": "2Gi"}}},
            "resultBackend": {"redis": {}},
            "config": {"task_acks_late": True, "worker_send_task_events": True},
        },
    },
    api.EXCHANGE: {
        "apiVersion": api.API_VERSION,
        "kind": api.EXCHANGE,
        "metadata": {"name": "task"},
        "spec": {"appRef": {"name": "proj"}, "type": "direct"},
    },
    api.QUEUE: {
        "apiVersion": api.API_VERSION,
        "kind": api.QUEUE,
        "metadata": {"name": "high-queue"},
        "spec": {
            "appRef": {"name": "proj"},
            "name": "high_queue",
            "exchange": "task",
            "routingKey": "high_task",
            "tasks": ["sample_tasks.tasks.urgent_*"],
            "maxPriority": 10,
        },
    },
    api.POOL: {
        "apiVersion": api.API_VERSION,
        "kind": api.POOL,
        "metadata": {"name": "low"},
        "spec": {
            "appRef": {"name": "proj"},
            "queues": ["low_queue"],
            "concurrency": 4,
            "timeLimitSeconds": 50,
            "softTimeLimitSeconds": 45,
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetMessagesPerReplica": 10},
        },
    },
    api.SCHEDULE: {
        "apiVersion": api.API_VERSION,
        "kind": api.SCHEDULE,
        "metadata": {"name": "housekeeping"},
        "spec": {
            "appRef": {"name": "proj"},
            "timezone": "Europe/Paris",
            "entries": [
                {"name": "cleanup", "task": "sample_tasks.tasks.cleanup", "cron": "0 3 * * *"},
                {"name": "heartbeat", "task": "sample_tasks.tasks.add", "everySeconds": 30, "args": [1, 2],
                 "expiresSeconds": 25},
            ],
        },
    },
}
