"""The seed scenario: the sample topology runs for real, on RabbitMQ and on Redis, in pods on the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    celery_call,
    get,
    pod_logs,
    pod_names,
    pool_selector,
    sample_client_env,
    start_sample_app,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _start_topology(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory,
                    images: Images, broker_url: str, management_url: str, backend_url: str) -> None:
    start_sample_app(control_plane, namespace, operator_factory, images.sample_tasks, broker_url, management_url,
                     backend_url)
    for q in ("default", "high-queue", "low-queue"):
        wait_ready(control_plane, namespace, "celeryqueue", q, 60)


def _run_scenario(cluster: Cluster, namespace: str, tmp_path: Path, broker_url: str, backend_url: str) -> None:
    cp = cluster.control_plane
    env = sample_client_env(cp, namespace, tmp_path, broker_url, backend_url, pools=("default",))
    # The pool's status mirrors its Deployment, whose one pod the kubelet reports ready.
    def one_ready() -> bool:
        status = (get(cp, namespace, "celeryworkerpool", "default") or {}).get("status") or {}
        return status.get("readyReplicas") == status.get("replicas") == 1

    wait_for(one_ready, 120, "the default pool's status: 1 of 1 replicas ready")
    [default] = wait_for(lambda: pod_names(cp, namespace, pool_selector("proj", "default"), ready_only=True), 60,
                         "the default pool's ready pod")

    # The low pool autoscales from zero: a task waiting on low_queue wakes it (a pod to start on a busy node).
    r = celery_call(cluster, env, "add-low", timeout=300)
    assert r["result"] == 3
    wait_for(lambda: any(r["id"] in text for text in pod_logs_of_pool(cp, namespace, "low").values()), 30,
             "a pod of the low pool logged the task")
    assert r["id"] not in pod_logs(cp, namespace, default)

    r = celery_call(cluster, env, "add-default")
    assert r["result"] == 3
    wait_for(lambda: r["id"] in pod_logs(cp, namespace, default), 30, "the default pool's pod logged the task")
    assert not any(r["id"] in text for text in pod_logs_of_pool(cp, namespace, "low").values())


def pod_logs_of_pool(cp: ControlPlane, namespace: str, pool: str) -> dict[str, str]:
    return {p: pod_logs(cp, namespace, p) for p in pod_names(cp, namespace, pool_selector("proj", pool))}


def test_sample_topology_runs_on_rabbitmq(cluster: Cluster, namespace: str, tmp_path: Path, images: Images,
                                          operator_factory: OperatorFactory, broker_vhost: Vhost,
                                          backend_db: RedisDb) -> None:
    cp = cluster.control_plane
    _start_topology(cp, namespace, operator_factory, images, broker_vhost.url, broker_vhost.management_url,
                    backend_db.url)
    # The broker has what the CRs describe.
    server = broker_vhost.server
    from urllib.parse import quote

    vhost = quote(broker_vhost.name, safe="")
    exchanges = {e["name"]: e["type"] for e in server.api("GET", f"/api/exchanges/{vhost}")}
    assert exchanges.get("default") == "direct" and exchanges.get("task") == "direct"
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in server.api("GET", f"/api/bindings/{vhost}")}
    assert {("default", "default", "default"), ("task", "high_queue", "high_task"),
            ("task", "low_queue", "low_task")} <= bindings
    _run_scenario(cluster, namespace, tmp_path, broker_vhost.url, backend_db.url)


def test_sample_topology_runs_on_redis(cluster: Cluster, namespace: str, tmp_path: Path, images: Images,
                                       operator_factory: OperatorFactory, backend_db: RedisDb) -> None:
    _start_topology(cluster.control_plane, namespace, operator_factory, images, backend_db.url, "", backend_db.url)
    _run_scenario(cluster, namespace, tmp_path, backend_db.url, backend_db.url)
