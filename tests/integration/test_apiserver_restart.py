"""kube-apiserver restarted in place (what the fault suite does to a running cluster): the same command
line, etcd and port, every object kept, and the state file of an attached cluster names the new process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.procs import pid_alive
from tests.fixtures.servers import server_unavailable

pytestmark = pytest.mark.integration


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def test_a_restarted_api_server_keeps_its_command_line_and_objects_and_the_state_file_follows(
        tmp_path: Path) -> None:
    # A control plane of its own (no controllers): never the shared one, which other tests use.
    cp = ControlPlane(workdir=tmp_path / "cluster" / "control-plane", controller_manager=False, scheduler=False)
    try:
        cp.start()
    except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
        server_unavailable("a control plane", e)
    new = 0
    try:
        cp.kubectl("create", "configmap", "kept", "-n", "default")
        state_file = tmp_path / "state.json"  # as `make up` writes it; the restart goes through an attached copy
        state_file.write_text(json.dumps({"workdir": str(tmp_path / "cluster"), "server": cp.server,
                                          "control_plane_pids": cp.pids()}))
        attached = Cluster.attach(json.loads(state_file.read_text()), state_file=state_file)
        old = cp.pids()["kube-apiserver"]
        before = _cmdline(old)
        attached.restart_apiserver()
        new = json.loads(state_file.read_text())["control_plane_pids"]["kube-apiserver"]
        assert new != old and pid_alive(new) and not pid_alive(old)
        assert _cmdline(new) == before
        assert cp.kubectl("get", "configmap", "kept", "-n", "default", check=False).returncode == 0
    finally:
        if new:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(new, signal.SIGKILL)
        cp.stop()
