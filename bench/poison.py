"""One poison task among 1,000 ordinary ones: with the poison-task protection, and without it.

The app of tests/e2e/test_poison_tasks.py (RabbitMQ broker, Redis result backend, `task_acks_late` and
`task_reject_on_worker_lost`, 2 prefork workers of concurrency 2 on the local node): 500 `tracked` tasks,
one `crash` (os._exit(1) in the child running it), 500 more. Two arms, each in a namespace of its own:
- ours: `maxWorkerDeaths: 2` (the default): the crash is set aside after two deaths;
- without: `maxWorkerDeaths: 1000000`, the protection in effect off (the ledger still counts, which is how
  the deaths are counted here: the same count in both arms), as with no operator: the crash comes back
  and kills a child process again, for ever.
Prints, per arm: worker process deaths (children lost to the crash, from the ledger) and container
restarts, ordinary tasks completed (and how many ran twice), seconds until the 1,000 completed, whether
the source queue drained (nothing ready or unacknowledged) and the deaths per minute while the arm ran,
then the ratio of deaths without to with.

Runs on the local cluster `make up` started when there is one (`.local/state.json`, or
LOCALENV_REUSE=<state.json>), else starts its own for the run.

    .venv/bin/python bench/poison.py [--ordinary 1000] [--observe 60]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

from tests.e2e.test_poison_tasks import APP, POOL, QUEUE, documents, runs  # noqa: E402
from tests.fixtures.brokers import RedisDb  # noqa: E402
from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis  # noqa: E402
from tests.fixtures.operator import (  # noqa: E402
    OperatorProcess,
    apply,
    celery_call,
    celery_client_env,
    get,
    pool_selector,
    secret,
    wait_for,
    wait_pods_ready,
    wait_ready,
)

from celery_operator import poison  # noqa: E402
from localenv.cluster import Cluster, running_or_own  # noqa: E402
from localenv.procs import free_port, spawn, stop  # noqa: E402

BROKERS_NAMESPACE = "bench-poison-brokers"


def arm(c: Cluster, rabbit: PodRabbitMQ, redis_server: PodRedis, db: int, tmp: Path, max_deaths: int,
        ordinary: int, observe: float) -> dict[str, Any]:
    cp = c.control_plane
    ns = f"bench-poison-{uuid.uuid4().hex[:6]}"
    vhost = f"bench-{secrets.token_hex(4)}"
    cp.kubectl("create", "namespace", ns)
    rabbit.add_vhost(vhost)
    backend = RedisDb(db, redis_server.url(db), redis_server, redis_server.local_url(db))
    client = backend.client()
    client.flushdb()
    op: OperatorProcess | None = None
    try:
        secret(cp, ns, "broker", url=rabbit.url(vhost), managementUrl=rabbit.management_url)
        secret(cp, ns, "backend", url=backend.url)
        env = {**cp.env(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
        port = free_port()
        argv = [sys.executable, "-m", "celery_operator", "run", "--namespace", ns, "--no-leader-election",
                "--host", "127.0.0.1", "--port", str(port)]
        op = OperatorProcess(spawn(c.node.with_cluster_dns(argv), tmp / f"operator-{ns}.log", env=env), port,
                             tmp / f"operator-{ns}.log")
        op.wait_healthy()
        broker = {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                               "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}
        apply(cp, ns, documents(c.image("sample-tasks"), broker, "prefork", max_deaths))
        wait_ready(cp, ns, "celeryapp", APP, 120)
        wait_pods_ready(cp, ns, pool_selector(APP, POOL), 2, 240)
        cm = wait_for(lambda: get(cp, ns, "configmap", f"{APP}-celery-config"), 30, "ConfigMap")
        (tmp / ns).mkdir()
        client_env = celery_client_env(tmp / ns, cm, rabbit.url(vhost), backend.url)
        half = ordinary // 2
        started = time.monotonic()
        ids = celery_call(c, client_env, f"send:{QUEUE}:sample_tasks.tasks.tracked:[0.05]:{half}")["ids"]
        crash = celery_call(c, client_env, f"send:{QUEUE}:sample_tasks.tasks.crash:[1]")["ids"][0]
        ids += celery_call(c, client_env, f"send:{QUEUE}:sample_tasks.tasks.tracked:[0.05]:{ordinary - half}")["ids"]

        def done() -> int:
            return sum(1 for r in runs(client, ids).values() if any(e.startswith("end:") for e in r))

        completed_after: float | None = None
        deadline = started + observe
        while time.monotonic() < deadline or completed_after is None:
            if completed_after is None and done() == len(ids):
                completed_after = time.monotonic() - started
            if time.monotonic() > started + 600:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        entry = poison.load_entry(client.get(poison.LEDGER_PREFIX + crash)) or {}
        queue = rabbit.queue(vhost, QUEUE)
        pods = json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", pool_selector(APP, POOL), "-o", "json").stdout)
        restarts = sum(cs.get("restartCount", 0) for p in pods["items"]
                       for cs in p["status"].get("containerStatuses", []))
        every = runs(client, ids)
        deaths = len(entry.get("deaths") or [])
        return {"maxWorkerDeaths": max_deaths, "process_deaths": deaths, "container_restarts": restarts,
                "completed": done(), "ran_twice": sum(1 for r in every.values()
                                                      if sum(e.startswith("start:") for e in r) > 1),
                "completed_after_s": None if completed_after is None else round(completed_after, 1),
                "queue_drained": queue.get("messages", 1) == 0,
                "crash_quarantined": bool(client.hexists(poison.QUARANTINE_KEY, crash)),
                "observed_s": round(elapsed, 1), "deaths_per_minute": round(deaths / elapsed * 60, 1)}
    finally:
        if op is not None:
            stop(op.proc, 10)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        rabbit.delete_vhost(vhost)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ordinary", type=int, default=1000)
    p.add_argument("--observe", type=float, default=60.0, help="seconds each arm runs at least")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-poison-") as d, running_or_own() as c:
        tmp = Path(d)
        cp = c.control_plane
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        rabbit = PodRabbitMQ(cp, BROKERS_NAMESPACE, "rabbitmq", c.image("rabbitmq"))
        redis_server = PodRedis(cp, BROKERS_NAMESPACE, "redis", c.image("redis"))
        try:
            rabbit.deploy()
            redis_server.deploy()
            ours = arm(c, rabbit, redis_server, 1, tmp, 2, args.ordinary, args.observe)
            print("ours", json.dumps(ours), flush=True)
            without = arm(c, rabbit, redis_server, 2, tmp, 1_000_000, args.ordinary, args.observe)
            print("without", json.dumps(without), flush=True)
        finally:
            cp.kubectl("delete", "namespace", BROKERS_NAMESPACE, "--wait=false", check=False)
    print(f"\none poison task (os._exit in the child) among {args.ordinary} ordinary tasks, 2 workers x 2 processes:")
    cols = ("process_deaths", "container_restarts", "completed", "ran_twice", "completed_after_s", "queue_drained",
            "deaths_per_minute")
    print(f"{'':<26}" + "".join(f"{k:>20}" for k in cols))
    for name, r in (("maxWorkerDeaths 2 (ours)", ours), ("protection off", without)):
        print(f"{name:<26}" + "".join(f"{r[k]!s:>20}" for k in cols))
    ratio = without["process_deaths"] / max(1, ours["process_deaths"])
    print(f"worker process deaths, off / ours: {ratio:.1f}x over {without['observed_s']:.0f}s (and growing "
          f"{without['deaths_per_minute']}/min while it runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
