"""Managed brokers for real: the operator's RabbitMQ and Redis StatefulSets run on the node, with bound
claims and credentials from Secrets, and keep their data when their pod is deleted."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    get,
    pod_names,
    pool_selector,
    sample_documents,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def managed_topology(images: Images) -> list[dict[str, Any]]:
    docs = sample_documents(image=images.sample_tasks)
    for d in docs:
        if d["kind"] == "CeleryApp":
            d["spec"]["broker"] = {"rabbitmq": {"image": images.rabbitmq, "storage": {"size": "1Gi"}}}
            d["spec"]["resultBackend"] = {"redis": {"image": images.redis, "storage": {"size": "1Gi"}}}
    # A durable queue no pool consumes: its messages must outlive the broker's pod.
    docs.append({"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "parked"},
                 "spec": {"appRef": {"name": "proj"}, "exchange": "task", "routingKey": "parked"}})
    return docs


def secret_value(cluster: Cluster, ns: str, name: str, key: str) -> str:
    s = get(cluster.control_plane, ns, "secret", name)
    assert s is not None
    return base64.b64decode(s["data"][key]).decode()


def test_managed_rabbitmq_and_redis_run_with_bound_claims_and_keep_messages_across_a_pod_deletion(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, images: Images, tmp_path: Path) -> None:
    cp = cluster.control_plane
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, managed_topology(images))
    wait_ready(cp, namespace, "celeryapp", "proj", 240)
    for sts in ("proj-rabbitmq", "proj-result-backend"):
        wait_for(lambda sts=sts: (get(cp, namespace, "statefulset", sts) or {}).get("status", {})
                 .get("readyReplicas") == 1, 180, f"{sts} ready")
    claims = json.loads(cp.kubectl("get", "pvc", "-n", namespace, "-o", "json").stdout)["items"]
    assert {c["metadata"]["name"] for c in claims} == {"data-proj-rabbitmq-0", "data-proj-result-backend-0"}
    assert all(c["status"]["phase"] == "Bound" for c in claims)

    broker_url = secret_value(cluster, namespace, "proj-broker", "url")
    backend_url = secret_value(cluster, namespace, "proj-result-backend", "url")
    assert f"proj-rabbitmq.{namespace}.svc" in broker_url  # a Service DNS name, resolved by CoreDNS
    cm = wait_for(lambda: get(cp, namespace, "configmap", "proj-celery-config"), 30, "ConfigMap")
    env = celery_client_env(tmp_path, cm, broker_url, backend_url)

    assert celery_call(cluster, env, "add-low")["result"] == 3
    wait_ready(cp, namespace, "celeryqueue", "parked", 60)
    celery_call(cluster, env, "publish:parked:5:0")
    wait_for(lambda: (get(cp, namespace, "celeryqueue", "parked") or {}).get("status", {})
             .get("messagesReady") == 5, 60, "5 messages parked")

    [default] = pod_names(cp, namespace, pool_selector("proj", "default"))
    old_uid = (get(cp, namespace, "pod", "proj-rabbitmq-0") or {})["metadata"]["uid"]
    cp.kubectl("delete", "pod", "proj-rabbitmq-0", "-n", namespace)
    wait_for(lambda: (get(cp, namespace, "pod", "proj-rabbitmq-0") or {}).get("metadata", {}).get("uid")
             not in (None, old_uid), 120, "a new rabbitmq pod")
    wait_for(lambda: (get(cp, namespace, "statefulset", "proj-rabbitmq") or {}).get("status", {})
             .get("readyReplicas") == 1, 180, "rabbitmq ready again")
    listed = cp.kubectl("exec", "-n", namespace, "proj-rabbitmq-0", "--", "rabbitmqctl", "list_queues",
                        "--no-table-headers", "--quiet", "name", "messages", timeout=120).stdout
    assert {tuple(line.split()) for line in listed.splitlines()} >= {("parked", "5")}
    # The worker pods reconnect by themselves: the default pool's pod that lived through it answers.
    assert celery_call(cluster, env, "add-default")["result"] == 3
    assert pod_names(cp, namespace, pool_selector("proj", "default")) == [default]
