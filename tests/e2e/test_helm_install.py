"""Installed as users install it.

On a control plane of its own, the chart creates the CRDs, its RBAC is enough and no more, CRDs upgrade
and stay on uninstall. On the real node, `helm install` with the operator image built here runs the
operator as a pod under the chart's ServiceAccount, and that pod reconciles the sample topology and
scales an autoscaled pool up and down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.procs import REPO
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    apply,
    celery_call,
    celery_client_env,
    get,
    pod_logs,
    pod_names,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images, server_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CHART = REPO / "charts" / "celery-operator"
RELEASE, SYSTEM, APPS, OTHER = "celery-operator", "celery-system", "apps", "other"
SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: the chart must create the CRDs, not find them."""
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("helm-cp"), scheduler=False)
    try:
        cp.start()
    except Exception as e:  # noqa: BLE001
        server_unavailable("a second control plane", e)
    try:
        for ns in (SYSTEM, APPS, OTHER):
            cp.kubectl("create", "namespace", ns)
        yield cp
    finally:
        cp.stop()


def helm(cp: ControlPlane, *args: str, check: bool = True) -> str:
    r = subprocess.run([str(cp.bin_dir / "helm"), *args], env=cp.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 or not check, r.stderr
    return r.stdout if r.returncode == 0 else ""


def installed(cp: ControlPlane) -> None:
    """The release as the install test leaves it, whichever xdist worker ran that test (or none)."""
    if not helm(cp, "status", RELEASE, "-n", SYSTEM, check=False):
        helm(cp, "install", RELEASE, str(CHART), "-n", SYSTEM, "--set", f"watchNamespaces={{{APPS}}}")


def can_i(cp: ControlPlane, verb: str, resource: str, namespace: str | None = None, *, subresource: str = "",
          sa: str = SA) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    return cp.kubectl(*args, check=False).stdout.strip() == "yes"


def test_helm_install_creates_the_crds_and_rbac_that_is_sufficient_and_not_excessive(fresh: ControlPlane) -> None:
    helm(fresh, "install", RELEASE, str(CHART), "-n", SYSTEM, "--set", f"watchNamespaces={{{APPS}}}")
    crds = json.loads(fresh.kubectl("get", "crd", "-o", "json").stdout)["items"]
    assert {c["metadata"]["name"] for c in crds} >= {"celeryapps.celery-operator.dev",
                                                     "celeryworkerpools.celery-operator.dev"}
    deployment = json.loads(fresh.kubectl("get", "deployment", RELEASE, "-n", SYSTEM, "-o", "json").stdout)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False

    # Sufficient for what the operator calls (the e2e suite runs it under exactly these rules) ...
    assert can_i(fresh, "get", "secrets", APPS)
    assert can_i(fresh, "patch", "deployments", APPS, subresource="scale")
    assert can_i(fresh, "patch", "celeryworkerpools", APPS, subresource="status")
    # ... and not excessive: nothing outside the watched namespace, nothing it does not manage.
    assert not can_i(fresh, "get", "secrets", OTHER)
    assert not can_i(fresh, "list", "celeryapps.celery-operator.dev", OTHER)
    assert not can_i(fresh, "create", "pods", APPS)
    assert not can_i(fresh, "delete", "nodes")
    assert not can_i(fresh, "create", "clusterrolebindings")


def test_helm_upgrade_applies_a_crd_change_and_uninstall_keeps_crds_and_crs(fresh: ControlPlane,
                                                                           tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "celeryqueues.yaml"
    crd: dict[str, Any] = yaml.safe_load(crd_file.read_text())
    spec_props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec_props["upgradeProbe"] = {"type": "string", "description": "A field added by a chart upgrade."}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    installed(fresh)
    helm(fresh, "upgrade", RELEASE, str(chart), "-n", SYSTEM, "--reuse-values")
    served = json.loads(fresh.kubectl("get", "crd", "celeryqueues.celery-operator.dev", "-o", "json").stdout)
    props = served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["upgradeProbe"]["description"] == "A field added by a chart upgrade."

    apply(fresh, APPS, sample_documents())
    helm(fresh, "uninstall", RELEASE, "-n", SYSTEM)
    assert fresh.kubectl("get", "crd", "celeryqueues.celery-operator.dev", check=False).returncode == 0
    left = fresh.kubectl("get", "celeryapps,celeryqueues", "-n", APPS, "-o", "name").stdout.split()
    assert "celeryapp.celery-operator.dev/proj" in left
    assert fresh.kubectl("get", "deployment", RELEASE, "-n", SYSTEM, check=False).returncode != 0


def test_plain_manifests_give_the_same_objects_as_the_chart_defaults(fresh: ControlPlane) -> None:
    def ids(text: str) -> set[tuple[str, str, str]]:
        return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", ""))
                for d in yaml.safe_load_all(text) if d}

    chart = ids(helm(fresh, "template", RELEASE, str(CHART), "-n", RELEASE))
    plain = ids(fresh.kubectl("kustomize", str(REPO / "deploy")).stdout)
    assert chart <= plain, chart - plain
    assert all(k == "Namespace" for k, _, _ in plain - chart), plain - chart
    fresh.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "deploy"))


