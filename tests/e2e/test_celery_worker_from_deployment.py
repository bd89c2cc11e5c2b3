"""A real Celery worker in a pod, from a hand-written Deployment of the sample image, runs sample_tasks."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from sample_tasks import create_app, tasks
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import pod_logs, wait_for, wait_pods_ready
from tests.fixtures.servers import Images

pytestmark = pytest.mark.e2e


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_worker_deployment_consumes_its_queue_and_returns_results(
        kubectl: Any, namespace: str, control_plane: Any, images: Images, broker_vhost: Vhost,
        backend_db: RedisDb) -> None:
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    labels = {"app.kubernetes.io/name": "sample-worker"}
    objects = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-urls"},
         "data": {"broker": b64(broker_vhost.url), "backend": b64(backend_db.url)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sample-worker"},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
                 "name": "worker", "image": images.sample_tasks,
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
    pods = wait_pods_ready(control_plane, namespace, "app.kubernetes.io/name=sample-worker", 2, 180)
    for pod in pods:
        wait_for(lambda pod=pod: "ready." in pod_logs(control_plane, namespace, pod), 60, f"{pod} ready")

    client = create_app({"broker_url": broker_vhost.local_url, "result_backend": backend_db.local_url})
    try:
        # Each replica is its own node: %h is the pod's hostname.
        nodes = {f"worker@{p}" for p in pods}
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while seen != nodes and time.monotonic() < deadline:
            seen |= {name for reply in client.control.ping(timeout=2) for name in reply}
        assert seen == nodes

        add = client.tasks[tasks.add.name]
        result = add.apply_async((1, 2), queue=queue)
        assert result.get(timeout=60) == 3
        wait_for(lambda: any(result.id in pod_logs(control_plane, namespace, p) for p in pods), 30,
                 "a pod of the Deployment logged the task")
    finally:
        client.close()
