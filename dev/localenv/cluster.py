"""The local cluster: the control plane, one kubelet node, its add-ons and the images pods run.

`Cluster(workdir).start()` builds what is missing (binaries and images, cached), starts etcd, the
apiserver, the controller manager and the scheduler, then containerd, the kubelet and kube-proxy,
loads the images into containerd, and applies CoreDNS and the local-path provisioner. `stop()`
undoes all of it, on the host too (localenv.node).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localenv import addons
from localenv.controlplane import ControlPlane
from localenv.images import Images
from localenv.node import CLUSTER_DNS_IP, CLUSTER_DOMAIN, Node
from localenv.procs import REPO

# Images every cluster loads: the sandbox, the add-ons, and what tests and the demo run.
NODE_IMAGES = ("pause", "coredns", "local-path-provisioner", "debian")
WORKLOAD_IMAGES = ("operator", "sample-tasks", "sample-tasks-newer", "rabbitmq", "redis", "flower")


@dataclass
class Cluster:
    workdir: Path | None = None
    images: Images = field(default_factory=Images)
    control_plane: ControlPlane = field(init=False)
    node: Node = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    state_file: Path | None = None  # where `make up` wrote `state()`: kept true when a process restarts
    _own_workdir: bool = False

    def __post_init__(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="celery-operator-cluster-"))
            self._own_workdir = True
        self.control_plane = ControlPlane(workdir=self.workdir / "control-plane")
        self.node = Node(self.control_plane, self.workdir / "node", self.images.ref("pause"))

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _timed(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 1)

    def start(self) -> None:
        t0 = time.monotonic()
        self.images.build(*NODE_IMAGES, *WORKLOAD_IMAGES)
        self._timed("images built", t0)
        try:
            t = time.monotonic()
            self.control_plane.start()
            self._timed("control plane", t)
            t = time.monotonic()
            self.node.start_runtime()
            self.images.import_into(self.node.ctr, *NODE_IMAGES, *WORKLOAD_IMAGES)
            self._timed("images imported", t)
            t = time.monotonic()
            self.node.start_kubelet()
            self._timed("node ready", t)
            t = time.monotonic()
            addons.apply(self.control_plane, coredns_image=self.images.ref("coredns"),
                         cluster_dns_ip=CLUSTER_DNS_IP, cluster_domain=CLUSTER_DOMAIN,
                         provisioner_image=self.images.ref("local-path-provisioner"),
                         helper_image=self.images.ref("debian"), volumes_dir=self.node.volumes_dir)
            addons.wait_available(self.control_plane)
            self._timed("add-ons", t)
        except BaseException:
            self.stop()
            raise
        self._timed("total", t0)

    def state(self) -> dict[str, object]:
        """What another process needs to use (`attach`) or stop this cluster after this one exits."""
        cp = self.control_plane
        return {"workdir": str(self.workdir), "kubeconfig": str(cp.kubeconfig), "server": cp.server,
                "bin_dir": str(cp.bin_dir), "control_plane_pids": cp.pids(),
                "images": {n: self.images.ref(n) for n in WORKLOAD_IMAGES}}

    def detach(self) -> dict[str, object]:
        """Leave the cluster running after this process exits (`make up`); returns its state."""
        self.node.detach()
        return self.state()

    @classmethod
    def attach(cls, state: dict[str, Any], state_file: Path | None = None) -> Cluster:
        """A cluster `make up` started: usable, and `stop()` stops it."""
        c = cls(workdir=Path(state["workdir"]), state_file=state_file)
        c.control_plane = ControlPlane.attach(c.workdir / "control-plane", state["server"],  # type: ignore[operator]
                                              state["control_plane_pids"])
        c.node = Node(c.control_plane, c.workdir / "node", c.images.ref("pause"))  # type: ignore[operator]
        return c

    def restart_apiserver(self) -> float:
        """Restart kube-apiserver on the same etcd and port (ControlPlane.restart_apiserver); an attached
        cluster's state file gets the new process id, so `make down` still stops it. Returns the downtime."""
        down = self.control_plane.restart_apiserver()
        if self.state_file is not None and self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            state["control_plane_pids"] = self.control_plane.pids()
            self.state_file.write_text(json.dumps(state, indent=2))
        return down

    def refresh_images(self) -> list[str]:
        """Build and load the images whose current tag the node lacks (after a source change)."""
        have = set(self.node.ctr("images", "ls", "-q").stdout.split())
        missing = [n for n in (*NODE_IMAGES, *WORKLOAD_IMAGES) if self.images.ref(n) not in have]
        if missing:
            self.images.import_into(self.node.ctr, *missing)
        return missing

    def image(self, name: str) -> str:
        """The tag pods use for one of the project's images (operator, sample-tasks, rabbitmq, redis, flower)."""
        return self.images.ref(name)

    def stop(self) -> None:
        try:
            self.node.stop()
        finally:  # a node that failed to start (another one runs here) must not keep the control plane up
            self.control_plane.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def reuse_state_file() -> Path:
    """Where `make up` wrote its cluster's state: LOCALENV_REUSE=<state.json>, else `.local/state.json`."""
    flag = os.environ.get("LOCALENV_REUSE", "")
    return Path(flag) if flag not in ("", "1") else REPO / ".local" / "state.json"


@contextlib.contextmanager
def running_or_own(workdir: Path | None = None) -> Iterator[Cluster]:
    """The cluster `make up` started when there is one (`reuse_state_file()`), its images rebuilt from the
    current sources and left running after the block; else a cluster of the block's own (in `workdir`, or a
    temporary directory), stopped after it. One node runs per machine: never both."""
    state = reuse_state_file()
    if state.exists():
        c = Cluster.attach(json.loads(state.read_text()), state_file=state)
        c.refresh_images()
        yield c
        return
    with Cluster(workdir=workdir) as c:
        yield c