def test_helm_installed_operator_pod_reconciles_and_scales_a_pool_up_and_down(
        cluster: Cluster, namespace: str, crds_installed: Path, images: Images, broker_vhost: Vhost,
        backend_db: RedisDb, tmp_path: Path) -> None:
    cp = cluster.control_plane
    release = f"op-{namespace}"
    repo, tag = images.operator.rsplit(":", 1)
    # The CRDs are the session's (crds_installed): this release leaves them alone.
    helm(cp, "install", release, str(CHART), "-n", namespace, "--set", f"watchNamespaces={{{namespace}}}",
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "crds.enabled=false")
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-celery-operator"
        assert can_i(cp, "patch", "deployments", namespace, subresource="scale", sa=sa)
        secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
        secret(cp, namespace, "backend", url=backend_db.url)
        docs = sample_documents(image=images.sample_tasks)
        for d in docs:
            if d["kind"] == "CeleryWorkerPool" and d["metadata"]["name"] == "low":
                d["spec"]["autoscaling"].update(pollIntervalSeconds=1, scaleDownStabilizationSeconds=5)
        apply(cp, namespace, docs)
        [operator] = wait_for(lambda: pod_names(cp, namespace, "app.kubernetes.io/name=celery-operator",
                                                ready_only=True) or None, 120, "the operator pod ready")
        try:
            wait_ready(cp, namespace, "celeryapp", "proj", 120)
            for q in ("default", "high-queue", "low-queue"):
                wait_ready(cp, namespace, "celeryqueue", q, 60)
            cm = wait_for(lambda: get(cp, namespace, "configmap", "proj-celery-config"), 30, "ConfigMap")
            env = celery_client_env(tmp_path, cm, broker_vhost.url, backend_db.url)

            def replicas() -> int:
                return int((get(cp, namespace, "deployment", "proj-low") or {})["spec"]["replicas"])

            assert replicas() == 0
            celery_call(cluster, env, "publish:low_queue:30:2")
            wait_for(lambda: replicas() == 3, 90, "the pod's autoscaler scaled low up to 3 for 30 messages")
            wait_for(lambda: replicas() == 0, 240, "and back down to 0 once the workers drained them")
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{pod_logs(cp, namespace, operator)[-5000:]}") from None
        log = pod_logs(cp, namespace, operator)
        assert "Forbidden" not in log and " 403" not in log, log[-5000:]
        pod = json.loads(cp.kubectl("get", "pod", operator, "-n", namespace, "-o", "json").stdout)
        assert pod["spec"]["serviceAccountName"] == f"{release}-celery-operator"
    finally:
        helm(cp, "uninstall", release, "-n", namespace, "--wait")
