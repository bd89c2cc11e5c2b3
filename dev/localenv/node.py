"""A real Kubernetes node on this machine: containerd + runc, the kubelet, kube-proxy and a CNI bridge.

Everything is started here (there is no systemd) with its state under the node's directory. The
facts it relies on are in `../shared/REAL-NODE.md`; the important ones:

- containerd's CRI needs `restrict_oom_score_adj` (root lacks CAP_SYS_RESOURCE here) and runs
  with cgroupfs; its sandbox image is the pause image built locally (`localenv.images`).
- The node is named `localhost` and serves on 127.0.0.1 (the apiserver prefers the Hostname
  address); its InternalIP is the bridge's gateway address, since a node IP cannot be loopback.
- Network: one bridge, pods in POD_CIDR with no default route (only the Service range), no masquerade,
  and a mangle FORWARD guard that drops anything forwarded that does not both enter and leave the
  bridge: nothing is routed off the machine. Host processes reach pods and Services through the bridge.
- Pods reach the API server through the `kubernetes` Service: the apiserver listens on loopback only,
  so a relay (socat) listens on the gateway address and an EndpointSlice points the Service at it.

`stop()` stops the pods (crictl), the node's processes, unmounts what they mounted, and gives the
host back its sysctls, iptables chains, directories and cgroups (`localenv.hoststate`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from localenv.controlplane import NODE_NAME, SERVICE_CIDR, ControlPlane
from localenv.hoststate import HostState, unmount_all, write_sysctl
from localenv.pki import PKI, kubeconfig
from localenv.procs import ServerError, free_port, spawn, tail, wait_until

# Not podman's default 10.88.0.0/16: buildah (which builds the images) may create that bridge.
POD_CIDR = "10.244.0.0/16"
GATEWAY = "10.244.0.1"
BRIDGE = "celeryop0"
CLUSTER_DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
GUARD_CHAIN = "CELERY-OPERATOR-GUARD"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
HOST_TOOLS = ("containerd", "runc", "iptables", "ip", "socat", "conntrack", "unshare")
# One node per machine: bridge, iptables chains and the kubelet's fixed paths are machine-wide.
# ACTIVE_FILE says which node runs (its directory, its owner, its processes), so the next start (or
# `localenv down`) can tell a running node from one whose owner died, and clean up after the latter;
# LOCK_FILE only serializes that check.
LOCK_FILE = Path("/run/lock/celery-operator-node.lock")
ACTIVE_FILE = Path("/run/celery-operator-node.json")
# Seconds a second node waits for the machine's node to stop before giving up (0: fail at once).
ENV_WAIT = "CELERY_OPERATOR_NODE_WAIT_SECONDS"


class NodeBusy(ServerError):
    """Another node of this harness runs on the machine (one kubelet per machine)."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise ServerError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def cni_bin_dir() -> str:
    for d in CNI_BIN_DIRS:
        if Path(d, "bridge").exists():
            return d
    raise ServerError("CNI plugins not found (apt-get install containernetworking-plugins)")


def node_running() -> bool:
    return Path("/sys/class/net", BRIDGE).exists()


