"""Failures show: bad input and failing pods become conditions with an actionable message, and fixing the
input recovers without restarting anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api, rbac
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    condition,
    get,
    list_events,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
    without_workers,
)
from tests.fixtures.servers import Images, flat_kubeconfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def one_pool_app(image: str, pool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    v = api.API_VERSION
    return [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": "proj"},
         "spec": {"image": image, "app": "sample_tasks.app",
                  "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                          "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}}},
        {"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": "work"}, "spec": {"appRef": {"name": "proj"}}},
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": "w"},
         "spec": {"appRef": {"name": "proj"}, "queues": ["work"], "replicas": 1, **(pool or {})}},
    ]


def reason_becomes(cp: ControlPlane, ns: str, kind: str, name: str, reasons: set[str],
                   timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = condition(get(cp, ns, kind, name))
        return c if c and c["status"] == "False" and c["reason"] in reasons else None

    try:
        return dict(wait_for(check, timeout, f"{kind}/{name} Ready=False with {sorted(reasons)}"))
    except AssertionError as e:
        raise AssertionError(f"{e}: {json.dumps((get(cp, ns, kind, name) or {}).get('status'))}") from None


def warning_events(cp: ControlPlane, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = list_events(cp, ns)
    return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason
            and e["type"] == "Warning"]


@pytest.fixture
def started(cluster: Cluster, namespace: str, operator_factory: OperatorFactory, broker_vhost: Vhost
            ) -> Callable[[list[dict[str, Any]]], None]:
    cp = cluster.control_plane
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    operator_factory("--namespace", namespace, "--no-leader-election")
    return lambda docs: apply(cp, namespace, docs)


POOL_FAILURES = [
    # (pool spec that breaks, the reasons the kubelet or scheduler reports, what the message names)
    ({"image": "localhost/celery-operator/no-such-image:1"}, {"ErrImagePull", "ImagePullBackOff"},
     "image name and tag"),
    ({"extraArgs": ["--no-such-flag"]}, {"CrashLoopBackOff"}, "last exit code"),
    ({"resources": {"requests": {"cpu": "64"}}}, {"Unschedulable"}, "Insufficient cpu"),
]


@pytest.mark.parametrize(("broken", "reasons", "named"), POOL_FAILURES, ids=["image", "crashloop", "unschedulable"])
def test_a_pool_whose_pods_cannot_run_says_why_and_recovers_when_fixed(
        cluster: Cluster, namespace: str, images: Images, started: Callable[[list[dict[str, Any]]], None],
        broken: dict[str, Any], reasons: set[str], named: str) -> None:
    cp = cluster.control_plane
    started(one_pool_app(images.sample_tasks, broken))
    c = reason_becomes(cp, namespace, "celeryworkerpool", "w", reasons)
    assert named in c["message"], c["message"]
    assert condition(get(cp, namespace, "celeryworkerpool", "w"), "Degraded")["status"] == "True"  # type: ignore[index]
    # The Event is posted after the status that names the reason: awaited, not read at once.
    wait_for(lambda: warning_events(cp, namespace, "w", c["reason"]), 30, f"a {c['reason']} Warning Event")
    started(one_pool_app(images.sample_tasks))  # the fix: the pool without the breaking field
    wait_ready(cp, namespace, "celeryworkerpool", "w", 180)


def test_a_missing_broker_secret_is_a_condition_and_creating_it_recovers(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost) -> None:
    cp = cluster.control_plane
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, one_pool_app(images.sample_tasks))
    c = reason_becomes(cp, namespace, "celeryapp", "proj", {api.Reason.SECRET_NOT_FOUND}, 60)
    assert "Secret broker not found" in c["message"]
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    wait_ready(cp, namespace, "celeryapp", "proj", 90)
    wait_ready(cp, namespace, "celeryworkerpool", "w", 180)


def test_a_claim_that_cannot_bind_is_a_condition_and_fixing_the_storage_class_recovers(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory) -> None:
    cp = cluster.control_plane
    operator_factory("--namespace", namespace, "--no-leader-election")

    def app(storage_class: str | None) -> list[dict[str, Any]]:
        storage: dict[str, Any] = {"size": "1Gi"}
        if storage_class:
            storage["storageClassName"] = storage_class
        docs = one_pool_app(images.sample_tasks)
        docs[0]["spec"]["broker"] = {"redis": {"image": images.redis, "storage": storage}}
        return docs

    apply(cp, namespace, app("no-such-class"))
    c = reason_becomes(cp, namespace, "celeryapp", "proj", {"ClaimPending"}, 120)
    assert "'no-such-class'" in c["message"] and "storageClassName" in c["message"], c["message"]
    apply(cp, namespace, app(None))  # the default StorageClass
    wait_ready(cp, namespace, "celeryapp", "proj", 180)
    claims = json.loads(cp.kubectl("get", "pvc", "-n", namespace, "-o", "json").stdout)["items"]
    assert [c["status"]["phase"] for c in claims] == ["Bound"]


def test_a_reconcile_that_raises_is_reported_on_the_app_and_clears_when_the_cause_is_fixed(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost, backend_db: RedisDb, tmp_path: Path) -> None:
    """An operator whose RBAC lacks Secrets: reading the broker Secret fails with 403 and the reconcile raises."""
    cp = cluster.control_plane
    sa = "no-secrets"
    rules = [r.as_dict() for r in (*rbac.NAMESPACED, *rbac.CLUSTER_READ) if "secrets" not in r.resources]
    rules.append({"apiGroups": [""], "resources": ["services", "configmaps"],
                  "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]})
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": f"{namespace}-{sa}"}, "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"{namespace}-{sa}"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": role["metadata"]["name"]},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": namespace}}
    cp.apply([account, role, binding])
    try:
        token = cp.create_token(namespace, sa, 3600)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(flat_kubeconfig(cp, token)))
        secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
        secret(cp, namespace, "backend", url=backend_db.url)
        operator_factory("--namespace", namespace, "--no-leader-election", kubeconfig=kubeconfig)
        apply(cp, namespace, without_workers(sample_documents(image=images.sample_tasks)))
        c = reason_becomes(cp, namespace, "celeryapp", "proj", {api.Reason.RECONCILE_ERROR}, 60)
        assert "403" in c["message"] and "secrets" in c["message"], c["message"]
        wait_for(lambda: warning_events(cp, namespace, "proj", api.Reason.RECONCILE_ERROR), 30,
                 "a ReconcileError Warning Event")
        # The fix: let it read Secrets in this namespace. No restart: the failed reconcile is retried.
        cp.kubectl("create", "role", "read-secrets", "-n", namespace, "--verb=get,list,watch", "--resource=secrets")
        cp.kubectl("create", "rolebinding", "read-secrets", "-n", namespace, "--role=read-secrets",
                   f"--serviceaccount={namespace}:{sa}")
        wait_ready(cp, namespace, "celeryapp", "proj", 120)
    finally:
        cp.kubectl("delete", "clusterrole,clusterrolebinding", f"{namespace}-{sa}", check=False)
