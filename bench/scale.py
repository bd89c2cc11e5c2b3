"""The operator at scale: convergence, silence at idle, memory, scrape time, sharding.

Starts its own control plane (no node: worker pools run at zero replicas, so no pod is needed) with
the API server's audit log on, a RabbitMQ on loopback, and `celery-operator run` processes under a
ServiceAccount token (the audit log tells their requests apart). For each size (apps x 10 pools, one
queue per pool, autoscaled between 0 and 5 with no backlog) it prints:

- converge: from the start of `kubectl apply --server-side` of the CRs until every worker Deployment
  exists, and after that apply returned (the issue's measure: the operator works while the CRs
  arrive), against the baseline measured in the same run: `kubectl apply --server-side` of the same
  rendered children (the operator's own `celery-operator render` output) into a fresh namespace;
- idle, after the topology settled, for two windows of `--idle` seconds: the operator's API writes per
  second by verb and reads by kind of request (from the audit log), its CPU (share of one core), its RSS.
  The operator's resync period is set to both windows, so one resync of every app falls in them: the
  quieter window gives the CPU between resyncs, the difference the CPU of one resync, and the two the
  idle CPU at the default resync period;
- `/metrics` scrape time: median and max of the scrapes made every 15 s during the idle windows, and
  the size of the text.

Then: RSS with `--big` CRs; the split of 200 apps between 2 and 3 replicas (`--shards` shards) and
the time until a SIGKILLed replica's shards are held by the others.

    python bench/scale.py [--sizes 10,20,50,100,200] [--idle 60] [--big 10000]
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO), str(REPO / "operator")]

import yaml  # noqa: E402

from celery_operator import api, heap  # noqa: E402
from celery_operator.controller.runtime import RESYNC_SECONDS  # noqa: E402
from celery_operator.offline import render_documents  # noqa: E402
from localenv.brokers import RabbitMQ  # noqa: E402
from localenv.controlplane import ControlPlane  # noqa: E402
from localenv.procs import free_port, spawn, stop  # noqa: E402

SA_NS, SA = "bench", "operator"
USER = f"system:serviceaccount:{SA_NS}:{SA}"
POOLS_PER_APP = 10
# Idle is measured once the deployment controller has written every Deployment's status, then every
# queue's status holds its consumer count (RabbitMQ's statistics listing is read every 30 s) and every
# app has been polled a few times.
SETTLE_SECONDS = 45
# During the idle windows /metrics is scraped as often as a Prometheus commonly does (the CPU figures include
# it); each app is polled every 10 s, so every poll series has changed between two scrapes.
SCRAPE_INTERVAL = 15.0


def crs(apps: int, pools: int = POOLS_PER_APP, poll: int = 10) -> list[dict[str, Any]]:
    v = api.API_VERSION
    out: list[dict[str, Any]] = []
    for a in range(apps):
        app = f"app-{a:04d}"
        out.append({"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": app},
                    "spec": {"image": "localhost/bench/app:1", "app": "bench.app",
                             "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                                     "managementUrlSecretRef": {"name": "broker",
                                                                                "key": "managementUrl"}}}}})
        for p in range(pools):
            q = f"{app}-q{p}"
            out.append({"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": q},
                        "spec": {"appRef": {"name": app}}})
            out.append({"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": f"{app}-p{p}"},
                        "spec": {"appRef": {"name": app}, "queues": [q], "autoscaling": {
                            "minReplicas": 0, "maxReplicas": 5, "targetMessagesPerReplica": 10,
                            "pollIntervalSeconds": poll}}})
    return out


def kubectl(cp: ControlPlane, *args: str, input: str | None = None, timeout: float = 900) -> str:
    return cp.kubectl(*args, input=input, timeout=timeout).stdout


def deployments(cp: ControlPlane, ns: str) -> int:
    out = kubectl(cp, "get", "deployments", "-n", ns, "-o", "name")
    return len(out.split())


def unsettled(cp: ControlPlane, ns: str) -> int:
    """Deployments the deployment controller has not finished with (its status writes are watch events
    the operator must follow: the cluster is not idle until they stop)."""
    items = json.loads(kubectl(cp, "get", "deployments", "-n", ns, "-o", "json"))["items"]

    def done(d: dict[str, Any]) -> bool:
        st = d.get("status") or {}
        reasons = {c.get("reason") for c in st.get("conditions") or []}
        return st.get("observedGeneration") == d["metadata"]["generation"] and "NewReplicaSetAvailable" in reasons

    return sum(1 for d in items if not done(d))


def unreported(cp: ControlPlane, ns: str) -> int:
    """Custom resources whose status does not yet say Ready for their generation."""
    items = json.loads(kubectl(cp, "get", "celeryapps,celeryqueues,celeryworkerpools", "-n", ns, "-o", "json"))["items"]

    def done(o: dict[str, Any]) -> bool:
        return any(c.get("type") == "Ready" and c.get("observedGeneration") == o["metadata"]["generation"]
                   for c in (o.get("status") or {}).get("conditions") or [])

    return sum(1 for o in items if not done(o))


def wait_settled(cp: ControlPlane, ns: str, timeout: float = 900) -> float:
    """Seconds until the deployment controller is done with every Deployment of `ns` and the operator
    has reported every custom resource's Ready condition for its generation."""
    t0 = time.monotonic()
    while unsettled(cp, ns) or unreported(cp, ns):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{ns}: the deployment controller did not finish in {timeout:.0f}s")
        time.sleep(1)
    return time.monotonic() - t0


