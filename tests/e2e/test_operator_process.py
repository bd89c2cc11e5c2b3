"""`celery-operator run` as a process: probes, metrics, clean shutdown, one active replica."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from celery_operator import api
from localenv.controlplane import ControlPlane
from tests.fixtures.brokers import Vhost
from tests.fixtures.operator import OperatorFactory, apply, condition, get, secret, wait_for, wait_ready
from tests.fixtures.servers import OPERATOR_NAMESPACE, Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.mark.exclusive  # it watches every namespace: no other test's operator may run meanwhile
def test_operator_answers_probes_serves_metrics_and_exits_cleanly_on_sigterm(
        control_plane: ControlPlane, operator_factory: OperatorFactory, namespace: str) -> None:
    op = operator_factory("--all-namespaces", "--lease-name", f"probe-{namespace}")
    assert op.get("/healthz")[0] == 200
    wait_for(lambda: op.get("/readyz")[0] == 200, 60, "readiness")
    status, text = op.get("/metrics")
    assert status == 200
    assert "celery_operator_build_info" in text
    # All namespaces are watched: an object in a namespace nobody named gets reconciled.
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "stray"},
        "spec": {"appRef": {"name": "missing"}}}))
    wait_for(lambda: (condition(get(control_plane, namespace, "celeryqueue", "stray")) or {}).get("reason")
             == api.Reason.APP_NOT_FOUND, 30, "AppNotFound set by the all-namespaces operator")
    op.proc.send_signal(signal.SIGTERM)
    assert op.proc.wait(30) == 0
    assert "stopped (exit 0)" in op.logs()


def _holder(control_plane: ControlPlane, name: str) -> str | None:
    r = control_plane.kubectl("get", "lease", name, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)["spec"].get("holderIdentity")


def test_two_operator_replicas_never_both_reconcile(control_plane: ControlPlane, namespace: str,
                                                    operator_factory: OperatorFactory) -> None:
    lease = f"ha-{namespace}"
    a = operator_factory("--namespace", namespace, "--lease-name", lease, "--identity", "replica-a", name="a")
    wait_for(lambda: _holder(control_plane, lease) == "replica-a", 30, "replica-a leads")
    b = operator_factory("--namespace", namespace, "--lease-name", lease, "--identity", "replica-b", name="b")
    wait_for(lambda: "waiting for leadership" in b.logs(), 30, "replica-b waits")
    time.sleep(3)
    # Only the leader started kopf (and so any handler); the follower never did.
    assert "acquired leadership" in a.logs()
    assert "Activity 'configure' succeeded" in a.logs()
    assert "acquired leadership" not in b.logs()
    assert "kopf" not in b.logs()
    assert _holder(control_plane, lease) == "replica-a"
    # The leader stops: it releases the lease and the follower takes over promptly.
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    wait_for(lambda: _holder(control_plane, lease) == "replica-b", 30, "replica-b takes over")
    wait_for(lambda: "Activity 'configure' succeeded" in b.logs(), 30, "replica-b starts kopf")


@pytest.mark.parametrize("form", ["flattened-inline-data", "file-paths"])
def test_operator_reconciles_with_an_ordinary_kubeconfig(form: str, control_plane: ControlPlane, namespace: str,
                                                         operator_factory: OperatorFactory, tmp_path: Path,
                                                         images: Images, broker_vhost: Vhost) -> None:
    """`kubectl config view --raw --flatten` (inline CA, client certificate and key, as kind, EKS and GKE
    tools write) and a kubeconfig naming files both work; in a pod, test_helm_install covers the token."""
    if form == "file-paths":
        kubeconfig = control_plane.kubeconfig
        assert "client-certificate-data" not in kubeconfig.read_text()
    else:
        kubeconfig = tmp_path / "flat-kubeconfig"
        kubeconfig.write_text(control_plane.kubectl("config", "view", "--raw", "--flatten").stdout)
        assert "client-key-data" in kubeconfig.read_text()
    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    operator_factory("--namespace", namespace, "--no-leader-election", kubeconfig=kubeconfig)
    v = api.API_VERSION
    apply(control_plane, namespace, [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": "proj"},
         "spec": {"image": images.sample_tasks, "app": "sample_tasks.app",
                  "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                          "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}}},
        {"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": "work"}, "spec": {"appRef": {"name": "proj"}}},
    ])
    wait_ready(control_plane, namespace, "celeryapp", "proj", 60)
    wait_ready(control_plane, namespace, "celeryqueue", "work", 60)
