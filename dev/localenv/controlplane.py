"""A real Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

No kubelet and no scheduler: pods are created by controllers but never run (the pod runner in
`localenv.podrunner` runs a Deployment's containers as local processes instead). The API server
runs with RBAC, a client CA (the admin kubeconfig uses a client certificate in system:masters),
service-account token signing (TokenRequest works) and the flags controller-runtime's envtest uses.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localenv import binaries
from localenv.procs import ServerError, free_port, spawn, stop, wait_until

SERVICE_CIDR = "10.0.0.0/24"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(d: Path) -> None:
    """CA, API server serving cert, admin client cert, service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "7", "-subj", "/CN=celery-operator-local-ca", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "7", "-extfile", "server.ext", cwd=d)
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "admin.key", "-out", "admin.csr",
             "-subj", "/O=system:masters/CN=admin", cwd=d)
    _openssl("x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "admin.crt", "-days", "7", "-extfile", "client.ext", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """Admin kubeconfig with a client certificate; written as JSON (valid YAML) to avoid a yaml dependency."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server,
                                                  "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"),
                                             "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin",
                                                  "namespace": "default"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(cfg, indent=2))


@dataclass
class ControlPlane:
    """Start with `start()` (or as a context manager); everything binds 127.0.0.1 on random ports."""

    workdir: Path | None = None
    controller_manager: bool = True
    bin_dir: Path = field(default_factory=lambda: Path())
    server: str = ""
    kubeconfig: Path = field(default_factory=lambda: Path())
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _own_workdir: bool = False

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pki(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki"

    def log(self, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{name}.log"

    def start(self, timeout: float = 90.0) -> None:
        self.bin_dir = binaries.ensure()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="celery-operator-cp-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        assert self.workdir is not None
        make_pki(self.pki)
        etcd_port, etcd_peer = free_port(), free_port()
        self._procs["etcd"] = spawn([
            str(self.bin_dir / "etcd"), "--name", "local", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], self.log("etcd"))
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2).status == 200,
                   30, "etcd", self._procs["etcd"], self.log("etcd"))

        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        p = self.pki
        self._procs["kube-apiserver"] = spawn([
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--secure-port={api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={p / 'server.crt'}", f"--tls-private-key-file={p / 'server.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=RBAC", "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--profiling=false",
            "--endpoint-reconciler-type=none", "--v=0",
        ], self.log("kube-apiserver"))
        ctx = ssl.create_default_context(cafile=str(p / "ca.crt"))
        ctx.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=3) as r:
                return bool(r.status == 200)

        wait_until(ready, timeout, "kube-apiserver", self._procs["kube-apiserver"], self.log("kube-apiserver"))
        self.kubeconfig = self.workdir / "kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, p)

        if self.controller_manager:
            self._procs["kube-controller-manager"] = spawn([
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--root-ca-file={p / 'ca.crt'}", f"--service-account-private-key-file={p / 'sa.key'}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,"
                "-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl,-bootstrapsigner,"
                "-tokencleaner,-csrsigning,-csrapproving,-csrcleaner,-endpointslicemirroring",
                "--concurrent-gc-syncs=5", "--v=0",
            ], self.log("kube-controller-manager"))
            wait_until(self._default_service_account_exists, timeout, "kube-controller-manager",
                       self._procs["kube-controller-manager"], self.log("kube-controller-manager"))

    def _default_service_account_exists(self) -> bool:
        r = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return r.returncode == 0

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ServerError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def env(self) -> dict[str, str]:
        """Environment for child processes (kubectl, helm, the operator) pointed at this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            stop(self._procs.pop(name, None))
        if self._own_workdir and self.workdir is not None and not os.environ.get("KEEP_LOCALENV"):
            shutil.rmtree(self.workdir, ignore_errors=True)
