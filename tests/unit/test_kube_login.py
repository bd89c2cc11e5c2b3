"""Finding credentials as kubectl does: in a pod, else the kubeconfig (merged files, relative paths, exec plugins)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from celery_operator.kube import login


def write(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def config(user: dict[str, Any], *, context: str = "c", server: str = "https://10.0.0.1:6443",
           cluster: dict[str, Any] | None = None, namespace: str | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"cluster": f"{context}-cluster", "user": f"{context}-user"}
    if namespace:
        ctx["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": f"{context}-cluster", "cluster": {"server": server, **(cluster or {})}}],
            "users": [{"name": f"{context}-user", "user": user}],
            "contexts": [{"name": context, "context": ctx}]}


def service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("celery-system")
    return sa


@pytest.mark.parametrize(("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"),
                                              ("fd00::1", "https://[fd00::1]:443")])
def test_in_a_pod_the_service_account_and_the_service_env_are_used(tmp_path: Path, host: str, server: str) -> None:
    sa = service_account(tmp_path)
    conn = login.login({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443"}, sa)
    assert (conn.server, conn.token, conn.ca_path, conn.default_namespace) == (
        server, "sa-token", str(sa / "ca.crt"), "celery-system")


def test_outside_a_pod_the_kubeconfig_is_used_even_if_a_token_file_exists(tmp_path: Path) -> None:
    kc = write(tmp_path / "kc", config({"token": "t"}))
    conn = login.login({"KUBECONFIG": str(kc)}, service_account(tmp_path))  # no KUBERNETES_SERVICE_HOST
    assert (conn.server, conn.token) == ("https://10.0.0.1:6443", "t")


def test_no_pod_and_no_kubeconfig_is_an_error_naming_both(tmp_path: Path) -> None:
    with pytest.raises(kopf.LoginError, match=r"not in a pod .* no kubeconfig"):
        login.login({"HOME": str(tmp_path)}, tmp_path / "none")


def test_home_kube_config_is_the_default(tmp_path: Path) -> None:
    write(tmp_path / ".kube" / "config", config({"token": "home"}))
    assert login.login({"HOME": str(tmp_path)}, tmp_path / "none").token == "home"


def test_kubeconfig_files_merge_with_the_first_value_winning_and_paths_relative_to_their_file(
    tmp_path: Path,
) -> None:
    first = write(tmp_path / "a" / "kc", {
        "current-context": "second",
        "users": [{"name": "second-user", "user": {"client-certificate": "certs/me.crt",
                                                   "client-key": "/abs/me.key"}}]})
    second = write(tmp_path / "b" / "kc", {
        **config({"token": "ignored: the first file defines this user"}, context="second",
                 cluster={"certificate-authority": "ca.crt"}, namespace="work"),
        "current-context": "other"})
    conn = login.login({"KUBECONFIG": f"{first}:{tmp_path / 'missing'}:{second}"}, tmp_path / "none")
    assert conn.token is None
    assert conn.certificate_path == str(tmp_path / "a" / "certs" / "me.crt")
    assert conn.private_key_path == "/abs/me.key"
    assert conn.ca_path == str(tmp_path / "b" / "ca.crt")
    assert conn.default_namespace == "work"


def test_inline_data_insecure_proxy_and_basic_auth_are_passed_on(tmp_path: Path) -> None:
    kc = write(tmp_path / "kc", config(
        {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ", "username": "u", "password": "p"},
        cluster={"certificate-authority-data": "Q0E=", "insecure-skip-tls-verify": True,
                 "proxy-url": "http://proxy:3128"}))
    conn = login.login({"KUBECONFIG": str(kc)}, tmp_path / "none")
    assert (conn.ca_data, conn.certificate_data, conn.private_key_data) == ("Q0E=", "Q0VSVA==", "S0VZ")
    assert (conn.insecure, conn.proxy_url, conn.username, conn.password) == (True, "http://proxy:3128", "u", "p")


def test_a_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    kc = write(tmp_path / "kc", config({"tokenFile": "tok"}))
    assert login.login({"KUBECONFIG": str(kc)}, tmp_path / "none").token == "from-file"


@pytest.mark.parametrize(("broken", "message"), [
    ({"current-context": None}, "no current-context"),
    ({"current-context": "nope"}, "context 'nope' is not defined"),
    ({"clusters": []}, "cluster 'c-cluster' is not defined"),
])
def test_a_kubeconfig_that_names_what_it_lacks_is_an_error_saying_what(
    tmp_path: Path, broken: dict[str, Any], message: str
) -> None:
    kc = write(tmp_path / "kc", {**config({"token": "t"}), **broken})
    with pytest.raises(kopf.LoginError, match=message):
        login.login({"KUBECONFIG": str(kc)}, tmp_path / "none")


PLUGIN = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    if os.environ.get("FAIL"):
        sys.stderr.write("token expired, run: login\\n")
        sys.exit(3)
    status = {{"token": os.environ["PLUGIN_TOKEN"] + ":" + " ".join(sys.argv[1:]),
              "expirationTimestamp": "2030-01-01T00:00:00Z"}}
    if "cluster" in info["spec"]:
        status["token"] += "@" + info["spec"]["cluster"]["server"]
    print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}}))
""")