@dataclass
class Node:
    """One node attached to `control_plane`; `sandbox_image` must be imported before pods start."""

    control_plane: ControlPlane
    workdir: Path
    sandbox_image: str
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: HostState | None = None
    kubelet_port: int = 0
    _claimed: bool = False

    # -- paths -----------------------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def volumes_dir(self) -> Path:
        """Where the local-path provisioner creates PersistentVolumes (localenv.addons)."""
        return self.workdir / "volumes"

    @property
    def host_state_file(self) -> Path:
        return self.workdir / "host-state.json"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    @property
    def cluster_resolv_conf(self) -> Path:
        return self.workdir / "cluster-resolv.conf"

    def with_cluster_dns(self, argv: list[str]) -> list[str]:
        """`argv` in a private mount namespace whose /etc/resolv.conf points at the cluster DNS.

        A host process started this way (the operator in tests, a Celery client) resolves
        `<service>.<namespace>.svc` as a pod does; host -> Service traffic goes through kube-proxy.
        """
        self.cluster_resolv_conf.write_text(f"nameserver {CLUSTER_DNS_IP}\n"
                                            f"search svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n")
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.cluster_resolv_conf), *argv]

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise ServerError(f"ctr {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def crictl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.containerd_socket}"
        r = subprocess.run([str(self.control_plane.bin_dir / "crictl"), "--runtime-endpoint", endpoint,
                            "--image-endpoint", endpoint, "--timeout", "60s", *args],
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise ServerError(f"crictl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    # -- start -----------------------------------------------------------------------------------
    def start_runtime(self) -> None:
        """Host checks, network, containerd: what image imports need before the kubelet starts."""
        missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
        if missing:
            raise ServerError(f"missing on this machine: {', '.join(missing)} (make system-deps installs them)")
        if os.geteuid() != 0:
            raise ServerError("a kubelet node needs root")
        claim(self.workdir, float(os.environ.get(ENV_WAIT, "0")))
        self._claimed = True
        if node_running():
            self._release()
            raise NodeBusy(f"bridge {BRIDGE} exists but no node of this harness owns it: delete it "
                           f"(ip link del {BRIDGE}) or stop whatever created it")
        taken = [r for r in json.loads(_run("ip", "-j", "route", "show", "to", "match", GATEWAY).stdout or "[]")
                 if r.get("dst") != "default"]
        if taken:
            raise ServerError(f"the pod range {POD_CIDR} is already routed on this machine ({taken[0]}): "
                              "remove that route or network first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HostState.record(self.host_state_file)
        try:
            self._network()
            self._containerd()
        except BaseException:
            self.stop()
            raise

    def start_kubelet(self, timeout: float = 90) -> None:
        """kubelet and kube-proxy, the relay to the apiserver; returns when the node is Ready."""
        try:
            self._relay()
            self._kubelet()
            self._kube_proxy()
            wait_until(self._ready, timeout, "the node to be Ready", self._procs["kubelet"], self.log("kubelet"))
        except BaseException:
            self.stop()
            raise

    def _network(self) -> None:
        assert self.host is not None
        # The bridge exists before the kubelet starts: its gateway address is the node's InternalIP.
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        self.host.add_link(BRIDGE)
        _run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Host -> Service traffic leaves from the gateway address, so pods (with no default route) can answer.
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", GATEWAY)
        write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        # Forwarding is needed for pod -> Service -> pod; the guard keeps it on the bridge.
        _run("iptables", "-w", "-t", "mangle", "-N", GUARD_CHAIN)
        _run("iptables", "-w", "-t", "mangle", "-A", GUARD_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
        _run("iptables", "-w", "-t", "mangle", "-A", GUARD_CHAIN, "-j", "DROP")
        _run("iptables", "-w", "-t", "mangle", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)
        write_sysctl("net/ipv4/ip_forward", "1")
        net_d = self.workdir / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-celery-operator.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "celery-operator",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(self.workdir / "cni" / "ipam"),
                         "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                         "routes": [{"dst": SERVICE_CIDR}]},
            }, {"type": "loopback"}],
        }, indent=1))

    def _containerd(self) -> None:
        d = self.workdir / "containerd"
        d.mkdir(parents=True, exist_ok=True)
        config = d / "config.toml"
        config.write_text(f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the runtime's own
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir()}"
    conf_dir = "{self.workdir / 'cni' / 'net.d'}"
    max_conf_num = 1
