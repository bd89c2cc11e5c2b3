"""The suite's fork server (tests/fixtures/preforked.py) keeps each child's exit code its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from localenv.procs import REPO
from tests.fixtures.preforked import ForkServer

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")  # the pid the kernel gave last; the next fork takes the next


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "dev"), str(REPO)])}
    s = ForkServer.start([], env, tmp_path / "sock", tmp_path / "server.log", preload=())
    yield s
    s.stop()


def test_a_child_given_an_exited_childs_pid_is_running_not_exited_with_the_old_childs_code(
        server: ForkServer, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("choosing the next pid (kernel.ns_last_pid) needs root, as the suite does")
    exits = tmp_path / "exits.py"
    exits.write_text("raise SystemExit(7)\n")
    waits = tmp_path / "waits.py"
    waits.write_text("import pathlib, sys, time\nwhile not pathlib.Path(sys.argv[1]).exists():\n    time.sleep(0.05)\n")
    go = tmp_path / "go"
    old = server.fork([], {}, tmp_path / "old.log", script=exits)
    assert old.wait(30) == 7

    for _ in range(20):  # another process on the machine can take the pid first: try again
        NS_LAST_PID.write_text(str(old.pid - 1))
        new = server.fork([str(go)], {"PATH": os.environ.get("PATH", "")}, tmp_path / "new.log", script=waits)
        if new.pid == old.pid:
            break
        go.touch()
        new.wait(30)
        go.unlink()
    else:
        pytest.fail(f"no child was given pid {old.pid} again in 20 forks")

    assert new.poll() is None  # running: not the old child's 7
    assert old.poll() == 7
    go.touch()
    assert new.wait(30) == 0
