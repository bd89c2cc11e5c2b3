"""Tasks interrupted per scale-in: the autoscaler's work-aware scale-in against `kubectl scale`.

The scenario of tests/e2e/test_scale_in.py, repeated: two pools of one app on real pods of the local
node, each at 4 replicas with concurrency 1, two workers of each busy with 30 s tasks (acks_late,
reject-on-worker-lost, a 10 s grace period: a removed busy worker cuts its task, which runs again),
then both scaled to 2 at the same moment, one by the operator's autoscaler, the other by
`kubectl scale` (the ReplicaSet's own choice, no deletion costs). Each run of a task records its start
and end in Redis: a start without its end is an interrupted task, a task that started twice was
delayed by a whole run. Prints, per arm, the tasks interrupted and delayed per scale-in and the median
time until the pool was down to 2 pods, then every trial as JSON.

Runs on the local cluster `make up` started when there is one (`.local/state.json`, or
LOCALENV_REUSE=<state.json>), else starts its own for the run (one node per machine: never both).
RabbitMQ and Redis run as pods in a namespace of the benchmark's own, the operator as a process.

    .venv/bin/python bench/scale_in.py [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

from tests.e2e.test_scale_in import BASE, OURS, Arm, setup  # noqa: E402
from tests.fixtures.brokers import RedisDb, Vhost  # noqa: E402
from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis  # noqa: E402
from tests.fixtures.operator import OperatorProcess  # noqa: E402

from localenv.cluster import Cluster, running_or_own  # noqa: E402
from localenv.procs import free_port, spawn, stop  # noqa: E402

BROKERS_NAMESPACE = "bench-scale-in-brokers"


def trial(c: Cluster, rabbit: PodRabbitMQ, redis_server: PodRedis, db: int, tmp: Path) -> tuple[Arm, Arm]:
    cp = c.control_plane
    ns = f"bench-scale-in-{uuid.uuid4().hex[:6]}"
    vhost_name = f"bench-{secrets.token_hex(4)}"
    cp.kubectl("create", "namespace", ns)
    rabbit.add_vhost(vhost_name)
    vhost = Vhost(vhost_name, rabbit.url(vhost_name), rabbit.management_url, rabbit, rabbit.local_url(vhost_name))
    backend = RedisDb(db, redis_server.url(db), redis_server, redis_server.local_url(db))
    with backend.client() as r:
        r.flushdb()
    started: list[OperatorProcess] = []

    def start_operator() -> None:
        port = free_port()
        log = tmp / f"operator-{ns}.log"
        env = {**cp.env(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
        argv = [sys.executable, "-m", "celery_operator", "run", "--namespace", ns, "--no-leader-election",
                "--host", "127.0.0.1", "--port", str(port)]
        op = OperatorProcess(spawn(c.node.with_cluster_dns(argv), log, env=env), port, log)
        started.append(op)
        op.wait_healthy()

    try:
        scenario = setup(c, ns, start_operator, tmp / ns, c.image("sample-tasks"), vhost, backend)
        return scenario.run(log=lambda line: print(f"  {line}", flush=True))
    finally:
        for op in started:
            stop(op.proc, 10)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        rabbit.delete_vhost(vhost_name)


def row(name: str, arms: list[Arm]) -> str:
    n = len(arms)
    interrupted = sum(a.interrupted for a in arms)
    delayed = sum(a.delayed for a in arms)
    done = statistics.median(a.completed_after or 0.0 for a in arms)
    return (f"{name:<22} {n:>10} {interrupted:>12} {interrupted / n:>13.2f} {delayed:>8} {delayed / n:>13.2f} "
            f"{done:>11.1f}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    ours: list[Arm] = []
    base: list[Arm] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-in-") as d, running_or_own() as c:
        tmp = Path(d)
        cp = c.control_plane
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        rabbit = PodRabbitMQ(cp, BROKERS_NAMESPACE, "rabbitmq", c.image("rabbitmq"))
        redis_server = PodRedis(cp, BROKERS_NAMESPACE, "redis", c.image("redis"))
        try:
            rabbit.deploy()
            redis_server.deploy()
            for i in range(args.trials):
                print(f"trial {i + 1}/{args.trials}", flush=True)
                a, b = trial(c, rabbit, redis_server, 1 + i % (PodRedis.databases - 1), tmp)
                ours.append(a)
                base.append(b)
        finally:
            cp.kubectl("delete", "namespace", BROKERS_NAMESPACE, "--wait=false", check=False)
    print("\nscale-in 4 -> 2 replicas, two workers busy with 30 s tasks (10 s grace period), per arm:")
    print(f"{'':<22} {'scale-ins':>10} {'interrupted':>12} {'per scale-in':>13} {'delayed':>8} "
          f"{'per scale-in':>13} {'completed s':>11}")
    print(row("autoscaler (ours)", ours))
    print(row("kubectl scale", base))
    trials: list[dict[str, Any]] = [{OURS: a.summary(), BASE: b.summary()} for a, b in zip(ours, base, strict=True)]
    print(json.dumps(trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