""")
        self._spawn("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        wait_until(lambda: self.ctr("version", check=False, timeout=10).returncode == 0, 30, "containerd",
                   self._procs["containerd"], self.log("containerd"))

    def _relay(self) -> None:
        """socat from the gateway address to the apiserver's loopback port, and the Service's endpoints."""
        cp = self.control_plane
        port = free_port()
        api_port = cp.server.rsplit(":", 1)[1]
        self._spawn("apiserver-relay", ["socat", "-lf", str(self.log("apiserver-relay")),
                                        f"TCP-LISTEN:{port},bind={GATEWAY},reuseaddr,fork",
                                        f"TCP:127.0.0.1:{api_port}"])
        endpoints = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "celery-operator-localenv"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
        legacy = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
                  "subsets": [{"addresses": [{"ip": GATEWAY}], "ports": [{"name": "https", "port": port}]}]}
        cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": [endpoints, legacy]}))

    def _kubelet(self) -> None:
        cp = self.control_plane
        pki: PKI = cp.pki
        client = pki.issue("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",))
        serving = pki.issue("kubelet-serving", NODE_NAME, client=False, server_names=(NODE_NAME,),
                            server_ips=("127.0.0.1", GATEWAY))
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        kcfg = self.workdir / "kubelet.kubeconfig"
        kcfg.write_text(json.dumps(kubeconfig(cp.server, pki.ca, client, f"system:node:{NODE_NAME}")))
        resolv = self.workdir / "resolv.conf"
        # No upstream resolver: pods resolve cluster names only (nothing leaves the machine).
        resolv.write_text("options ndots:5\n")
        self.kubelet_port = free_port()
        endpoint = f"unix://{self.containerd_socket}"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki.ca)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": endpoint, "imageServiceEndpoint": endpoint,
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "clusterDomain": CLUSTER_DOMAIN, "clusterDNS": [CLUSTER_DNS_IP], "resolvConf": str(resolv),
            # Images are imported, never pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "podLogsDir": str(self.workdir / "pod-logs"),
            "serializeImagePulls": False, "maxPods": 250,
            "registerNode": True, "rotateCertificates": False, "serverTLSBootstrap": False,
            "staticPodPath": "", "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s",
        }
        cfg_file = self.workdir / "kubelet-config.json"
        cfg_file.write_text(json.dumps(config, indent=1))
        self._spawn("kubelet", [
            str(cp.bin_dir / "kubelet"), f"--config={cfg_file}", f"--kubeconfig={kcfg}",
            f"--root-dir={self.kubelet_dir}", f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}", "--v=1",
        ])

    def _kube_proxy(self) -> None:
        cp = self.control_plane
        pki: PKI = cp.pki
        pair = pki.issue("kube-proxy", "system:kube-proxy")
        kcfg = self.workdir / "kube-proxy.kubeconfig"
        kcfg.write_text(json.dumps(kubeconfig(cp.server, pki.ca, pair, "system:kube-proxy")))
        config = self.kube_proxy_config(kcfg)
        self._spawn("kube-proxy", [str(cp.bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._procs[name] = proc = spawn(argv, self.log(name))
        active = json.loads(ACTIVE_FILE.read_text())
        active["pids"].append(proc.pid)
        active.setdefault("procs", {})[name] = proc.pid
        ACTIVE_FILE.write_text(json.dumps(active))

    def _recorded_pids(self) -> dict[str, int]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            active = json.loads(ACTIVE_FILE.read_text())
            if active.get("workdir") == str(self.workdir):
                return dict(active.get("procs") or {})
        return {}

    def kube_proxy_config(self, kcfg: Path) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
            "clientConnection": {"kubeconfig": str(kcfg)},
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{free_port()}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{GATEWAY}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                         "minSyncPeriod": "0s"},
            # Zeros leave the host's conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        f = self.workdir / "kube-proxy-config.json"
        f.write_text(json.dumps(config, indent=1))
        return f

    def _ready(self) -> bool:
        r = self.control_plane.kubectl("get", "node", NODE_NAME, "-o",
                                       "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return r.stdout.strip() == "True"

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop pods and processes, unmount, give the host back what the node changed. Idempotent.

        Works on a node this object started and on one a previous process started (`make up`)."""
        pids = dict(self._recorded_pids())
        pids.update({n: p.pid for n, p in self._procs.items()})
        terminate(pids.pop("kubelet", None), str(self.workdir), grace=15)
        if self.ctr("version", check=False, timeout=10).returncode == 0:
            # Stopping pods runs the CNI teardown and unmounts their network namespaces.
            pods = self._ids("pods")
            if pods:
                self.crictl("stopp", *pods, check=False)
                self.crictl("rmp", "--force", *pods, check=False)
        for name in ("kube-proxy", "apiserver-relay", "containerd"):
            terminate(pids.pop(name, None), str(self.workdir), grace=15)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        self._procs.clear()
        kill_shims(self.containerd_socket)
        unmount_all(str(self.workdir))
        if self.host is None and self.host_state_file.exists():
            self.host = HostState.load(self.host_state_file)
        if self.host is not None:
            self.host.restore()
            self.host = None
            self.host_state_file.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._claimed:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(ACTIVE_FILE.read_text()).get("workdir") == str(self.workdir):
                    ACTIVE_FILE.unlink()
            self._claimed = False

    def detach(self) -> None:
        """The node outlives this process (`make up`): it counts as running until `localenv down`."""
        active = json.loads(ACTIVE_FILE.read_text())
        ACTIVE_FILE.write_text(json.dumps({**active, "detached": True}))
        self._claimed = False

    def _ids(self, what: str) -> list[str]:
        r = self.crictl(what, "-q", check=False)
        return r.stdout.split() if r.returncode == 0 else []

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{tail(self.log(n), 30)}" for n in ("containerd", "kubelet", "kube-proxy"))


