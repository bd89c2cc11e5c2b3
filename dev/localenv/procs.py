"""Small helpers shared by every server the harness starts: ports, waits, process groups."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]


class Process(Protocol):
    """What `stop` and `wait_until` use of a process: `subprocess.Popen`, or a forked one the tests hold."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ServerError(RuntimeError):
    """A server could not be started; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Process | None = None,
               log: Path | None = None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval)
    raise ServerError(f"{what} not ready after {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    """The last lines of a server's log, for error messages."""
    if log is None:
        return ""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log})"


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent exits (Linux PR_SET_PDEATHSIG), even
    by SIGKILL. The parent is the thread that forked it, so a process started from a thread that ends
    first gets `sig` then: call it only for processes started from a long-lived thread."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent exited before the prctl: nobody would send it
        os.kill(os.getpid(), sig)


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, *, tied: bool = False) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, output to `log`. `tied`: it gets SIGTERM when this process
    ends, however it ends (what a test starts must not outlive a killed pytest); started from the main
    thread only, the one that lives as long as the process (elsewhere it is not tied)."""
    tie = die_with_parent if tied and threading.current_thread() is threading.main_thread() else None
    fh = log.open("ab")
    try:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, preexec_fn=tie)
    finally:
        fh.close()


def stop(proc: Process | None, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def read_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (REPO / "dev" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out
