"""Credentials for the API server, found the way kubectl finds them.

In a pod: the service account's token, CA and namespace, and `KUBERNETES_SERVICE_HOST`/`_PORT`.
Elsewhere: the kubeconfig (`KUBECONFIG`'s files merged, the first value of each name winning, else
`~/.kube/config`), its current context: inline data or files (relative to the kubeconfig that names
them), a token or token file, basic auth, client certificates, and exec credential plugins
(`client.authentication.k8s.io`, as EKS, GKE and kubelogin use).

Done here rather than by the kubernetes client library: the operator does not depend on it. kopf
imports that library's generated models whenever it is installed (about 20 MiB of memory for
nothing the operator uses), and the library writes a kubeconfig's inline CA into temp files that
only an exit hook removes, so every killed process left them behind.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import kopf
import yaml

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_TIMEOUT_SECONDS: Final = 60.0
# The client.authentication.k8s.io versions an exec plugin may answer in.
EXEC_API_VERSIONS: Final = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


def login(environ: Mapping[str, str] | None = None, service_account: Path = SERVICE_ACCOUNT_DIR) -> kopf.ConnectionInfo:
    """In-cluster credentials if this runs in a pod, else the kubeconfig's; kopf.LoginError if neither."""
    env = os.environ if environ is None else environ
    conn = in_cluster(env, service_account) or from_kubeconfig(env)
    if conn is None:
        raise kopf.LoginError("no Kubernetes credentials: not in a pod (no KUBERNETES_SERVICE_HOST and "
                              f"{service_account}/token) and no kubeconfig (KUBECONFIG or ~/.kube/config)")
    return conn


def in_cluster(environ: Mapping[str, str], service_account: Path = SERVICE_ACCOUNT_DIR) -> kopf.ConnectionInfo | None:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = service_account / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ca, namespace = service_account / "ca.crt", service_account / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None,
        token=token.read_text().strip() or None,
        default_namespace=(namespace.read_text().strip() or None) if namespace.is_file() else None,
    )


def _kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    listed = [Path(p).expanduser() for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    if listed:
        return [p for p in listed if p.exists()] or listed[:1]  # kubectl skips missing files unless all are
    home = environ.get("HOME")
    default = Path(home) / ".kube" / "config" if home else Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


class _Merged:
    """The kubeconfig files merged as kubectl merges them; each entry keeps the directory of its file."""

    def __init__(self, paths: list[Path]) -> None:
        self.current: str | None = None
        self.entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"contexts": {}, "clusters": {},
                                                                           "users": {}}
        for path in paths:
            try:
                config = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise kopf.LoginError(f"kubeconfig {path}: {e}") from None
            if not isinstance(config, dict):
                raise kopf.LoginError(f"kubeconfig {path}: not a mapping")
            self.current = self.current or config.get("current-context") or None
            for section, field in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
                for item in config.get(section) or []:
                    if isinstance(item, dict) and "name" in item:
                        self.entries[section].setdefault(item["name"], (item.get(field) or {}, path.parent))

    def get(self, section: str, name: str | None, what: str) -> tuple[dict[str, Any], Path]:
        if not name or name not in self.entries[section]:
            raise kopf.LoginError(f"kubeconfig: {what} {name!r} is not defined")
        return self.entries[section][name]


def _file(entry: dict[str, Any], key: str, base: Path) -> str | None:
    value = entry.get(key)
    return None if not value else str(base / Path(value).expanduser())


