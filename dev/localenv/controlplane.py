"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The API server runs with the Node and RBAC authorizers and NodeRestriction, a client CA (the admin
kubeconfig uses a client certificate in system:masters), service-account token signing (TokenRequest
works) and what a kubelet needs to be reached for logs, exec and port-forward (`localenv.node` adds the
node). Everything binds 127.0.0.1 on random ports.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localenv import binaries
from localenv.pki import PKI, KeyPair, kubeconfig
from localenv.procs import ServerError, free_port, pid_alive, spawn, stop, wait_until

SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
NODE_NAME = "localhost"  # the apiserver reaches the kubelet by this name (127.0.0.1), see localenv.node
FRONT_PROXY_CLIENT = "front-proxy-client"  # the API server's identity towards extension API servers
APPLY_FIELD_MANAGER = "localenv"  # what `ControlPlane.apply` owns in server-side apply
# Pauses between tries of a request the API server could not answer (no connection, 429, 5xx): about 30 s in
# all, long enough for a restart of the API server or a busy moment to pass.
RETRY_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0)
APISERVER_STOP_SECONDS = 3.0  # a restart: SIGTERM, SIGKILL if still there after this long


def write_kubeconfig(path: Path, server: str, pki: PKI, pair: KeyPair, user: str = "admin") -> None:
    """A kubeconfig with file paths, written as JSON (valid YAML)."""
    path.write_text(json.dumps(kubeconfig(server, pki.ca, pair, user), indent=2))


