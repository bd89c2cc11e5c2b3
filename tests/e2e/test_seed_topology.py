"""The seed scenario: the sample topology runs for real, on RabbitMQ and on Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localenv.controlplane import ControlPlane
from localenv.podrunner import PodRunner
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_client_env,
    get,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CLIENT = Path(__file__).with_name("client.py")


def call(env: dict[str, str], what: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(CLIENT), what], env={**__import__("os").environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _start_topology(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory,
                    broker_url: str, management_url: str, backend_url: str) -> None:
    secret(control_plane, namespace, "broker", url=broker_url, managementUrl=management_url)
    secret(control_plane, namespace, "backend", url=backend_url)
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(control_plane, namespace, sample_documents())
    wait_ready(control_plane, namespace, "celeryapp", "proj", 90)
    for q in ("default", "high-queue", "low-queue"):
        wait_ready(control_plane, namespace, "celeryqueue", q, 60)


def _run_scenario(control_plane: ControlPlane, namespace: str, tmp_path: Path, broker_url: str,
                  backend_url: str) -> None:
    cm = wait_for(lambda: get(control_plane, namespace, "configmap", "proj-celery-config"), 30, "ConfigMap")
    env = celery_client_env(tmp_path, cm, broker_url, backend_url)
    with PodRunner(control_plane.kubeconfig) as runner:
        low = runner.run_deployment(namespace, "proj-low", replicas=1)[0]
        default = runner.run_deployment(namespace, "proj-default")[0]
        low.wait_for_log("ready", 90)
        default.wait_for_log("ready", 90)
        # The runner reports its pods ready as a kubelet would; the pool's status mirrors its Deployment.
        # (The low pool scales from zero on its own: the autoscaler owns its replica count.)
        status = wait_ready(control_plane, namespace, "celeryworkerpool", "default", 60)["status"]
        assert status["readyReplicas"] == status["replicas"] == 1

        r = call(env, "add-low")
        assert r["result"] == 3
        wait_for(lambda: r["id"] in low.logs(), 30, "the low pool worker logged the task")
        assert r["id"] not in default.logs()

        r = call(env, "add-default")
        assert r["result"] == 3
        wait_for(lambda: r["id"] in default.logs(), 30, "the default pool worker logged the task")
        assert r["id"] not in low.logs()


def test_sample_topology_runs_on_rabbitmq(control_plane: ControlPlane, namespace: str, tmp_path: Path,
                                          operator_factory: OperatorFactory, rabbitmq_vhost: Vhost,
                                          redis_db: RedisDb) -> None:
    _start_topology(control_plane, namespace, operator_factory, rabbitmq_vhost.url,
                    rabbitmq_vhost.management_url, redis_db.url)
    # The broker has what the CRs describe.
    server = rabbitmq_vhost.server
    vhost = rabbitmq_vhost.name
    from urllib.parse import quote

    exchanges = {e["name"]: e["type"] for e in server.api("GET", f"/api/exchanges/{quote(vhost, safe='')}")}
    assert exchanges.get("default") == "direct" and exchanges.get("task") == "direct"
    bindings = {(b["source"], b["destination"], b["routing_key"])
                for b in server.api("GET", f"/api/bindings/{quote(vhost, safe='')}")}
    assert {("default", "default", "default"), ("task", "high_queue", "high_task"),
            ("task", "low_queue", "low_task")} <= bindings
    _run_scenario(control_plane, namespace, tmp_path, rabbitmq_vhost.url, redis_db.url)


def test_sample_topology_runs_on_redis(control_plane: ControlPlane, namespace: str, tmp_path: Path,
                                       operator_factory: OperatorFactory, redis_db: RedisDb) -> None:
    _start_topology(control_plane, namespace, operator_factory, redis_db.url, "", redis_db.url)
    _run_scenario(control_plane, namespace, tmp_path, redis_db.url, redis_db.url)