def from_kubeconfig(environ: Mapping[str, str]) -> kopf.ConnectionInfo | None:
    paths = _kubeconfig_paths(environ)
    if not paths:
        return None
    merged = _Merged(paths)
    if not merged.current:
        raise kopf.LoginError(f"kubeconfig {os.pathsep.join(map(str, paths))}: no current-context")
    context, _ = merged.get("contexts", merged.current, "context")
    cluster, cluster_dir = merged.get("clusters", context.get("cluster"), "cluster")
    user, user_dir = merged.get("users", context.get("user"), "user") if context.get("user") else ({}, Path())
    if not cluster.get("server"):
        raise kopf.LoginError(f"kubeconfig: cluster {context.get('cluster')!r} has no server")

    token: str | None = user.get("token") or None
    if not token and user.get("tokenFile"):
        token = Path(_file(user, "tokenFile", user_dir) or "").read_text().strip() or None
    cert_path, cert_data = _file(user, "client-certificate", user_dir), user.get("client-certificate-data")
    key_path, key_data = _file(user, "client-key", user_dir), user.get("client-key-data")
    expiration: datetime.datetime | None = None
    if user.get("auth-provider"):
        provider = user["auth-provider"]
        if provider.get("name") != "oidc" or not (provider.get("config") or {}).get("id-token"):
            raise kopf.LoginError(f"kubeconfig: auth-provider {provider.get('name')!r} is not supported (kubectl "
                                  "dropped them in 1.26): use its exec credential plugin instead")
        token = provider["config"]["id-token"]
    if user.get("exec"):
        status = _run_exec(user["exec"], user_dir, cluster, environ)
        token = status.get("token") or token
        if status.get("clientCertificateData"):
            cert_path, cert_data = None, status["clientCertificateData"]
            key_path, key_data = None, status.get("clientKeyData")
        if status.get("expirationTimestamp"):
            expiration = datetime.datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))

    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_path=_file(cluster, "certificate-authority", cluster_dir),
        ca_data=cluster.get("certificate-authority-data") or None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        certificate_path=cert_path, certificate_data=cert_data,
        private_key_path=key_path, private_key_data=key_data,
        username=user.get("username") or None, password=user.get("password") or None,
        token=token,
        default_namespace=context.get("namespace") or None,
        proxy_url=cluster.get("proxy-url") or None,
        expiration=expiration,
    )


def _run_exec(spec: dict[str, Any], base: Path, cluster: dict[str, Any],
              environ: Mapping[str, str]) -> dict[str, Any]:
    """Run an exec credential plugin and return the status of the ExecCredential it prints."""
    command = str(spec.get("command") or "")
    if not command:
        raise kopf.LoginError("kubeconfig: exec has no command")
    if os.sep in command and not os.path.isabs(command):  # relative to the kubeconfig, as kubectl does
        command = str(base / command)
    api_version = spec.get("apiVersion") or EXEC_API_VERSIONS[0]
    info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    if spec.get("provideClusterInfo"):
        info["spec"]["cluster"] = {k: v for k, v in {
            "server": cluster.get("server"), "certificate-authority-data": cluster.get("certificate-authority-data"),
            "insecure-skip-tls-verify": cluster.get("insecure-skip-tls-verify")}.items() if v}
    env = {**environ, **{e["name"]: str(e.get("value", "")) for e in spec.get("env") or [] if "name" in e},
           "KUBERNETES_EXEC_INFO": json.dumps(info)}
    try:
        run = subprocess.run([command, *map(str, spec.get("args") or [])], env=env, capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=EXEC_TIMEOUT_SECONDS, check=False)
    except FileNotFoundError:
        hint = f": {spec['installHint']}" if spec.get("installHint") else ""
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r} not found{hint}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r}: {e}") from None
    if run.returncode != 0:
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r} exited {run.returncode}: "
                              f"{run.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        credential = json.loads(run.stdout)
    except ValueError:
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r} printed no ExecCredential JSON") from None
    if not isinstance(credential, dict) or credential.get("apiVersion") not in EXEC_API_VERSIONS:
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r} answered an ExecCredential of "
                              f"apiVersion {credential.get('apiVersion') if isinstance(credential, dict) else None!r}")
    status = credential.get("status") or {}
    if not status.get("token") and not status.get("clientCertificateData"):
        raise kopf.LoginError(f"kubeconfig: exec plugin {command!r} gave neither a token nor a client certificate")
    return dict(status)
