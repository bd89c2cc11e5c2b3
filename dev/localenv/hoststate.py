"""What a node changes on the host outside its own directory, recorded before and put back after.

The kubelet sets kernel sysctls (`protectKernelDefaults: false`), kube-proxy and the harness add
iptables chains, containerd, the kubelet and libcni create directories at fixed paths, the kubelet
makes cgroups and mounts. `HostState.record()` notes how things were (saved as JSON next to the
node's state, so `make down` can restore after a crashed run too) and `restore()` undoes exactly
what was not there before: nothing that existed before is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Every sysctl the kubelet, kube-proxy or the harness may write.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths containerd 1.6, the kubelet and libcni use whatever their configuration says.
FIXED_DIRS = ("/run/containerd", "/var/lib/cni", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES = {"ipv4": ("iptables", "iptables-save"), "ipv6": ("ip6tables", "ip6tables-save")}
TABLES = ("filter", "nat", "mangle", "raw")


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", name).write_text(value + "\n")


def _save(family: str, table: str) -> str:
    save = IPTABLES[family][1]
    if shutil.which(save) is None:
        return ""
    r = subprocess.run([save, "-t", table], capture_output=True, text=True, check=False)
    return r.stdout if r.returncode == 0 else ""


def chains_of(dump: str) -> list[str]:
    """Chain names declared in an `iptables-save` dump (`:NAME POLICY [counters]`)."""
    return [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")]


def rules_of(dump: str) -> list[list[str]]:
    """`-A CHAIN ...` rules of a dump, as argument lists (iptables-save quotes with double quotes)."""
    import shlex

    return [shlex.split(line)[1:] for line in dump.splitlines() if line.startswith("-A ")]


def _target(rule: list[str]) -> str | None:
    for flag in ("-j", "-g", "--jump", "--goto"):
        if flag in rule:
            i = rule.index(flag)
            return rule[i + 1] if i + 1 < len(rule) else None
    return None


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below `prefix`, deepest first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                out.append(point)
    return sorted(set(out), key=lambda p: (-p.count("/"), p))


def unmount_all(prefix: str) -> None:
    for _ in range(5):  # mounts can stack on one point
        points = mounts_under(prefix)
        if not points:
            return
        for p in points:
            if subprocess.run(["umount", p], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", p], capture_output=True, check=False)


def _cgroup_children() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not CGROUP_ROOT.is_dir():
        return out
    for sub in sorted(CGROUP_ROOT.iterdir()):
        with contextlib.suppress(OSError):
            if sub.is_dir() and not sub.is_symlink():
                out[sub.name] = sorted(p.name for p in sub.iterdir() if p.is_dir())
    return out


def _remove_cgroup_tree(path: Path) -> None:
    """Kill what still runs in a cgroup tree (containers outlive a killed shim), then rmdir it, leaves first."""
    for _ in range(3):
        pids = set()
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in procs.read_text().split()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        time.sleep(0.5)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        os.rmdir(path)


@dataclass
class HostState:
    file: str
    sysctls: dict[str, str] = field(default_factory=dict)
    absent_dirs: list[str] = field(default_factory=list)
    chains: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # family -> table -> chains
    cgroups: dict[str, list[str]] = field(default_factory=dict)  # subsystem -> top-level children
    links: list[str] = field(default_factory=list)  # network links the harness created

    @classmethod
    def record(cls, file: Path) -> HostState:
        state = cls(
            file=str(file),
            sysctls={k: v for k in SYSCTLS if (v := read_sysctl(k)) is not None},
            absent_dirs=[d for d in FIXED_DIRS if not os.path.exists(d)],
            chains={fam: {t: chains_of(_save(fam, t)) for t in TABLES} for fam in IPTABLES},
            cgroups=_cgroup_children(),
        )
        state.save()
        return state

    def save(self) -> None:
        Path(self.file).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, file: Path) -> HostState:
        return cls(**json.loads(file.read_text()))

    def add_link(self, name: str) -> None:
        self.links.append(name)
        self.save()

    def restore(self) -> list[str]:
        """Undo what changed since `record`; returns what was undone (for logs)."""
        done: list[str] = []
        for link in self.links:
            if subprocess.run(["ip", "link", "del", link], capture_output=True, check=False).returncode == 0:
                done.append(f"link {link}")
        for fam, tables in self.chains.items():
            done += self._restore_iptables(fam, tables)
        for name, value in self.sysctls.items():
            if read_sysctl(name) != value:
                write_sysctl(name, value)
                done.append(f"sysctl {name}={value}")
        for d in self.absent_dirs:
            if os.path.exists(d):
                unmount_all(d)
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"dir {d}")
        for sub, before in self.cgroups.items():
            for child in sorted(set(_cgroup_children().get(sub, [])) - set(before)):
                _remove_cgroup_tree(CGROUP_ROOT / sub / child)
                done.append(f"cgroup {sub}/{child}")
        return done

    def _restore_iptables(self, family: str, tables: dict[str, list[str]]) -> list[str]:
        exe = IPTABLES[family][0]
        done = []
        for table, before in tables.items():
            dump = _save(family, table)
            new = [c for c in chains_of(dump) if c not in before]
            if not new:
                continue
            for rule in rules_of(dump):
                if rule[0] not in new and _target(rule) in new:
                    subprocess.run([exe, "-w", "-t", table, "-D", *rule], capture_output=True, check=False)
            for chain in new:
                subprocess.run([exe, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
            for chain in new:
                subprocess.run([exe, "-w", "-t", table, "-X", chain], capture_output=True, check=False)
            done.append(f"{exe} -t {table}: {len(new)} chains")
        return done


def snapshot() -> dict[str, object]:
    """What a node may change on this host, as it is now (`localenv hostcheck` compares two)."""
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=False).stdout
                       or "[]")
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout.splitlines()
    procs = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                name = (d / "comm").read_text().strip()
                if name in ("containerd", "kubelet", "kube-proxy", "containerd-shim", "socat", "coredns",
                            "etcd", "kube-apiserver") or name.startswith("containerd-shim"):
                    procs.append(name)
    with open("/proc/self/mountinfo") as f:
        mounts = sorted({line.split()[4] for line in f if "celery-operator" in line or "/pytest-of-" in line
                         or "/run/containerd" in line or "/var/lib/kubelet" in line})
    return {
        "sysctls": {k: read_sysctl(k) for k in SYSCTLS},
        "links": sorted(link["ifname"] for link in links),
        "routes": sorted(routes),
        "chains": {fam: {t: sorted(chains_of(_save(fam, t))) for t in TABLES} for fam in IPTABLES},
        "dirs": {d: os.path.exists(d) for d in FIXED_DIRS},
        "cgroups": _cgroup_children(),
        "processes": sorted(procs),
        "mounts": mounts,
    }


def differences(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return [f"{k}: before {before.get(k)!r}, after {after.get(k)!r}" for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)]
