"""What an idle worker pod costs the node, with its probes served over HTTP against the exec probes.

The operator renders a prefork pool (RabbitMQ, concurrency 1) on the local node, then stops (its own CPU is
not counted, and it does not undo what follows). Copies of that Deployment, differing only in their probes,
run in turns with `--pods` replicas each:

- `http`: as rendered, the worker answers `/readyz` and `/livez` itself (`api.HEALTH_PORT`);
- `exec`: the baseline, the exec probes the operator rendered before (and still renders for gevent and
  eventlet pools): a container exec and a Python start per probe;
- `none`: no probes at all, the floor;
- `empty`: no worker pod, what the node costs with nothing of ours on it.

For each arm: the seconds from scaling the Deployment up to every pod Ready (`none`: Running), then the
machine's busy CPU (/proc/stat, all processes: kubelet, containerd, runc and the pods) over `--seconds`
once the pods have settled. Turns rotate over `--rounds`; the medians are printed, per pod less `empty`,
with the ratio of `exec` to `http`. Nothing else should run on the machine meanwhile.

Runs on the local cluster `make up` started when there is one (`.local/state.json`, or
LOCALENV_REUSE=<state.json>), else starts its own for the run.

    .venv/bin/python bench/probe_cost.py [--pods 4] [--seconds 90] [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

from tests.e2e.faults import external_app, pool, queue  # noqa: E402
from tests.fixtures.cluster_brokers import PodRabbitMQ  # noqa: E402
from tests.fixtures.operator import OperatorProcess, apply, secret, wait_for  # noqa: E402

from celery_operator import api  # noqa: E402
from celery_operator.models import CeleryWorkerPool  # noqa: E402
from celery_operator.render import names, worker  # noqa: E402
from localenv.cluster import running_or_own  # noqa: E402
from localenv.controlplane import ControlPlane  # noqa: E402
from localenv.procs import free_port, spawn, stop  # noqa: E402

BROKERS_NAMESPACE = "bench-probe-cost-brokers"
ARMS = ("http", "exec", "none")
SETTLE_SECONDS = 30  # after Ready: the startup probe's last runs and the worker's boot are not idle cost
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
Body = dict[str, Any]


def busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (every process, every core)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def variant(rendered: Body, arm: str, exec_probes: dict[str, Body]) -> Body:
    """The rendered Deployment as arm `arm`: its own name and labels, 0 replicas, that arm's probes."""
    d: Body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"probes-{arm}"},
               "spec": copy.deepcopy(rendered["spec"])}
    d["spec"]["replicas"] = 0
    d["spec"]["selector"] = {"matchLabels": {"bench-arm": arm}}
    template = d["spec"]["template"]
    template["metadata"]["labels"] = {"bench-arm": arm}
    [c] = template["spec"]["containers"]
    if arm != "http":
        c["env"] = [e for e in c["env"] if e["name"] != api.ENV_HEALTH_PORT]
        c["ports"] = [p for p in c["ports"] if p["name"] != api.HEALTH_PORT_NAME]
        for probe in PROBES:
            c.pop(probe, None)
    if arm == "exec":
        c.update(exec_probes)
    return d


def arm_pods(cp: ControlPlane, ns: str, arm: str) -> list[Body]:
    listed = cp.read(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"bench-arm={arm}") or {}
    return list(listed.get("items") or [])


def settled(pod: Body, arm: str) -> bool:
    status = pod.get("status") or {}
    if arm == "none":
        return bool(status.get("phase") == "Running")
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def scale(cp: ControlPlane, ns: str, arm: str, replicas: int) -> None:
    status, body = cp.api_request("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/probes-{arm}/scale",
                                  {"spec": {"replicas": replicas}},
                                  content_type="application/merge-patch+json")
    assert status == 200, body[:300]