@dataclass
class ControlPlane:
    """Start with `start()` (or as a context manager); everything binds 127.0.0.1 on random ports."""

    workdir: Path | None = None
    controller_manager: bool = True
    scheduler: bool = True
    audit: bool = True  # log service accounts' requests (what benchmarks and fault tests read)
    bin_dir: Path = field(default_factory=lambda: Path())
    server: str = ""
    kubeconfig: Path = field(default_factory=lambda: Path())
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _attached: dict[str, int] = field(default_factory=dict)
    _own_workdir: bool = False
    _admin_tls: ssl.SSLContext | None = field(default=None, repr=False)
    _resources: dict[str, tuple[str, str, bool]] = field(default_factory=dict, repr=False)  # discovery
    _connections: threading.local = field(default_factory=threading.local, repr=False)  # api_request's

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pki(self) -> PKI:
        assert self.workdir is not None
        return PKI(self.workdir / "pki")

    def log(self, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{name}.log"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON line per request a service account made."""
        assert self.workdir is not None
        return self.workdir / "audit.log"

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
        pki = self.pki
        pki.create()
        pki.issue("apiserver", "kube-apiserver", client=False, server_names=(
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"), server_ips=("127.0.0.1", KUBERNETES_SERVICE_IP))
        admin = pki.issue("admin", "admin", ("system:masters",))
        pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
        pki.issue("front-proxy-client", FRONT_PROXY_CLIENT, ca="front-proxy-ca")
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
        self._procs["kube-apiserver"] = spawn(self._apiserver_argv(f"http://127.0.0.1:{etcd_port}", api_port),
                                              self.log("kube-apiserver"))
        self._wait_apiserver(timeout, self._procs["kube-apiserver"])
        self.kubeconfig = self.workdir / "kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, pki, admin)

        if self.controller_manager:
            self._procs["kube-controller-manager"] = spawn([
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--root-ca-file={pki.ca}", f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--use-service-account-credentials=false",
                # No cloud, no pod CIDR allocation (the node's CNI has its own range), no CSR signing.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-route,-service,"
                "-ttl,-bootstrapsigner,-tokencleaner,-csrsigning,-csrapproving,-csrcleaner,"
                "-endpointslicemirroring",
                "--concurrent-gc-syncs=5", "--v=0",
            ], self.log("kube-controller-manager"))
            wait_until(self._default_service_account_exists, timeout, "kube-controller-manager",
                       self._procs["kube-controller-manager"], self.log("kube-controller-manager"))
        if self.scheduler:
            self._procs["kube-scheduler"] = spawn([
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--v=0",
            ], self.log("kube-scheduler"))

    def _apiserver_argv(self, etcd_url: str, api_port: int) -> list[str]:
        assert self.workdir is not None
        pki = self.pki
        audit: list[str] = []
        if self.audit:
            policy = self.workdir / "audit-policy.json"
            # Service accounts' requests (the operator's, as tests and benchmarks run it), at Metadata level.
            policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                          "omitStages": ["RequestReceived"],
                                          "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                                                    {"level": "None"}]}))
            audit = [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                     "--audit-log-maxsize=200", "--audit-log-maxbackup=1", "--audit-log-format=json"]
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--secure-port={api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={pki.pair('apiserver').cert}", f"--tls-private-key-file={pki.pair('apiserver').key}",
            f"--client-ca-file={pki.ca}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # The kubelet serves on 127.0.0.1 under the node name `localhost` (localenv.node).
            "--kubelet-preferred-address-types=Hostname",
            f"--kubelet-client-certificate={pki.pair('apiserver-kubelet-client').cert}",
            f"--kubelet-client-key={pki.pair('apiserver-kubelet-client').key}",
            f"--kubelet-certificate-authority={pki.ca}",
            "--enable-priority-and-fairness=false", "--profiling=false",
            "--endpoint-reconciler-type=none", "--v=0", *audit,
            # The aggregation layer, as on any cluster: the API server proxies external.metrics.k8s.io to
            # KEDA's adapter (an APIService) with its front-proxy client certificate and the caller's
            # identity in request headers; it dials the adapter's endpoints (not a ClusterIP: the host
            # routes to pod addresses on the bridge).
            f"--requestheader-client-ca-file={pki.front_proxy_ca}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.pair('front-proxy-client').cert}",
            f"--proxy-client-key-file={pki.pair('front-proxy-client').key}",
            "--enable-aggregator-routing=true",
        ]

    def _wait_apiserver(self, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
        pki = self.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.pair("admin").cert), str(pki.pair("admin").key))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=3) as r:
                return bool(r.status == 200)

        wait_until(ready, timeout, "kube-apiserver", proc, self.log("kube-apiserver"))

    def restart_apiserver(self, timeout: float = 90.0) -> float:
        """Stop kube-apiserver and start it again with the very command line it ran (the same etcd, port
        and flags, whichever checkout started it; every object stays); returns how long it did not answer.
        Clients (the kubelet, kube-proxy, operators) must reconnect."""
        own = self._procs.get("kube-apiserver")
        pid = own.pid if own is not None else self._attached["kube-apiserver"]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        down = time.monotonic()
        # SIGTERM; it stops listening at once but may linger draining requests: SIGKILL after a few seconds.
        if own is not None:
            stop(own, APISERVER_STOP_SECONDS)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + APISERVER_STOP_SECONDS
            while time.monotonic() < deadline and pid_alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, "kube-apiserver to exit")
        proc = spawn(argv, self.log("kube-apiserver"))
        if own is not None:
            self._procs["kube-apiserver"] = proc
        else:
            self._attached["kube-apiserver"] = proc.pid
        self._wait_apiserver(timeout, proc)
        return time.monotonic() - down

    def _default_service_account_exists(self) -> bool:
        try:
            return self.api_get("/api/v1/namespaces/default/serviceaccounts/default", timeout=5)[0] == 200
        except OSError:  # not listening yet
            return False

    # -- reads without a kubectl process ---------------------------------------------------------------
    # Tests poll objects many times a second across workers; a kubectl process per read costs a Go start
    # and its discovery cache, a GET here a request on a TLS context made once.

    def _tls(self) -> ssl.SSLContext:
        if self._admin_tls is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca))
            ctx.load_cert_chain(str(self.pki.pair("admin").cert), str(self.pki.pair("admin").key))
            self._admin_tls = ctx
        return self._admin_tls

    def api_get(self, path: str, timeout: float = 30, **params: str) -> tuple[int, bytes]:
        """GET `path` as the admin: (HTTP status, body); the status of an error too, never raised."""
        return self.api_request("GET", path, timeout=timeout, **params)

    def api_request(self, method: str, path: str, body: object = None, timeout: float = 30,
                    content_type: str = "application/json", **params: str) -> tuple[int, bytes]:
        """`method` on `path` as the admin, `body` sent as JSON (`content_type`: a PATCH's kind, e.g.
        application/merge-patch+json): (HTTP status, body); the status of an error too, never raised (a refused
        or timed-out connection is: OSError).

        Each thread keeps its connection open between requests: a TLS handshake costs the API server and
        this process about 3 ms of CPU, and tests poll. A request on a kept connection the server has
        closed meanwhile (it drops idle ones) is sent once more on a new one: the server never read it."""
        target = path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data else {}
        for attempt in range(2):
            conn, reused = self._connection(timeout)
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionResetError,
                    BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
                self._drop_connection()
                if reused and attempt == 0:
                    continue
                raise OSError(f"{method} {path}: {e!r}") from e
            except http.client.HTTPException as e:
                self._drop_connection()
                raise OSError(f"{method} {path}: {e!r}") from e
            except BaseException:
                self._drop_connection()
                raise
            if response.will_close:
                self._drop_connection()
            return int(response.status), bytes(payload)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connection(self, timeout: float) -> tuple[http.client.HTTPSConnection, bool]:
        """This thread's connection to the API server, and whether it was used before."""
        kept: tuple[str, http.client.HTTPSConnection] | None = getattr(self._connections, "kept", None)
        if kept is not None and kept[0] == self.server:
            conn = kept[1]
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.timeout = timeout
                return conn, True
            except OSError:  # its socket is gone: a new connection
                pass
        self._drop_connection()
        url = urllib.parse.urlsplit(self.server)
        conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout,
                                           context=self._tls())
        self._connections.kept = (self.server, conn)
        return conn, False

    def _drop_connection(self) -> None:
        kept: tuple[str, http.client.HTTPSConnection] | None = getattr(self._connections, "kept", None)
        self._connections.kept = None
        if kept is not None:
            kept[1].close()

    def create_namespace(self, name: str, *, exist_ok: bool = False) -> None:
        """Create a namespace (a test's own, many per run: a request, not a kubectl process)."""
        status, body = self.api_request("POST", "/api/v1/namespaces",
                                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        if status not in (200, 201) and not (exist_ok and status == 409):
            raise ServerError(f"creating namespace {name}: {status} {body[:300].decode(errors='replace')}")

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace, without waiting (`kubectl delete namespace --wait=false`)."""
        status, body = self.api_request("DELETE", f"/api/v1/namespaces/{name}")
        if status not in (200, 202, 404):
            raise ServerError(f"deleting namespace {name}: {status} {body[:300].decode(errors='replace')}")

    def api_request_retried(self, method: str, path: str, body: object = None,
                            content_type: str = "application/json", **params: str) -> tuple[int, bytes]:
        """`api_request`, tried again while the API server cannot answer (no connection, 429, 5xx; see
        RETRY_PAUSES): the first other answer, or the last one. ServerError when the last try had no
        connection."""
        for pause in RETRY_PAUSES:
            try:
                status, payload = self.api_request(method, path, body, content_type=content_type, **params)
            except OSError:
                status, payload = 0, b""
            if status != 0 and status != 429 and status < 500:
                return status, payload
            time.sleep(pause)
        try:
            return self.api_request(method, path, body, content_type=content_type, **params)
        except OSError as e:
            raise ServerError(f"{method} {path}: no answer from the API server: {e}") from e

    def read(self, path: str, **params: str) -> dict[str, Any] | None:
        """GET an object or a list: None when there is none (404); ServerError for any other refusal."""
        status, body = self.api_request_retried("GET", path, **params)
        if status == 404:
            return None
        if status != 200:
            raise ServerError(f"GET {path}: {status} {body[:500].decode(errors='replace')}")
        return dict(json.loads(body))

    def apply(self, docs: list[dict[str, Any]], namespace: str = "default") -> None:
        """`kubectl apply --server-side --force-conflicts -n NAMESPACE -f DOCS`: one apply PATCH per object,
        in order, from this process (a kubectl process costs about 0.1 s of CPU, and tests apply often).
        Objects that name no namespace go to `namespace`. A busy or restarting API server is waited for
        (`api_request_retried`); a refusal is raised with the server's message."""
        for doc in docs:
            group = doc["apiVersion"].rpartition("/")[0]
            kind = doc["kind"].lower() + (f".{group}" if group else "")
            name = doc["metadata"]["name"]
            ns = doc["metadata"].get("namespace") or namespace
            collection = self.collection(kind, ns)
            if collection is None:
                raise ServerError(f"the API server serves no {kind}")
            status, body = self.api_request_retried("PATCH", f"{collection}/{name}", doc, force="true",
                                                    content_type="application/apply-patch+yaml",
                                                    fieldManager=APPLY_FIELD_MANAGER)
            if status not in (200, 201):
                raise ServerError(f"applying {kind} {ns}/{name}: {status}: {body[:1000].decode(errors='replace')}")

    def create_token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """`kubectl create token SERVICE_ACCOUNT -n NAMESPACE --duration=SECONDS`: a TokenRequest."""
        status, body = self.api_request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": seconds}})
        if status not in (200, 201):
            raise ServerError(f"a token for {namespace}/{service_account}: {status} "
                              f"{body[:300].decode(errors='replace')}")
        return str(json.loads(body)["status"]["token"])

    def collection(self, kind: str, namespace: str | None = None) -> str | None:
        """The path of a resource's collection (in `namespace` when it is namespaced), the resource named
        as kubectl names it (singular, plural or short name, optionally `.group`, any case), from the API
        server's discovery (read again for a name not found: a CRD installed since); None when the
        server serves no such resource."""
        kind = kind.lower()
        if kind not in self._resources:
            self._resources = self._discover()
        found = self._resources.get(kind)
        if found is None:
            return None
        version, plural, namespaced = found
        return f"{version}/namespaces/{namespace}/{plural}" if namespaced and namespace else f"{version}/{plural}"

    def _discover(self) -> dict[str, tuple[str, str, bool]]:
        versions = [("/api/v1", "")]
        status, body = self.api_get("/apis")
        if status == 200:
            versions += [(f"/apis/{g['preferredVersion']['groupVersion']}", g["name"])
                         for g in json.loads(body).get("groups", [])]
        found: dict[str, tuple[str, str, bool]] = {}
        for version, group in reversed(versions):  # the core group's names win, as in kubectl
            status, body = self.api_get(version)
            if status != 200:
                continue
            for r in json.loads(body).get("resources", []):
                if "/" in r["name"]:  # a subresource
                    continue
                where = (version, r["name"], bool(r["namespaced"]))
                for name in {r["name"], r.get("singularName") or r["kind"].lower(), *(r.get("shortNames") or [])}:
                    found[name.lower()] = where
                    if group:
                        found[f"{name}.{group}".lower()] = where
        return found

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

    def pids(self) -> dict[str, int]:
        return {**self._attached, **{name: p.pid for name, p in self._procs.items()}}

    @classmethod
    def attach(cls, workdir: Path, server: str, pids: dict[str, int]) -> ControlPlane:
        """A control plane another process started (`make up`); `stop()` ends it through `pids`."""
        cp = cls(workdir=workdir, server=server, kubeconfig=workdir / "kubeconfig", bin_dir=binaries.bin_dir())
        cp._attached = dict(pids)
        return cp

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            stop(self._procs.pop(name, None))
            pid = self._attached.pop(name, None)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and pid_alive(pid):
                    time.sleep(0.1)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self._own_workdir and self.workdir is not None and not os.environ.get("KEEP_LOCALENV"):
            shutil.rmtree(self.workdir, ignore_errors=True)