def _alive(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or marker == ""
    except OSError:
        return False


def node_owner_alive(active: dict[str, object]) -> bool:
    """Whether the node ACTIVE_FILE describes is in use: its owner runs, or it was detached and runs."""
    owner = active.get("pid")
    if isinstance(owner, int) and _alive(owner, ""):
        return True
    pids = active.get("pids") or []
    return bool(active.get("detached")) and any(_alive(p, str(active["workdir"])) for p in pids)  # type: ignore[union-attr]


def claim(workdir: Path, wait_seconds: float) -> None:
    """Make this process the machine's node owner, waiting up to `wait_seconds` for another to stop."""
    _once_no_node(wait_seconds, claim_for=workdir)


def wait_for_no_node(wait_seconds: float) -> list[str]:
    """Return once no node runs on this machine (cleaning up after one that died), so a snapshot of the
    host taken next is the host as it is without any node; raise NodeBusy after `wait_seconds`."""
    return _once_no_node(wait_seconds, claim_for=None)


def _once_no_node(wait_seconds: float, claim_for: Path | None) -> list[str]:
    """With the machine's lock held once no node runs (one that died is cleaned up after): claim the
    machine for a node in `claim_for`, if given. Returns what the clean-up did."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            active = json.loads(ACTIVE_FILE.read_text()) if ACTIVE_FILE.exists() else None
            if active is None or not node_owner_alive(active):
                done = clean_up_after_crash()
                if claim_for is not None:
                    ACTIVE_FILE.write_text(json.dumps({"workdir": str(claim_for), "pid": os.getpid(), "pids": []}))
                return done
        finally:
            os.close(fd)
        if time.monotonic() >= deadline:
            raise NodeBusy(f"a node already runs on this machine ({active}): `make down` stops the demo's; "
                           f"set {ENV_WAIT} to wait for it")
        time.sleep(2)


def clean_up_after_crash() -> list[str]:
    """With the machine's lock held: undo what a node that died without stopping left behind."""
    if not ACTIVE_FILE.exists():
        return []
    active = json.loads(ACTIVE_FILE.read_text())
    workdir = Path(active["workdir"])
    for pid in active.get("pids", []):
        if _alive(pid, str(workdir)):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    kill_shims(workdir / "containerd" / "containerd.sock")
    unmount_all(str(workdir))
    done = []
    state = workdir / "host-state.json"
    if state.exists():
        done = HostState.load(state).restore()
        state.unlink()
    ACTIVE_FILE.unlink(missing_ok=True)
    return [f"cleaned up after the node in {workdir}", *done]


def terminate(pid: int | None, marker: str, grace: float = 10) -> None:
    """SIGTERM a process of this node (its command line names `marker`), SIGKILL it after `grace`."""
    if pid is None or not _alive(pid, marker):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, 15)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, marker):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def kill_shims(socket: Path) -> None:
    """containerd-shim-runc-v2 processes outlive containerd by design: end those of this node."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_dir.name), 9)
    time.sleep(0.2)
