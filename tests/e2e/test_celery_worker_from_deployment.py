"""A real Celery worker, started by the pod runner from a hand-written Deployment, runs sample_tasks."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from localenv.images import SAMPLE_TASKS_IMAGE
from localenv.podrunner import PodRunner
from sample_tasks import create_app, tasks

pytestmark = pytest.mark.e2e


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_worker_deployment_consumes_its_queue_and_returns_results(
        kubectl: Any, namespace: str, control_plane: Any, rabbitmq_vhost: Any, redis_db: Any) -> None:
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    labels = {"app.kubernetes.io/name": "sample-worker"}
    objects = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-urls"},
         "data": {"broker": b64(rabbitmq_vhost.url), "backend": b64(redis_db.url)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sample-worker"},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
                 "name": "worker", "image": f"{SAMPLE_TASKS_IMAGE}:0.1.0",
                 # No command: the image's ENTRYPOINT (celery) runs with these args.
                 "args": ["-A", "sample_tasks.app", "worker", "--loglevel=INFO", "--hostname=worker@%h",
                          "--queues=$(QUEUE)", "--concurrency=1", "--without-gossip", "--without-mingle"],
                 "env": [
                     {"name": "QUEUE", "value": queue},
                     {"name": "CELERY_BROKER_URL",
                      "valueFrom": {"secretKeyRef": {"name": "celery-urls", "key": "broker"}}},
                     {"name": "CELERY_RESULT_BACKEND",
                      "valueFrom": {"secretKeyRef": {"name": "celery-urls", "key": "backend"}}},
                 ],
             }]},
         }}},
    ]
    kubectl("apply", "-n", namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    client = create_app({"broker_url": rabbitmq_vhost.url, "result_backend": redis_db.url})
    with PodRunner(control_plane.kubeconfig, max_grace_seconds=15) as runner:
        pods = runner.run_deployment(namespace, "sample-worker")
        assert len(pods) == 2
        for pod in pods:
            pod.wait_for_log(r"ready\.", timeout_seconds=120)

        # Each replica is its own node: %h is the pod's hostname.
        nodes = {f"worker@{p.name}" for p in pods}
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while seen != nodes and time.monotonic() < deadline:
            seen |= {name for reply in client.control.ping(timeout=2) for name in reply}
        assert seen == nodes

        add = client.tasks[tasks.add.name]
        result = add.apply_async((1, 2), queue=queue)
        assert result.get(timeout=60) == 3
        assert any(result.id in p.logs() for p in pods), "a pod of the Deployment ran the task"
    client.close()
