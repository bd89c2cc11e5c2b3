"""The kubelet runs the operator's worker probes: a broker outage does not crash-loop workers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from tests.fixtures.brokers import RedisDb
from tests.fixtures.cluster_brokers import PodRabbitMQ
from tests.fixtures.operator import (
    OperatorFactory,
    celery_call,
    get,
    pod_names,
    pool_selector,
    sample_client_env,
    start_sample_app,
    wait_for,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
OUTAGE_SECONDS = 60


def test_a_worker_outlives_a_60s_broker_outage_without_restarts_and_consumes_again(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, images: Images, tmp_path: Path,
        backend_db: RedisDb) -> None:
    cp = cluster.control_plane
    broker = PodRabbitMQ(cp, namespace, "broker", images.rabbitmq)  # this test's own: it stops it
    broker.deploy()
    broker.add_vhost("app")
    start_sample_app(cp, namespace, operator_factory, images.sample_tasks, broker.url("app"), broker.management_url,
                     backend_db.url)
    env = sample_client_env(cp, namespace, tmp_path, broker.url("app"), backend_db.url, pools=("default",))
    [pod] = pod_names(cp, namespace, pool_selector("proj", "default"), ready_only=True)
    assert celery_call(cluster, env, "add-default")["result"] == 3

    broker.stop()
    down_since = time.monotonic()
    # The worker records the lost connection (what its liveness probe reads): reconnecting, not stuck.
    lost = wait_for(lambda: worker_state(cp, namespace, pod).get("connecting"), 30, "the lost connection recorded")
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
    back = worker_state(cp, namespace, pod)
    assert back["connecting"] is None and back["received"] > lost, back


def worker_state(cp: ControlPlane, namespace: str, pod: str) -> dict[str, Any]:
    """The state file the worker's main process writes for its liveness probe."""
    out = cp.kubectl("exec", "-n", namespace, pod, "--", "cat", api.WORKER_STATE_FILE, check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip() else {}
