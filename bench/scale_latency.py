"""Time from publishing a backlog to the worker Deployment's replicas changing.

Starts its own local control plane (no node: the latency is the operator's, no pod needs to run),
RabbitMQ and the operator (as a process), then for each poll
interval (1 s and 5 s) publishes 30 messages to an autoscaled pool's queue N times, measuring
publish → `spec.replicas` changed, purging the queue in between. Prints the median and the ratio
to the baseline measured in the same run: publish → the backlog visible in RabbitMQ's live queue
totals, polled every 20 ms (the floor for any depth-based scaler).

    python bench/scale_latency.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO)]

from kombu import Connection, Exchange, Producer  # noqa: E402
from tests.fixtures.operator import OperatorProcess, apply, secret, wait_for, wait_ready  # noqa: E402

from localenv.brokers import RabbitMQ  # noqa: E402
from localenv.controlplane import ControlPlane  # noqa: E402


def topology(poll: int) -> list[dict[str, object]]:
    from tests.e2e.test_autoscaling import topology as base

    # No pods run here (a control plane without a node): the image is never pulled.
    return base("localhost/bench/app:1", {"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 10,
                                           "scaleDownStabilizationSeconds": 0, "pollIntervalSeconds": poll})


def replicas(cp: ControlPlane, ns: str) -> int:
    out = cp.kubectl("get", "deployment", "proj-low", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout
    return int(out or 0)


def measure(cp: ControlPlane, rabbit: RabbitMQ, poll: int, runs: int, tmp: Path) -> tuple[list[float], list[float]]:
    from localenv.procs import free_port, spawn

    ns = f"bench-{poll}"
    vhost = f"bench-{poll}"
    rabbit.add_vhost(vhost)
    cp.kubectl("create", "namespace", ns)
    secret(cp, ns, "broker", url=rabbit.url(vhost), managementUrl=rabbit.management_url)
    secret(cp, ns, "backend", url="redis://127.0.0.1:1/0")
    port = free_port()
    proc = spawn([sys.executable, "-m", "celery_operator", "run", "--namespace", ns, "--host", "127.0.0.1",
                  "--port", str(port), "--no-leader-election"], tmp / f"operator-{poll}.log", env=cp.env())
    op = OperatorProcess(proc, port, tmp / f"operator-{poll}.log")
    samples: list[float] = []
    visible: list[float] = []

    def backlog() -> bool:
        qs = rabbit.api("GET", f"/api/queues/{vhost}?disable_stats=true&enable_queue_totals=true")
        q = next((q for q in qs if q["name"] == "low_queue"), {})
        return int(q.get("messages_ready") or 0) + int(q.get("messages_unacknowledged") or 0) >= 30

    try:
        op.wait_healthy()
        apply(cp, ns, topology(poll))
        wait_ready(cp, ns, "celeryqueue", "low-queue", 60)
        wait_for(lambda: replicas(cp, ns) == 1, 60, "at minimum")
        with Connection(rabbit.url(vhost)) as conn:
            producer = Producer(conn.channel())
            rng = random.Random(poll)
            for _ in range(runs):
                # Scale-down just happened on a poll: publish at a random phase of the poll cycle.
                time.sleep(rng.uniform(0, poll))
                t0 = time.monotonic()
                for i in range(30):
                    producer.publish({"i": i}, exchange=Exchange("task", "direct"), routing_key="low_task")
                wait_for(backlog, 60, "backlog visible", interval=0.02)
                visible.append(time.monotonic() - t0)
                wait_for(lambda: replicas(cp, ns) != 1, 60, "scaled", interval=0.05)
                samples.append(time.monotonic() - t0)
                conn.channel().queue_purge("low_queue")
                wait_for(lambda: replicas(cp, ns) == 1, 60, "back to minimum", interval=0.1)
    finally:
        op.stop(10)
    return samples, visible


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with ControlPlane(workdir=tmp / "cp", scheduler=False) as cp, RabbitMQ(tmp / "rabbit") as rabbit:
            cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
            print(f"{'poll interval':>14} {'median s':>9} {'max s':>7} {'baseline s':>11} {'ratio':>7}")
            rows = {}
            for poll in (1, 5):
                s, seen = measure(cp, rabbit, poll, args.runs, tmp)
                med, base = statistics.median(s), statistics.median(seen)
                rows[poll] = s
                print(f"{poll:>13}s {med:>9.2f} {max(s):>7.2f} {base:>11.3f} {med / base:>7.1f}")
            print(json.dumps({str(k): [round(x, 3) for x in v] for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
