"""What the task metrics cost a worker: added time per task, and the time to scrape a worker.

A real `celery worker` (the command and env the operator renders for a prefork pool of 2, the
ConfigMap's modules) runs no-op tasks (`sample_tasks.tasks.echo`, acks_late, no result backend) from
a loopback Redis started here. Each round: the worker starts, stops consuming (cancel_consumer),
N tasks are queued, it consumes again (add_consumer) and the clock runs until the queue is empty
and nothing is unacknowledged (polled every 20 ms). Rounds alternate between the metrics hooks on
and off (`CELERY_OPERATOR_METRICS_PORT=0`) in the same run; the table shows the median per arm of the
wall-clock time and of the CPU time the worker's processes used, and the median of the on/off ratios
of each pair of rounds run back to back (the budget for the time per task is 1.05). Then a worker's
/metrics is scraped, as is (two children) and after N tasks with `--max-tasks-per-child` (the files of
exited children are archived by the first scrape). Last, the hooks alone: the signals one task causes,
sent to the metrics module in a process of their own, as CPU time per task.

    .venv/bin/python bench/task_metrics.py [--tasks 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "dev")]

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from celery_operator import api, schema  # noqa: E402
from celery_operator.config import celery_config, config_json, module_sources  # noqa: E402
from celery_operator.models import CeleryApp, CeleryQueue, CeleryWorkerPool  # noqa: E402
from celery_operator.render import worker  # noqa: E402
from celery_operator.topology import Topology  # noqa: E402
from localenv.brokers import Redis  # noqa: E402
from localenv.procs import free_port, spawn, stop, tail, wait_until  # noqa: E402

QUEUE = "bench"
TASK = "sample_tasks.tasks.echo"
BUDGET = 1.05


def model(kind: str, cls: Any, name: str, spec: dict[str, Any]) -> Any:
    body = {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name, "namespace": "bench", "uid": name},
            "spec": spec}
    return cls.of(schema.apply_defaults(kind, body))


def topology(**pool: Any) -> Topology:
    app = model(api.APP, CeleryApp, "bench", {
        "image": "sample-tasks", "app": "sample_tasks.app", "defaultQueue": QUEUE,
        "broker": {"external": {"urlSecretRef": {"name": "broker"}}},
        "config": {"task_acks_late": True, "task_ignore_result": True}})
    return Topology.of(app, queues=[model(api.QUEUE, CeleryQueue, QUEUE, {"appRef": {"name": "bench"}})],
                       pools=[model(api.POOL, CeleryWorkerPool, "bench",
                                    {"appRef": {"name": "bench"}, "queues": [QUEUE], "concurrency": 2, **pool})])


class Worker:
    def __init__(self, topo: Topology, broker_url: str, work: Path, hooks: bool) -> None:
        self.work = work
        work.mkdir(parents=True)
        config = work / "config"
        config.mkdir()
        (config / api.CONFIG_JSON_KEY).write_text(config_json(celery_config(topo)))
        for key, source in module_sources().items():
            (config / key).write_text(source)
        [pool] = topo.pools
        env = {e["name"]: e["value"] for e in worker.metrics_env(pool)}
        if api.ENV_PROMETHEUS_MULTIPROC_DIR in env:
            env[api.ENV_PROMETHEUS_MULTIPROC_DIR] = str(work / "metrics")
        self.port = free_port() if hooks else 0
        self.heartbeat = work / "heartbeat"
        self.log = work / "worker.log"
        env = {**os.environ, **env, "PYTHONPATH": f"{config}:{REPO / 'sample_tasks'}",
               api.ENV_CONFIG_DIR: str(config), api.ENV_APP: topo.app.app, api.ENV_BROKER_URL: broker_url,
               api.ENV_HEARTBEAT_FILE: str(self.heartbeat), api.ENV_METRICS_PORT: str(self.port)}
        command = worker.worker_command(topo, pool)
        self.proc = spawn([str(Path(sys.executable).with_name("celery")), *command[1:]], self.log, env=env,
                          cwd=work)
        wait_until(self.heartbeat.exists, 60, "the worker", self.proc, self.log)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the worker's main process and its live children."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat.parent.name) == self.proc.pid or int(fields[1]) == self.proc.pid:
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def scrape(self) -> tuple[float, int]:
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{api.METRICS_PATH}", timeout=30) as r:
            body = r.read()
        return time.perf_counter() - t, len(body)

    def stop(self) -> None:
        stop(self.proc, 60)


def run_tasks(client: Celery, db: redis.Redis, n: int, w: Worker) -> tuple[float, float]:
    """Queue n tasks while the worker does not consume, then time until all are done and acked:
    (wall-clock seconds, CPU seconds the worker used)."""
    # Broadcasts go over Redis pub/sub: one sent before the worker's mailbox listens is lost.
    for _ in range(12):
        if client.control.cancel_consumer(QUEUE, reply=True, timeout=5, limit=1):
            break
    else:
        raise RuntimeError("the worker never answered cancel_consumer")
    with client.producer_or_acquire() as producer:
        for i in range(n):
            client.send_task(TASK, (i,), queue=QUEUE, producer=producer)
    assert db.llen(QUEUE) == n
    cpu = w.cpu_seconds()
    t = time.perf_counter()
    assert client.control.add_consumer(QUEUE, reply=True, timeout=10, limit=1)
    while db.llen(QUEUE) or db.hlen("unacked"):
        time.sleep(0.02)
    return time.perf_counter() - t, w.cpu_seconds() - cpu


HOOKS_ALONE = """
import os, sys, time, types
from celery import Celery, signals
source, n = sys.argv[1], int(sys.argv[2])
module = types.ModuleType("celery_operator_metrics")
exec(compile(open(source).read(), source, "exec"), module.__dict__)
app = Celery("bench", broker="memory://", set_as_current=False)


