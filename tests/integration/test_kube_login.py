"""The operator's credentials against a real API server: who it answers that we are, for each way of logging in."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from celery_operator.kube import login
from celery_operator.kube.client import KubeClient
from localenv.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def whoami(conn: Any) -> str:
    """The user name the API server authenticated (a SelfSubjectReview, what `kubectl auth whoami` asks)."""

    async def ask() -> str:
        client = KubeClient(conn)
        try:
            review = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                          body={"apiVersion": "authentication.k8s.io/v1",
                                                "kind": "SelfSubjectReview"})
            return str(review["status"]["userInfo"]["username"])
        finally:
            await client.close()

    return asyncio.run(ask())


@pytest.fixture
def sa_token(control_plane: ControlPlane, namespace: str) -> tuple[str, str]:
    control_plane.kubectl("create", "serviceaccount", "op", "-n", namespace)
    token = control_plane.create_token(namespace, "op", 600)
    return token, f"system:serviceaccount:{namespace}:op"


def test_a_kubeconfig_with_inline_certificates_logs_in_as_its_client_certificate(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    flat = control_plane.kubectl("config", "view", "--flatten", "--raw").stdout
    assert "client-certificate-data" in flat and "certificate-authority-data" in flat
    (tmp_path / "kc").write_text(flat)
    conn = login.login({"KUBECONFIG": str(tmp_path / "kc")}, tmp_path / "no-service-account")
    assert conn.ca_path is None and conn.certificate_path is None  # all inline: no file written for them
    assert whoami(conn) == "admin"
    assert not [p for p in tmp_path.iterdir() if p.name != "kc"]


def test_an_exec_plugin_logs_in_as_the_identity_of_the_token_it_prints(
    control_plane: ControlPlane, sa_token: tuple[str, str], tmp_path: Path
) -> None:
    token, user = sa_token
    plugin = tmp_path / "get-token"
    plugin.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                          "status": {{"token": os.environ["THE_TOKEN"]}}}}))
    """))
    plugin.chmod(0o755)
    (tmp_path / "kc").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": control_plane.server,
                                               "certificate-authority": str(control_plane.pki.ca)}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                  "command": "./get-token",
                                                  "env": [{"name": "THE_TOKEN", "value": token}]}}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    assert whoami(login.login({"KUBECONFIG": str(tmp_path / "kc")}, tmp_path / "none")) == user


def test_in_a_pod_the_service_account_token_and_the_service_address_are_used(
    control_plane: ControlPlane, sa_token: tuple[str, str], tmp_path: Path
) -> None:
    token, user = sa_token
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes(control_plane.pki.ca.read_bytes())
    (sa / "namespace").write_text(user.split(":")[2])
    address = urlsplit(control_plane.server)
    # What the kubelet puts in every pod's environment: the `kubernetes` Service's address.
    env = {"KUBERNETES_SERVICE_HOST": str(address.hostname), "KUBERNETES_SERVICE_PORT": str(address.port)}
    conn = login.login(env, sa)
    assert conn.default_namespace == user.split(":")[2]
    assert whoami(conn) == user
