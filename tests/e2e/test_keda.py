"""KEDA, built and installed by the harness (localenv.keda), scales a Deployment on the real node.

The setup `bench/keda.py` compares the operator with: KEDA's operator, metrics adapter and admission
webhooks from its Go module, its own manifests, and the HPA it creates reading the external metric
through the API server's aggregation layer. This test keeps that setup from rotting: a Redis list's
length drives a Deployment from zero to three replicas and back. `make bench` runs it before the
benchmarks; `make test` does not (marker `keda`): KEDA's cold build alone would take cold `make test`
past its 30 minutes.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from localenv import keda
from localenv.cluster import Cluster
from tests.fixtures.brokers import RedisDb
from tests.fixtures.operator import apply, get, secret, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.keda, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def keda_installed(cluster: Cluster) -> Cluster:
    if not keda.installed(cluster):
        keda.install(cluster)
    return cluster


def consumer(image: str) -> dict[str, Any]:
    """A Deployment KEDA scales (the node's pause image: what runs does not matter, the count does)."""
    labels = {"app.kubernetes.io/name": "consumer"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "consumer", "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 65535,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "pause", "image": image, "imagePullPolicy": "IfNotPresent",
                                         "securityContext": {"allowPrivilegeEscalation": False,
                                                             "readOnlyRootFilesystem": True,
                                                             "capabilities": {"drop": ["ALL"]}}}]}}}}


def scaled_object(db: RedisDb, host: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "redis"},
         "spec": {"secretTargetRef": [{"parameter": "password", "name": "redis", "key": "password"}]}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "consumer"},
         "spec": {"scaleTargetRef": {"name": "consumer"}, "minReplicaCount": 0, "maxReplicaCount": 3,
                  "pollingInterval": 1, "cooldownPeriod": 5,
                  "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                      "scaleDown": {"stabilizationWindowSeconds": 0}}}},
                  "triggers": [{"type": "redis", "authenticationRef": {"name": "redis"},
                                "metadata": {"address": f"{host}:6379", "listName": "jobs", "listLength": "5",
                                             "databaseIndex": str(db.db)}}]}},
    ]


def replicas(cluster: Cluster, ns: str) -> int:
    d = get(cluster.control_plane, ns, "deployment", "consumer")
    assert d is not None
    return int(d["spec"].get("replicas") or 0)


def test_a_scaled_object_scales_a_deployment_through_the_external_metrics_api(
        keda_installed: Cluster, namespace: str, backend_db: RedisDb) -> None:
    cluster, ns = keda_installed, namespace
    cp = cluster.control_plane
    password = urllib.parse.urlparse(backend_db.url).password or ""
    secret(cp, ns, "redis", password=password)
    apply(cp, ns, [consumer(cluster.images.ref("pause")), *scaled_object(backend_db, backend_db.server.host)])
    wait_for(lambda: (get(cp, ns, "scaledobject", "consumer") or {}).get("status", {}).get("hpaName"), 60,
             "KEDA created the HPA")
    assert replicas(cluster, ns) == 0

    with backend_db.client() as r:
        r.rpush("jobs", *range(12))
    wait_for(lambda: replicas(cluster, ns) == 3, 120, "12 items / 5 per replica → 3 replicas")

    # The HPA read the metric from KEDA's adapter through the API server (the aggregation layer).
    hpa = get(cp, ns, "hpa", "keda-hpa-consumer")
    assert hpa is not None
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    raw = cp.kubectl("get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}"
                     f"?labelSelector=scaledobject.keda.sh%2Fname%3Dconsumer").stdout
    assert [int(float(i["value"])) for i in json.loads(raw)["items"]] == [12]

    with backend_db.client() as r:
        r.delete("jobs")
    wait_for(lambda: replicas(cluster, ns) == 0, 120, "an empty list → back to zero after the cooldown")
