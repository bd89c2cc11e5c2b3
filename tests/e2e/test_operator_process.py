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


def test_of_two_replicas_only_the_lease_holder_writes_and_the_other_takes_over_when_it_stops(
        control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
        broker_vhost: Vhost) -> None:
    """Both replicas run kopf and fill their caches; the API server's audit log shows writes only from the
    holder of the shard lease, until it stops (releasing the lease) and the other takes over at once."""
    from tests.e2e.faults import _ts, audit_writes, external_app, lease_holder, pool, queue, unattributed_writes

    assert control_plane.audit_log.exists(), "the API server keeps no audit log (localenv.controlplane enables it)"
    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    lease = f"ha-{namespace}"
    shard = f"{lease}-shard-0"
    since = time.time()
    a = operator_factory("--namespace", namespace, "--lease-name", lease, "--identity", "replica-a", name="a")
    wait_for(lambda: lease_holder(control_plane, OPERATOR_NAMESPACE, shard) == "replica-a", 30, "replica-a leads")
    b = operator_factory("--namespace", namespace, "--lease-name", lease, "--identity", "replica-b", name="b")
    wait_for(lambda: "caches synced" in b.logs(), 30, "replica-b's caches synced")
    apply(control_plane, namespace, [external_app("proj", images.sample_tasks), queue("proj", "work", "work"),
                                     pool("proj", "w", ["work"], replicas=0)])
    wait_ready(control_plane, namespace, "celeryworkerpool", "w", 60)

    def app_writes(identity: str, after: float) -> list[str]:
        return [f"{e['verb']} {(e.get('objectRef') or {}).get('resource')}"
                for e in audit_writes(control_plane, namespace, identity, after)
                if (e.get("objectRef") or {}).get("resource") != "leases"]

    def took_lease(identity: str) -> float | None:
        """When `identity` first wrote the shard lease (a candidate writes it only to take or hold it)."""
        times = [_ts(e["requestReceivedTimestamp"]) for e in audit_writes(control_plane, namespace, identity, since)
                 if (e.get("objectRef") or {}).get("name") == shard
                 and int((e.get("responseStatus") or {}).get("code") or 0) < 300]
        return min(times, default=None)

    assert app_writes("replica-a", since)  # children, statuses, Events
    # The standby wrote nothing but its lease attempts while it did not hold the lease. (On a loaded machine
    # replica-a may miss its renewals: replica-b then takes the lease, and from then on its writes are right.)
    b_took = took_lease("replica-b")
    early = [f"{e['verb']} {(e.get('objectRef') or {}).get('resource')}"
             for e in audit_writes(control_plane, namespace, "replica-b", since, b_took)
             if (e.get("objectRef") or {}).get("resource") != "leases"]
    assert early == [], (early, b_took)
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    stopped = time.time()
    wait_for(lambda: lease_holder(control_plane, OPERATOR_NAMESPACE, shard) == "replica-b", 10,
             "replica-b takes the released lease")
    control_plane.kubectl("delete", "configmap", "proj-celery-config", "-n", namespace)
    wait_for(lambda: get(control_plane, namespace, "configmap", "proj-celery-config"), 30, "restored by replica-b")
    assert app_writes("replica-b", stopped)
    assert app_writes("replica-a", stopped) == []
    assert unattributed_writes(control_plane, namespace, since) == []  # every write is a replica's


def test_with_two_shards_each_replica_writes_only_for_the_apps_of_the_shard_it_holds(
        control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
        broker_vhost: Vhost) -> None:
    """`--shards 2` and two replicas: each ends up holding one shard's lease, and the audit log shows every
    write for an app coming from the holder of that app's shard."""
    from celery_operator.kube.shards import shard_of
    from tests.e2e.faults import audit_writes, external_app, lease_holder, pool, queue, unattributed_writes

    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    candidates = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    apps = {s: next(n for n in candidates if shard_of(namespace, n, 2) == s) for s in (0, 1)}
    lease = f"sh-{namespace}"
    args = ("--namespace", namespace, "--lease-name", lease, "--shards", "2")
    operator_factory(*args, "--identity", "replica-a", name="a")
    operator_factory(*args, "--identity", "replica-b", name="b")

    def holders() -> dict[int, str | None]:
        return {s: lease_holder(control_plane, OPERATOR_NAMESPACE, f"{lease}-shard-{s}") for s in (0, 1)}

    # A newcomer waits a lease duration for the member count to settle; then each takes its share.
    def split_evenly() -> dict[int, str | None] | None:
        h = holders()
        return h if sorted(map(str, h.values())) == ["replica-a", "replica-b"] else None

    split = wait_for(split_evenly, 90, "one shard each")
    since = time.time()
    for app in apps.values():
        apply(control_plane, namespace, [external_app(app, images.sample_tasks), queue(app, f"{app}-work", app),
                                         pool(app, f"{app}-w", [app], replicas=0)])
    for app in apps.values():
        wait_ready(control_plane, namespace, "celeryworkerpool", f"{app}-w", 60)
    assert holders() == split, "the shards moved while the apps were made"

    def writes_for(identity: str, app: str) -> list[str]:
        return [f"{e['verb']} {ref.get('resource')}/{ref.get('name')}"
                for e in audit_writes(control_plane, namespace, identity, since)
                if (ref := e.get("objectRef") or {}).get("resource") not in ("leases", "events")
                and str(ref.get("name") or "").startswith(app)]

    for shard, app in apps.items():
        holder = split[shard]
        other = next(i for i in ("replica-a", "replica-b") if i != holder)
        assert writes_for(str(holder), app), f"{holder} holds shard {shard} but wrote nothing for {app}"
        assert writes_for(other, app) == [], f"{other} wrote for {app} of shard {shard}, which it does not hold"
    assert unattributed_writes(control_plane, namespace, since) == []


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