def turn(cp: ControlPlane, ns: str, arm: str, pods: int, seconds: float) -> tuple[float | None, float]:
    """(seconds to every pod Ready, machine busy CPU-seconds per second while they idle) for one arm."""
    ready_after = None
    if arm != "empty":
        started = time.monotonic()
        scale(cp, ns, arm, pods)
        wait_for(lambda: len(ps := arm_pods(cp, ns, arm)) == pods and all(settled(p, arm) for p in ps), 300,
                 f"{pods} {arm} pods ready", interval=0.5)
        ready_after = time.monotonic() - started
    time.sleep(SETTLE_SECONDS)
    b0, t0 = busy_seconds(), time.monotonic()
    time.sleep(seconds)
    rate = (busy_seconds() - b0) / (time.monotonic() - t0)
    if arm != "empty":
        scale(cp, ns, arm, 0)
        wait_for(lambda: not arm_pods(cp, ns, arm), 300, f"{arm} pods gone", interval=1)
    return ready_after, rate


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--seconds", type=float, default=90)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    ready: dict[str, list[float]] = {a: [] for a in ARMS}
    rates: dict[str, list[float]] = {a: [] for a in (*ARMS, "empty")}
    with tempfile.TemporaryDirectory(prefix="bench-probe-cost-") as d, running_or_own() as c:
        cp = c.control_plane
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        rabbit = PodRabbitMQ(cp, BROKERS_NAMESPACE, "rabbitmq", c.image("rabbitmq"))
        ns = f"bench-probe-cost-{uuid.uuid4().hex[:6]}"
        vhost = f"bench-{secrets.token_hex(4)}"
        cp.create_namespace(ns)
        op: OperatorProcess | None = None
        try:
            rabbit.deploy()
            rabbit.add_vhost(vhost)
            secret(cp, ns, "broker", url=rabbit.url(vhost), managementUrl=rabbit.management_url)
            argv = [sys.executable, "-m", "celery_operator", "run", "--namespace", ns, "--no-leader-election",
                    "--host", "127.0.0.1", "--port", str(port := free_port())]
            env = {**cp.env(), "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
            op = OperatorProcess(spawn(c.node.with_cluster_dns(argv), Path(d) / "operator.log", env=env), port,
                                 Path(d) / "operator.log")
            op.wait_healthy()
            apply(cp, ns, [external_app("proj", c.image("sample-tasks")), queue("proj", "work", "work"),
                           pool("proj", "w", ["work"], replicas=0, concurrency=1)])
            path = f"/apis/apps/v1/namespaces/{ns}/deployments/{names.worker('proj', 'w')}"
            rendered = wait_for(lambda: cp.read(path), 120, "the operator's worker Deployment")
            cr = wait_for(lambda: cp.read(f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{ns}/"
                                                  f"celeryworkerpools/w"), 30, "the pool")
            stop(op.proc, 10)  # from here on, nothing reconciles: the copies are ours alone
            exec_pool = CeleryWorkerPool.of({**cr, "spec": {**cr["spec"], "pool": api.EXEC_PROBE_POOLS[0]}})
            exec_probes = worker.probes(exec_pool)
            for arm in ARMS:
                body = variant(rendered, arm, exec_probes)
                status, text = cp.api_request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body)
                assert status == 201, text[:300]
            for r in range(args.rounds):
                for arm in (*ARMS[r % len(ARMS):], *ARMS[:r % len(ARMS)], "empty"):
                    after, rate = turn(cp, ns, arm, args.pods, args.seconds)
                    rates[arm].append(rate)
                    if after is not None:
                        ready[arm].append(after)
                    print(f"round {r + 1} {arm:>5}: ready after {after or 0:5.1f} s, machine busy "
                          f"{100 * rate:5.1f} % of a core", flush=True)
        finally:
            if op is not None:
                stop(op.proc, 10)
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            cp.kubectl("delete", "namespace", BROKERS_NAMESPACE, "--wait=false", check=False)
    empty = statistics.median(rates["empty"])
    per_pod = {a: (statistics.median(rates[a]) - empty) / args.pods for a in ARMS}
    print(f"\n{args.pods} idle prefork worker pods per arm, {args.seconds:.0f} s each, {args.rounds} rounds "
          f"(medians; the node with no worker pod: {100 * empty:.1f} % of a core)")
    print(f"{'probes':<8} {'ready after (s)':>16} {'per pod (% of a core)':>22} {'per pod-hour (CPU-s)':>21}")
    for a in ARMS:
        print(f"{a:<8} {statistics.median(ready[a]):>16.1f} {100 * per_pod[a]:>22.2f} {3600 * per_pod[a]:>21.0f}")
    if per_pod["http"] > 0:
        print(f"exec / http per pod: {per_pod['exec'] / per_pod['http']:.1f}x; "
              f"ready after, exec / http: {statistics.median(ready['exec']) / statistics.median(ready['http']):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