def echo(value):
    return value


task = app.task(name="sample_tasks.tasks.echo", shared=False)(echo)
module.install(app, {"namespace": "bench", "app": "bench"})
request = types.SimpleNamespace(name=task.name, delivery_info={"exchange": "", "routing_key": "bench"})
task.push_request(delivery_info=request.delivery_info)
start = time.process_time()
for i in range(n):
    signals.task_received.send(sender=None, request=request)  # in the main process
    signals.task_prerun.send(sender=task, task_id=str(i), task=task, args=(), kwargs={})  # in a child
    signals.task_postrun.send(sender=task, task_id=str(i), task=task, args=(), kwargs={}, retval=i, state="SUCCESS")
print((time.process_time() - start) / n)
"""


def hooks_alone(work: Path, n: int = 20_000) -> float:
    """CPU seconds per task of the hooks alone: the three signals a task causes, sent through Celery's
    dispatch to the metrics module in multiprocess mode (a fresh process: the mode is chosen at import)."""
    work.mkdir()
    source = work / api.METRICS_FILE
    source.write_text(module_sources()[api.METRICS_FILE])
    env = {**os.environ, api.ENV_PROMETHEUS_MULTIPROC_DIR: str(work / "metrics"), api.ENV_METRICS_PORT: "1"}
    out = subprocess.run([sys.executable, "-c", HOOKS_ALONE, str(source), str(n)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7, help="rounds per arm, alternating")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-task-metrics-") as tmp_dir:
        tmp = Path(tmp_dir)
        server = Redis(tmp / "redis")
        server.start()
        try:
            url = server.url(1)
            db = redis.Redis.from_url(url)
            client = Celery("bench", broker=url)
            times: dict[bool, list[float]] = {True: [], False: []}
            cpu: dict[bool, list[float]] = {True: [], False: []}
            scrape: list[float] = []
            size = 0
            for r in range(args.rounds):
                for hooks in (r % 2 == 0, r % 2 != 0):  # alternate which arm goes first
                    db.flushdb()
                    w = Worker(topology(), url, tmp / f"round-{r}-{'on' if hooks else 'off'}", hooks)
                    try:
                        wall, used = run_tasks(client, db, args.tasks, w)
                        times[hooks].append(wall)
                        cpu[hooks].append(used)
                        if hooks and r == 0:
                            for _ in range(args.scrapes):
                                seconds, size = w.scrape()
                                scrape.append(seconds)
                    finally:
                        w.stop()
                    print(f"round {r + 1} hooks {'on ' if hooks else 'off'}: {times[hooks][-1]:.2f} s, "
                          f"worker CPU {cpu[hooks][-1]:.2f} s", flush=True)

            # Children replaced every 100 tasks: N/100 exited children's files for the first scrape to archive.
            db.flushdb()
            w = Worker(topology(maxTasksPerChild=100), url, tmp / "recycled", hooks=True)
            try:
                run_tasks(client, db, args.tasks, w)
                files_before = len(list((tmp / "recycled" / "metrics").iterdir()))
                first, _ = w.scrape()
                files_after = len(list((tmp / "recycled" / "metrics").iterdir()))
                recycled = [w.scrape()[0] for _ in range(args.scrapes)]
            except Exception:
                print(tail(w.log, 40), file=sys.stderr)
                raise
            finally:
                w.stop()
            client.close()
            alone = hooks_alone(tmp / "hooks-alone")
        finally:
            server.stop()

    print()
    print(f"{args.tasks} no-op tasks, prefork concurrency 2, Redis, acks_late; median of {args.rounds} rounds per arm")
    print(f"{'':<18}{'wall s':>9}{'us/task':>9}{'min us/task':>13}{'worker CPU s':>14}{'CPU us/task':>13}")
    med: dict[bool, tuple[float, float]] = {}
    for hooks in (False, True):
        wall, used = statistics.median(times[hooks]), statistics.median(cpu[hooks])
        med[hooks] = (wall, used)
        print(f"{'hooks ' + ('on' if hooks else 'off'):<18}{wall:>9.2f}{wall / args.tasks * 1e6:>9.1f}"
              f"{min(times[hooks]) / args.tasks * 1e6:>13.1f}{used:>14.2f}{used / args.tasks * 1e6:>13.1f}")
    # Rounds run in pairs, one per arm back to back: each pair's ratio shares the machine's load of the moment.
    pairs = [on / off for on, off in zip(times[True], times[False], strict=True)]
    ratio, cpu_ratio = statistics.median(pairs), med[True][1] / med[False][1]
    print(f"time per task, on/off, per pair of rounds: {', '.join(f'{r:.3f}' for r in pairs)}")
    print(f"median: {ratio:.3f} (budget {BUDGET:.2f}: {'within' if ratio <= BUDGET else 'OVER'}); "
          f"ratio of the medians {med[True][0] / med[False][0]:.3f}; worker CPU per task, on/off: {cpu_ratio:.3f} "
          f"({(med[True][1] - med[False][1]) / args.tasks * 1e6:+.1f} us per task)")
    print(f"the hooks alone (received, prerun, postrun through Celery's signals, multiprocess files): "
          f"{alone * 1e6:.1f} us CPU per task, {alone / (med[False][0] / args.tasks):.1%} of a task's time "
          f"with hooks off")
    print()
    print(f"scrape of a worker's /metrics ({size} bytes), median of {args.scrapes}: "
          f"{statistics.median(scrape) * 1000:.2f} ms")
    print(f"after {args.tasks} tasks with --max-tasks-per-child 100: {files_before} files in the multiprocess "
          f"directory, first scrape {first * 1000:.1f} ms (archives them: {files_after} files left), "
          f"then median {statistics.median(recycled) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
