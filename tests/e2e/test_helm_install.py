"""The chart installs on a fresh control plane, its RBAC is enough and no more, CRDs upgrade and stay."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localenv.controlplane import ControlPlane
from localenv.podrunner import PodRunner
from localenv.procs import REPO
from tests.fixtures.operator import apply, sample_documents, secret, wait_ready
from tests.fixtures.servers import server_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CHART = REPO / "charts" / "celery-operator"
RELEASE, SYSTEM, APPS, OTHER = "celery-operator", "celery-system", "apps", "other"
SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: the chart must create the CRDs, not find them."""
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("helm-cp"))
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


def helm(cp: ControlPlane, *args: str) -> str:
    r = subprocess.run([str(cp.bin_dir / "helm"), *args], env=cp.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def can_i(cp: ControlPlane, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={SA}"]
    args += ["-n", namespace] if namespace else []
    return cp.kubectl(*args, check=False).stdout.strip() == "yes"


def test_helm_install_gives_an_operator_whose_rbac_is_sufficient_and_not_excessive(
        fresh: ControlPlane, rabbitmq_vhost: Any, redis_db: Any) -> None:
    helm(fresh, "install", RELEASE, str(CHART), "-n", SYSTEM, "--set", f"watchNamespaces={{{APPS}}}")
    crds = json.loads(fresh.kubectl("get", "crd", "-o", "json").stdout)["items"]
    assert {c["metadata"]["name"] for c in crds} >= {"celeryapps.celery-operator.dev",
                                                     "celeryworkerpools.celery-operator.dev"}
    deployment = json.loads(fresh.kubectl("get", "deployment", RELEASE, "-n", SYSTEM, "-o", "json").stdout)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False

    # Not excessive: nothing outside the watched namespace, nothing it does not manage.
    assert can_i(fresh, "get", "secrets", APPS)
    assert not can_i(fresh, "get", "secrets", OTHER)
    assert not can_i(fresh, "list", "celeryapps.celery-operator.dev", OTHER)
    assert not can_i(fresh, "create", "pods", APPS)
    assert not can_i(fresh, "delete", "nodes")
    assert not can_i(fresh, "create", "clusterrolebindings")

    # Sufficient: the chart's own Deployment, run with a real token of the chart's ServiceAccount,
    # reconciles the sample topology.
    secret(fresh, APPS, "broker", url=rabbitmq_vhost.url, managementUrl=rabbitmq_vhost.management_url)
    secret(fresh, APPS, "backend", url=redis_db.url)
    apply(fresh, APPS, sample_documents())
    with PodRunner(fresh.kubeconfig) as runner:
        [operator] = runner.run_deployment(SYSTEM, RELEASE, service_account=True)
        try:
            wait_ready(fresh, APPS, "celeryapp", "proj", 120)
            for q in ("default", "high-queue", "low-queue"):
                wait_ready(fresh, APPS, "celeryqueue", q, 60)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{operator.logs()[-5000:]}") from None
        assert "Forbidden" not in operator.logs()
    assert fresh.kubectl("get", "deployment", "proj-low", "-n", APPS, check=False).returncode == 0


def test_helm_upgrade_applies_a_crd_change_and_uninstall_keeps_crds_and_crs(fresh: ControlPlane,
                                                                           tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "celeryqueues.yaml"
    crd: dict[str, Any] = yaml.safe_load(crd_file.read_text())
    spec_props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec_props["upgradeProbe"] = {"type": "string", "description": "A field added by a chart upgrade."}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    helm(fresh, "upgrade", RELEASE, str(chart), "-n", SYSTEM, "--reuse-values")
    served = json.loads(fresh.kubectl("get", "crd", "celeryqueues.celery-operator.dev", "-o", "json").stdout)
    props = served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["upgradeProbe"]["description"] == "A field added by a chart upgrade."

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