def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "plugin"
    path.parent.mkdir(parents=True)
    path.write_text(PLUGIN.format(python=sys.executable))
    path.chmod(0o755)
    return path


def exec_user(**extra: Any) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "./bin/plugin",
                     "args": ["--cluster", "prod"], "env": [{"name": "PLUGIN_TOKEN", "value": "tok"}], **extra}}


def test_an_exec_plugin_relative_to_the_kubeconfig_gives_the_token_and_its_expiry(tmp_path: Path) -> None:
    plugin(tmp_path)
    kc = write(tmp_path / "kc", config(exec_user()))
    conn = login.login({"KUBECONFIG": str(kc)}, tmp_path / "none")
    assert conn.token == "tok:--cluster prod"
    assert conn.expiration is not None and conn.expiration.year == 2030


def test_an_exec_plugin_that_asks_for_cluster_info_gets_it(tmp_path: Path) -> None:
    plugin(tmp_path)
    kc = write(tmp_path / "kc", config(exec_user(provideClusterInfo=True)))
    assert login.login({"KUBECONFIG": str(kc)}, tmp_path / "none").token == "tok:--cluster prod@https://10.0.0.1:6443"


def test_a_failing_exec_plugin_is_an_error_with_its_stderr(tmp_path: Path) -> None:
    plugin(tmp_path)
    kc = write(tmp_path / "kc", config(exec_user()))
    with pytest.raises(kopf.LoginError, match=r"exited 3: token expired, run: login"):
        login.login({"KUBECONFIG": str(kc), "FAIL": "1"}, tmp_path / "none")


def test_a_missing_exec_plugin_is_an_error_with_its_install_hint(tmp_path: Path) -> None:
    kc = write(tmp_path / "kc", config(exec_user(installHint="brew install the-plugin")))
    with pytest.raises(kopf.LoginError, match=r"not found: brew install the-plugin"):
        login.login({"KUBECONFIG": str(kc)}, tmp_path / "none")


def test_legacy_auth_providers_are_refused_with_the_way_out(tmp_path: Path) -> None:
    kc = write(tmp_path / "kc", config({"auth-provider": {"name": "gcp", "config": {"access-token": "x"}}}))
    with pytest.raises(kopf.LoginError, match=r"auth-provider 'gcp' is not supported.*exec credential plugin"):
        login.login({"KUBECONFIG": str(kc)}, tmp_path / "none")
    kc = write(tmp_path / "kc", config({"auth-provider": {"name": "oidc", "config": {"id-token": "jwt"}}}))
    assert login.login({"KUBECONFIG": str(kc)}, tmp_path / "none").token == "jwt"


def test_the_operator_process_runs_without_the_kubernetes_client_library() -> None:
    """kopf would import it (about 20 MiB) whenever it is installed, as it is here for the tests."""
    code = ("import sys; from celery_operator import cli; cli._without_client_libraries(); "
            "import celery_operator.runner, celery_operator.handlers; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes' "
            "and sys.modules[m] is not None)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout) == []
    with_library = subprocess.run([sys.executable, "-c", "import kopf, sys; print('kubernetes' in sys.modules)"],
                                  capture_output=True, text=True, check=True, timeout=120)
    assert with_library.stdout.strip() == "True"  # what the guard is for: kopf imports it when it can
