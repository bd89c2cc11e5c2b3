"""A producer Deployment in the sample image, wired by `celery-operator producer-patch`, routes like the workers."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator.offline import producer_patch_files
from localenv.cluster import Cluster
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    pod_logs,
    pod_names,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "producer.yaml"


def _messages(vhost: Vhost, queue: str) -> list[dict[str, Any]]:
    """The queue's messages, read and put back (the management API's get with requeue)."""
    path = f"/api/queues/{urllib.parse.quote(vhost.name, safe='')}/{queue}/get"
    got = vhost.server.api("POST", path, {"count": 10, "ackmode": "ack_requeue_true", "encoding": "auto"})
    return [m["properties"]["headers"] for m in got]


def test_producer_sends_tasks_by_name_and_they_arrive_on_the_queues_their_tasks_route_to(
        cluster: Cluster, namespace: str, tmp_path: Path, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    cp = cluster.control_plane
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    secret(cp, namespace, "backend", url=backend_db.url)
    operator_factory("--namespace", namespace, "--no-leader-election")
    # The app, its exchanges and queues, and no worker: what the producer sends stays in the queues.
    docs = [d for d in sample_documents(image=images.sample_tasks)
            if d["kind"] in ("CeleryApp", "CeleryExchange", "CeleryQueue")]
    apply(cp, namespace, docs)
    wait_ready(cp, namespace, "celeryapp", "proj", 90)
    for q in ("default", "high-queue", "low-queue"):
        wait_ready(cp, namespace, "celeryqueue", q, 60)

    # The documented way: the example Deployment, wired for this app by the printed patch.
    web = yaml.safe_load(EXAMPLE.read_text())
    [container] = web["spec"]["template"]["spec"]["containers"]
    container.update(image=images.sample_tasks, imagePullPolicy="IfNotPresent")
    app_file = tmp_path / "app.yaml"
    app_file.write_text(yaml.safe_dump(next(d for d in docs if d["kind"] == "CeleryApp")))
    patch = tmp_path / "patch.yaml"
    patch.write_text(producer_patch_files([app_file], "web"))
    apply(cp, namespace, [web])
    cp.kubectl("patch", "deployment", "web", "-n", namespace, "--type", "strategic", "--patch-file", str(patch))

    def sent() -> dict[str, str] | None:
        for pod in pod_names(cp, namespace, "app.kubernetes.io/name=web"):
            for line in pod_logs(cp, namespace, pod).splitlines():
                if line.startswith("{"):
                    return dict(json.loads(line))
        return None

    ids = wait_for(sent, 180, "the producer printed the ids of the tasks it sent")

    def arrived() -> dict[str, list[tuple[str, str]]] | None:
        got = {q: [(h["task"], h["id"]) for h in _messages(broker_vhost, q)]
               for q in ("low_queue", "high_queue", "default")}
        return got if got["low_queue"] and got["high_queue"] else None

    got = wait_for(arrived, 60, "the tasks in their queues")
    assert got == {"low_queue": [("sample_tasks.tasks.slow", ids["slow"])],
                   "high_queue": [("sample_tasks.tasks.echo", ids["echo"])],
                   "default": []}
