"""The first program of every local "container": set up its private view of the filesystem, then exec.

Started by ``podrunner`` as ``python -I podinit.py SPEC.json`` (stdlib only, so it starts fast and
runs under any interpreter). It

1. asks to be SIGKILLed when the thread that spawned it dies (no orphans if the runner is killed);
2. enters new mount and UTS namespaces (mounts made here are private: the host never sees them);
3. sets the hostname to the pod's hostname, as a container runtime does (Celery's ``%h``);
4. bind-mounts each volume onto its ``mountPath`` (parents first, as containerd sorts them),
   read-only where asked;
5. creates the working directory if missing, chdirs there and execs the container's argv with
   exactly the pod's environment (nothing of the runner's environment leaks in).

A mount point or working directory that does not exist on the host is created without touching
the host: its nearest existing ancestor is *shadowed* -- a tmpfs copy of that directory whose
entries are bind mounts of the originals is mounted over it (inside the namespace only), and the
missing directories are made in the tmpfs. When that ancestor is ``/`` itself, the shadow becomes
the process's root (``chroot``), since nothing can be mounted over a process's root directory.
Volume sources and the staging tmpfs are held by O_PATH descriptors first, so a volume mounted
over the host's /tmp (where they live) does not hide the ones mounted after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {source} on {target}")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Filesystem:
    """Tracks which directories can be written without reaching the host."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.shadowed: set[str] = set()  # tmpfs copies: creating entries directly in them is private
        self.owned: list[str] = [stage]  # whole subtrees that are ours (created dirs, volume dirs)

    def private(self, d: str) -> bool:
        return d in self.shadowed or any(_under(d, o) for o in self.owned)

    def _mirror(self, src: str, dst: str) -> None:
        st = os.stat(src)
        os.chmod(dst, st.st_mode & 0o7777)
        os.chown(dst, st.st_uid, st.st_gid)
        for entry in os.scandir(src):
            s, d = entry.path, os.path.join(dst, entry.name)
            try:
                if entry.is_symlink():
                    os.symlink(os.readlink(s), d)
                elif entry.is_dir(follow_symlinks=False):
                    os.mkdir(d)
                    mount(s, d, None, MS_BIND | MS_REC)
                else:
                    open(d, "w").close()
                    mount(s, d, None, MS_BIND)
            except OSError as e:  # an entry we cannot mirror is left out, loudly
                print(f"podinit: cannot mirror {s}: {e}", file=sys.stderr)

    def shadow(self, d: str) -> None:
        copy = tempfile.mkdtemp(dir=self.stage, prefix="shadow-")
        self._mirror(d, copy)
        if d == "/":
            os.chroot(copy)
            os.chdir("/")
        else:
            mount(copy, d, None, MS_BIND | MS_REC)
        self.shadowed.add(d)

    def ensure(self, path: str, directory: bool) -> str:
        """Make ``path`` exist (as a directory or a file) without changing the host; its real path."""
        path = os.path.normpath(path)
        if os.path.lexists(path) and os.path.exists(path):
            real = os.path.realpath(path)
            if directory != os.path.isdir(real):
                kind = "directory" if directory else "file"
                raise OSError(f"{path} exists and is not a {kind}")
            return real
        ancestor = path
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        rest = os.path.relpath(path, ancestor)
        if not os.path.exists(ancestor):  # a dangling symlink: follow it to where it points
            return self.ensure(os.path.join(os.path.realpath(ancestor), rest), directory)
        real_ancestor = os.path.realpath(ancestor)
        if not self.private(real_ancestor):
            self.shadow(real_ancestor)
        target = os.path.join(real_ancestor, rest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if directory:
            os.mkdir(target)
        else:
            open(target, "w").close()
        self.owned.append(os.path.join(real_ancestor, rest.split("/", 1)[0]))
        return target


def _pin(path: str) -> str:
    """A path to ``path`` that keeps working when something is mounted over it or its parents.

    Volume directories and the stage live under the host's /tmp, which a pod may well cover with
    an emptyDir; /proc/self/fd/N of an O_PATH descriptor still reaches the original directory.
    """
    return f"/proc/self/fd/{os.open(path, os.O_PATH)}"


def setup_and_exec(spec: dict[str, Any]) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != spec["parent_pid"]:  # the runner died before prctl took effect
        os._exit(137)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    mount("tmpfs", spec["stage"], "tmpfs", 0, "mode=0700")
    fs = Filesystem(_pin(spec["stage"]))
    sources = [(_pin(m["source"]), m) for m in spec["mounts"]]
    image = [(_pin(p), p) for p in spec.get("image_paths", []) if os.path.isdir(p)]
    targets: list[str] = []
    for source, m in sources:
        target = fs.ensure(m["target"], directory=os.path.isdir(source))
        mount(source, target, None, MS_BIND | MS_REC)
        if m.get("read_only"):
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        fs.owned.append(target)
        targets.append(target)
    # The image's files live in a real container's own root, never under a volume: put back any a
    # volume covered (only inside this namespace; the directory is made in the volume's scratch).
    for pinned, path in image:
        if any(_under(path, t) for t in targets):
            mount(pinned, fs.ensure(path, directory=True), None, MS_BIND | MS_REC)
    os.chdir(fs.ensure(spec["working_dir"], directory=True))
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    # Values from Secrets may not be UTF-8: the runner passes them through surrogateescape.
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    try:
        os.execvpe(argv[0], argv, env_bytes)
    except OSError as e:
        print(f"podinit: exec {argv[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup_and_exec(spec)
    except OSError as e:
        print(f"podinit: {e}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(128)


if __name__ == "__main__":
    main()
