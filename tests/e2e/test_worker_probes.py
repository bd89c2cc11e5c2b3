"""The kubelet runs the operator's worker probes: a broker outage does not crash-loop workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from localenv.cluster import Cluster
from tests.fixtures.cluster_brokers import PodRabbitMQ
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    get,
    pool_selector,
    sample_documents,
    secret,
    wait_for,
    wait_pods_ready,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
OUTAGE_SECONDS = 60


def test_a_worker_outlives_a_60s_broker_outage_without_restarts_and_consumes_again(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, images: Images, tmp_path: Path,
        backend_db: object) -> None:
    cp = cluster.control_plane
    broker = PodRabbitMQ(cp, namespace, "broker", images.rabbitmq)  # this test's own: it stops it
    broker.deploy()
    broker.add_vhost("app")
    secret(cp, namespace, "broker", url=broker.url("app"), managementUrl=broker.management_url)
    secret(cp, namespace, "backend", url=backend_db.url)  # type: ignore[attr-defined]
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, sample_documents(image=images.sample_tasks))
    wait_ready(cp, namespace, "celeryapp", "proj", 90)
    [pod] = wait_pods_ready(cp, namespace, pool_selector("proj", "default"), 1, 180)
    cm = wait_for(lambda: get(cp, namespace, "configmap", "proj-celery-config"), 30, "ConfigMap")
    env = celery_client_env(tmp_path, cm, broker.url("app"), backend_db.url)  # type: ignore[attr-defined]
    assert celery_call(cluster, env, "add-default")["result"] == 3

    broker.stop()
    down_since = time.monotonic()
    # The probes keep running through the outage; the worker must neither restart nor turn unready
    # for good. Sample its status for the whole outage.
    while time.monotonic() - down_since < OUTAGE_SECONDS:
        seen = get(cp, namespace, "pod", pod)
        assert seen is not None, f"worker pod {pod} was deleted during the outage: " + cp.kubectl(
            "get", "pods,replicasets,events", "-n", namespace, check=False).stdout
        (container,) = seen["status"]["containerStatuses"]
        assert container["restartCount"] == 0, json.dumps(container)
        time.sleep(5)
    broker.start()

    assert celery_call(cluster, env, "add-default")["result"] == 3
    (container,) = (get(cp, namespace, "pod", pod) or {})["status"]["containerStatuses"]
    assert container["restartCount"] == 0 and container["ready"] is True