def audit(cp: ControlPlane, since: float, until: float) -> collections.Counter[str]:
    """The operator's requests in [since, until) (epoch seconds): writes by verb, reads by verb."""
    counts: collections.Counter[str] = collections.Counter()
    for line in cp.audit_log.read_text().splitlines():
        e = json.loads(line)
        if e.get("user", {}).get("username") != USER or e.get("stage") != "ResponseComplete":
            continue
        t = datetime.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if since <= t < until:
            ref = e.get("objectRef")
            if ref:
                what = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            else:  # not a resource: discovery (/api, /apis/<group>/<version>), /version
                what = e.get("requestURI", "?").split("?")[0]
            counts[f"{e['verb']} {what}"] += 1
    return counts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fetch_metrics(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body: bytes = r.read()
    return body


def scrape_once_ms(port: int) -> float:
    t0 = time.perf_counter()
    fetch_metrics(port)
    return (time.perf_counter() - t0) * 1000


def scrape_ms(port: int) -> float:
    """Median of 5 scrapes in a row (what changed between them is little: a cheap scrape)."""
    return statistics.median(scrape_once_ms(port) for _ in range(5))


def metric(port: int, name: str) -> float:
    for line in fetch_metrics(port).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class Bench:
    def __init__(self, cp: ControlPlane, rabbit: RabbitMQ, tmp: Path) -> None:
        self.cp, self.rabbit, self.tmp = cp, rabbit, tmp
        kubectl(cp, "create", "namespace", SA_NS)
        kubectl(cp, "create", "serviceaccount", SA, "-n", SA_NS)
        kubectl(cp, "create", "clusterrolebinding", "bench-operator", "--clusterrole=cluster-admin",
                f"--serviceaccount={SA_NS}:{SA}")
        token = kubectl(cp, "create", "token", SA, "-n", SA_NS, "--duration=24h").strip()
        ca = base64.b64encode(cp.pki.ca.read_bytes()).decode()
        self.kubeconfig = tmp / "operator.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "op",
            "clusters": [{"name": "c", "cluster": {"server": cp.server, "certificate-authority-data": ca}}],
            "users": [{"name": "op", "user": {"token": token}}],
            "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op"}}]}))
        kubectl(cp, "apply", "--server-side", "-f", str(REPO / "crds"))
        kubectl(cp, "wait", "--for=condition=Established", "-f", str(REPO / "crds"))

    def namespace(self, ns: str) -> None:
        kubectl(self.cp, "create", "namespace", ns)
        self.rabbit.add_vhost(ns)
        kubectl(self.cp, "create", "secret", "generic", "broker", "-n", ns, f"--from-literal=url={self.rabbit.url(ns)}",
                f"--from-literal=managementUrl={self.rabbit.management_url}")

    def operator(self, *args: str, name: str = "op") -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {**self.cp.env(), "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(REPO / "operator")}
        proc = spawn([sys.executable, "-m", "celery_operator", "run", "--host", "127.0.0.1", "--port", str(port),
                      *args], self.tmp / f"{name}-{port}.log", env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                return proc, port
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"operator not ready; see {self.tmp}")

    def baseline(self, docs: list[dict[str, Any]], ns: str) -> float:
        """kubectl apply --server-side of the children the operator renders for `docs`."""
        kubectl(self.cp, "create", "namespace", ns)
        children = [o for o in render_documents(copy.deepcopy(docs), ns) if o["kind"] in ("ConfigMap", "Deployment")]
        for o in children:
            o["metadata"].pop("ownerReferences", None)  # their owners live in another namespace
        f = self.tmp / f"{ns}.yaml"
        f.write_text(yaml.safe_dump_all(children))
        t0 = time.monotonic()
        kubectl(self.cp, "apply", "--server-side", "-f", str(f))
        return time.monotonic() - t0

    def size(self, apps: int, idle: float) -> dict[str, Any]:
        ns = f"scale-{apps}"
        self.namespace(ns)
        docs = crs(apps)
        base = self.baseline(docs, f"baseline-{apps}")
        # Two idle windows and a resync period of both: one resync of every app falls in them. The quieter
        # window is the CPU between resyncs, the difference is the resync's cost, and together they give the
        # idle CPU at the default resync period. (A resync split across the two overstates the quiet one.)
        proc, port = self.operator("--namespace", ns, "--no-leader-election", "--resync-seconds", f"{2 * idle:g}")
        try:
            f = self.tmp / f"{ns}-crs.yaml"
            f.write_text(yaml.safe_dump_all(docs))
            t0 = time.monotonic()
            kubectl(self.cp, "apply", "--server-side", "-n", ns, "-f", str(f))
            applied = time.monotonic()
            want = apps * POOLS_PER_APP
            while deployments(self.cp, ns) < want:
                if time.monotonic() - t0 > 900:
                    raise SystemExit(f"{ns}: not converged in 900s")
                time.sleep(0.25)
            done = time.monotonic()
            wait_settled(self.cp, ns)
            time.sleep(SETTLE_SECONDS)  # statuses, first polls, the first consumer counts
            marks = [(cpu_seconds(proc.pid), time.time())]
            scrapes: list[float] = []
            for _ in range(2):
                end = time.monotonic() + idle
                while (left := end - time.monotonic()) > 0:  # scraped like Prometheus: all apps polled between
                    time.sleep(min(SCRAPE_INTERVAL, left))
                    if left > SCRAPE_INTERVAL:
                        scrapes.append(scrape_once_ms(port))
                marks.append((cpu_seconds(proc.pid), time.time()))
            time.sleep(2)  # the audit log is written asynchronously
            (c0, w0), (c1, w1), (c2, w2) = marks
            counts = audit(self.cp, w0, w2)
            windows = sorted([(c1 - c0) / (w1 - w0), (c2 - c1) / (w2 - w1)])  # CPU seconds per second
            resync = (windows[1] - windows[0]) * idle  # CPU seconds of one resync of every app
            return {"apps": apps, "pools": want, "converge": done - t0, "after_apply": done - applied,
                    "baseline": base, "idle": counts, "window": w2 - w0, "cpu_quiet": windows[0] * 100,
                    "resync": resync, "cpu": (windows[0] + resync / RESYNC_SECONDS) * 100,
                    "rss": rss_mib(proc.pid), "scrape": statistics.median(scrapes), "scrape_max": max(scrapes),
                    "scrape_bytes": len(fetch_metrics(port))}
        finally:
            stop(proc, 15)
            kubectl(self.cp, "delete", "namespace", ns, f"baseline-{apps}", "--wait=false")

    def big(self, total: int) -> dict[str, Any]:
        ns = "scale-big"
        self.namespace(ns)
        per_app = 1 + 2 * POOLS_PER_APP
        docs = crs(max(1, total // per_app), poll=3600)
        proc, port = self.operator("--namespace", ns, "--no-leader-election")
        try:
            f = self.tmp / "big.yaml"
            f.write_text(yaml.safe_dump_all(docs))
            kubectl(self.cp, "create", "-n", ns, "-f", str(f))
            apps = len([d for d in docs if d["kind"] == "CeleryApp"])
            while deployments(self.cp, ns) < apps * POOLS_PER_APP:
                time.sleep(1)
            wait_settled(self.cp, ns, timeout=1800)
            peak = rss_mib(proc.pid)
            time.sleep(heap.TRIM_SECONDS + 5)  # idle: the operator's next heap trim (heap.py)
            return {"crs": len(docs), "rss_settled": peak, "rss": rss_mib(proc.pid), "scrape": scrape_ms(port)}
        finally:
            stop(proc, 15)
            kubectl(self.cp, "delete", "namespace", ns, "--wait=false")

    def sharding(self, replicas: int, apps: int, shards: int) -> dict[str, Any]:
        ns = f"shard-{replicas}"
        self.namespace(ns)
        f = self.tmp / f"{ns}.yaml"
        f.write_text(yaml.safe_dump_all(crs(apps, pools=2, poll=3600)))
        kubectl(self.cp, "create", "-n", ns, "-f", str(f))
        ops = [self.operator("--namespace", ns, "--shards", str(shards), "--lease-name", ns, "--lease-namespace",
                             SA_NS, "--identity", f"{ns}-r{i}", name=f"{ns}-r{i}") for i in range(replicas)]
        try:
            deadline = time.monotonic() + 300
            owned: list[float] = []
            while time.monotonic() < deadline:
                owned = [metric(port, "celery_operator_owned_apps") for _, port in ops]
                if sum(owned) == apps and min(owned) > 0:
                    break
                time.sleep(1)
            killed, _ = ops[0]
            t0 = time.monotonic()
            killed.send_signal(signal.SIGKILL)
            while time.monotonic() - t0 < 120:
                if sum(metric(port, "celery_operator_shards_held") for _, port in ops[1:]) == shards:
                    break
                time.sleep(0.2)
            takeover = time.monotonic() - t0
            return {"replicas": replicas, "owned": owned, "even": apps / replicas, "takeover": takeover}
        finally:
            for proc, _ in ops:
                stop(proc, 15)
            kubectl(self.cp, "delete", "namespace", ns, "--wait=false")


def main() -> int:
    # SIGTERM (a timeout, a kill) unwinds like Ctrl-C: the control plane and RabbitMQ are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,20,50,100,200", help="apps per run (x 10 pools)")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--big", type=int, default=10_000, help="custom resources for the memory run (0: skip)")
    ap.add_argument("--shards", type=int, default=12, help="shards for the sharding runs (0: skip them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            ControlPlane(workdir=Path(tmp) / "cp", scheduler=False) as cp, RabbitMQ(Path(tmp) / "rabbit") as rabbit:
        bench = Bench(cp, rabbit, Path(tmp))
        rows = [bench.size(int(n), args.idle) for n in args.sizes.split(",") if n]
        if rows:
            print("\n## Converge, idle and resources (one operator, apps x 10 autoscaled pools; "
                  f"idle: {2 * args.idle:g} s holding one resync of every app)\n")
            print("| apps | pools | converge (ratio) | after CR apply (ratio) | kubectl --server-side | idle writes/s "
                  "(by verb) | idle reads | idle CPU between resyncs | one resync (CPU) | "
                  f"idle CPU at the default {RESYNC_SECONDS:g} s resync | RSS | /metrics |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                writes = {k: v for k, v in r["idle"].items() if not k.startswith(("get", "list", "watch"))}
                reads = {k: v for k, v in r["idle"].items() if k.startswith(("get", "list"))}
                per_s = sum(writes.values()) / r["window"]
                by_verb = ", ".join(f"{k} {v / r['window']:.3f}" for k, v in sorted(writes.items())) or "none"
                by_kind = f" ({', '.join(f'{k} {v}' for k, v in sorted(reads.items()))})" if reads else ""
                print(f"| {r['apps']} | {r['pools']} | {r['converge']:.1f} s ({r['converge'] / r['baseline']:.2f}x) | "
                      f"{r['after_apply']:.1f} s ({r['after_apply'] / r['baseline']:.2f}x) | "
                      f"{r['baseline']:.1f} s | {per_s:.3f} ({by_verb}); "
                      f"{per_s / r['apps']:.4f}/app | {sum(reads.values())} in {r['window']:.0f} s{by_kind} | "
                      f"{r['cpu_quiet']:.2f} % | {r['resync']:.2f} s | {r['cpu']:.2f} % | {r['rss']:.0f} MiB | "
                      f"{r['scrape']:.1f} ms (max {r['scrape_max']:.1f}; {r['scrape_bytes'] / 1e6:.1f} MB) |")
        if args.big:
            b = bench.big(args.big)
            print(f"\n## Memory: {b['crs']} custom resources: RSS {b['rss']:.0f} MiB at idle "
                  f"({b['rss_settled']:.0f} MiB as the last status was written), /metrics {b['scrape']:.1f} ms")
        if not args.shards:
            return 0
        print(f"\n## Sharding: 200 apps on {args.shards} shards\n")
        print("| replicas | apps per replica | even share | worst deviation | takeover of a SIGKILLed replica |")
        print("|---|---|---|---|---|")
        for n in (2, 3):
            s = bench.sharding(n, 200, args.shards)
            worst = max(abs(o - s["even"]) / s["even"] for o in s["owned"]) * 100
            print(f"| {n} | {', '.join(str(int(o)) for o in s['owned'])} | {s['even']:.0f} | {worst:.0f} % | "
                  f"{s['takeover']:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
