"""The local control plane behaves like a cluster's: controllers run, GC works, clients talk to it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from localenv.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def _deployment(name: str) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    })


def _wait(fn, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def test_deployment_gets_a_replicaset_from_the_controller_manager(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=_deployment("web"))

    def replicasets() -> list[dict]:  # type: ignore[type-arg]
        out = control_plane.kubectl("get", "rs", "-n", namespace, "-l", "app=web", "-o", "json").stdout
        return json.loads(out)["items"]

    rs = _wait(replicasets)
    assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs[0]["spec"]["replicas"] == 2


def test_deleting_an_owner_garbage_collects_what_it_owns(control_plane: ControlPlane, namespace: str) -> None:
    owner = json.loads(control_plane.kubectl(
        "create", "configmap", "owner", "-n", namespace, "-o", "json").stdout)
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "child", "namespace": namespace,
                          "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                               "uid": owner["metadata"]["uid"]}]}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(child))
    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace)

    def child_gone() -> bool:
        r = control_plane.kubectl("get", "configmap", "child", "-n", namespace, check=False)
        return r.returncode != 0 and "NotFound" in r.stderr

    assert _wait(child_gone)


def test_namespace_deletion_completes(control_plane: ControlPlane) -> None:
    control_plane.kubectl("create", "namespace", "doomed")
    control_plane.kubectl("create", "configmap", "x", "-n", "doomed")
    control_plane.kubectl("delete", "namespace", "doomed", "--wait=false")

    def gone() -> bool:
        return control_plane.kubectl("get", "namespace", "doomed", check=False).returncode != 0

    assert _wait(gone, 90)


def test_rbac_is_enforced_for_service_accounts(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    r = control_plane.kubectl("auth", "can-i", "list", "secrets", "-n", namespace,
                              f"--as=system:serviceaccount:{namespace}:nobody", check=False)
    assert r.stdout.strip() == "no"


def test_kubectl_and_helm_talk_to_the_local_api_server(control_plane: ControlPlane) -> None:
    kv = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert kv["serverVersion"]["gitVersion"].startswith("v1.34.")
    helm = subprocess.run([str(control_plane.bin_dir / "helm"), "version", "--short"],
                          env=control_plane.env(), capture_output=True, text=True, check=True)
    assert helm.stdout.startswith("v3.")
    ls = subprocess.run([str(control_plane.bin_dir / "helm"), "list", "-A", "-o", "json"],
                        env=control_plane.env(), capture_output=True, text=True, check=True)
    assert json.loads(ls.stdout) == []
