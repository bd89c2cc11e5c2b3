"""Task metrics of a real `celery worker` process running the ConfigMap's modules, on real brokers.

The worker runs the exact command and metrics env the operator renders for a pool (its multiprocess
directory moved into the test's tmp), its producer is tests/e2e/client.py configured by the same
generated config, and the test reads the worker's own /metrics as Prometheus would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_operator import api, metrics
from celery_operator.config import celery_config, config_json, module_sources
from celery_operator.render import worker
from celery_operator.topology import Topology
from localenv.procs import REPO, free_port, spawn, stop, tail
from tests.fixtures.brokers import RedisDb, Vhost
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENT = REPO / "tests" / "e2e" / "client.py"
ADD, FAIL = "sample_tasks.tasks.add", "sample_tasks.tasks.fail"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def topology(pool_kind: str, **pool_spec: Any) -> Topology:
    return Topology.of(crs.app(), queues=[crs.queue("adds", tasks=[ADD]), crs.queue("fails", tasks=[FAIL])],
                       pools=[crs.pool("workers", ["adds", "fails"], pool=pool_kind, **pool_spec)])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    env: dict[str, str]  # what a producer configured like the worker uses
    multiproc_dir: Path | None

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{api.METRICS_PATH}", timeout=5) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def client(self, what: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, str(CLIENT), what], env=self.env, capture_output=True, text=True,
                             timeout=200)
        assert out.returncode == 0, out.stderr[-3000:] + tail(self.log)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    started: list[Worker] = []

    def start(topo: Topology, broker_url: str, backend_url: str) -> Worker:
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        (config_dir / api.CONFIG_JSON_KEY).write_text(config_json(celery_config(topo)))
        for key, source in module_sources().items():
            (config_dir / key).write_text(source)
        [pool] = topo.pools
        rendered = {e["name"]: e["value"] for e in worker.metrics_env(pool)}
        multiproc_dir = None
        if api.ENV_PROMETHEUS_MULTIPROC_DIR in rendered:  # the pod's /tmp is the test's tmp here
            multiproc_dir = tmp_path / "metrics"
            rendered[api.ENV_PROMETHEUS_MULTIPROC_DIR] = str(multiproc_dir)
        port = free_port()
        client_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO / "sample_tasks")]),
                      api.ENV_CONFIG_DIR: str(config_dir), api.ENV_APP: topo.app.app,
                      api.ENV_BROKER_URL: broker_url, api.ENV_RESULT_BACKEND: backend_url,
                      api.ENV_HEARTBEAT_FILE: str(tmp_path / "heartbeat")}
        worker_env = {**client_env, **rendered, api.ENV_METRICS_PORT: str(port)}
        command = worker.worker_command(topo, pool)
        log = tmp_path / "worker.log"
        celery_bin = str(Path(sys.executable).with_name("celery"))
        proc = spawn([celery_bin, *command[1:]], log, env=worker_env, cwd=tmp_path, tied=True)
        w = Worker(proc, log, port, client_env, multiproc_dir)
        started.append(w)
        wait_until_scraped(w, lambda s: s.get((metrics.WORKER_UP, worker_labels())) == 1, "the worker up")
        return w

    yield start
    for w in started:
        stop(w.proc, 30)


def worker_labels() -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": crs.NS, "app": crs.APP, "pool": "workers"}.items()))


def task_labels(name: str, queue: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": crs.NS, "app": crs.APP, "pool": "workers", "name": name,
                         "queue_name": queue, **more}.items()))


def wait_until_scraped(w: Worker, ready: Callable[[Samples], bool], what: str, timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    last: Samples = {}
    while time.monotonic() < deadline:
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode}:\n{tail(w.log, 60)}")
        try:
            last = w.scrape()
        except OSError:
            last = {}
        if ready(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not scraped within {timeout}s; last scrape: {last}\n{tail(w.log, 60)}")


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def run_and_check(w: Worker) -> Samples:
    """100 adds and 10 failures through the worker: exact counts by task, outcome and queue."""
    produced = w.client("tasks:100:10")
    assert produced["states"] == {"SUCCESS": 100, "FAILURE": 10}
    # The producer counted what it sent, labelled by the generated config's app (it has no pool).
    assert {name: c["value"] for name, c in produced["sent"].items()} == {ADD: 100, FAIL: 10}
    assert produced["sent"][ADD]["labels"] == {"namespace": crs.NS, "app": crs.APP, "name": ADD,
                                               "queue_name": "adds", "pool": ""}

    add, fail = task_labels(ADD, "adds"), task_labels(FAIL, "fails")
    s = wait_until_scraped(
        w, lambda s: s.get(("celery_task_succeeded_total", add)) == 100
        and s.get(("celery_task_failed_total", task_labels(FAIL, "fails", exception="SampleTaskError"))) == 10,
        "100 succeeded adds and 10 failed tasks")
    assert s[("celery_task_received_total", add)] == 100
    assert s[("celery_task_received_total", fail)] == 10
    assert s[("celery_task_started_total", add)] == 100
    assert s[("celery_task_started_total", fail)] == 10
    assert s[("celery_task_succeeded_total", fail)] == 0
    assert total(s, "celery_task_succeeded_total") == 100
    assert total(s, "celery_task_failed_total") == 10
    assert s[("celery_task_runtime_count", add)] == 100
    assert s[("celery_task_runtime_count", fail)] == 10
    assert total(s, "celery_task_runtime_count") == 110
    assert s[("celery_task_runtime_bucket", tuple(sorted((*add, ("le", "+Inf")))))] == 100
    assert 0 < s[("celery_task_runtime_sum", add)] < 100 * 5
    assert total(s, "celery_task_retried_total") == total(s, "celery_task_revoked_total") == 0
    assert s[(metrics.WORKER_UP, worker_labels())] == 1
    assert s[(metrics.WORKER_TASKS_ACTIVE, worker_labels())] == 0
    assert not [k for k in s if ("hostname" in dict(k[1]))]
    return s


def test_prefork_worker_counts_tasks_across_its_children_and_archives_exited_ones(
        start_worker: WorkerFactory, redis_db: RedisDb) -> None:
    # Children are replaced every 7 tasks: counts must survive each child's exit.
    w = start_worker(topology("prefork", concurrency=2, maxTasksPerChild=7), redis_db.url, redis_db.url)
    assert w.multiproc_dir is not None
    run_and_check(w)
    # 110 tasks made ~16 children exit; a scrape folds their files into one archive per type. Left:
    # the archives, main's counters, and the counter and histogram files of the two live children and
    # of at most two more that exited since that scrape (32 files or more without archiving).
    w.scrape()
    files = sorted(p.name for p in w.multiproc_dir.iterdir())
    assert "counter_archive.db" in files and "histogram_archive.db" in files
    assert len(files) <= 2 + 1 + 2 * 2 * 2, files

    # A task revoked before it is sent is dropped on receipt: revoked, not received.
    revoked = w.client("revoked")
    assert revoked["replies"] == 1
    s = wait_until_scraped(w, lambda s: s.get(("celery_task_revoked_total", task_labels(ADD, "adds"))) == 1,
                           "the revoked task")
    assert s[("celery_task_received_total", task_labels(ADD, "adds"))] == 100


def test_prefork_worker_on_rabbitmq_counts_the_same(start_worker: WorkerFactory, rabbitmq_vhost: Vhost,
                                                    redis_db: RedisDb) -> None:
    run_and_check(start_worker(topology("prefork", concurrency=2), rabbitmq_vhost.url, redis_db.url))


def test_threads_worker_counts_in_one_process_without_multiprocess_files(
        start_worker: WorkerFactory, redis_db: RedisDb) -> None:
    w = start_worker(topology("threads", concurrency=4), redis_db.url, redis_db.url)
    assert w.multiproc_dir is None
    s = run_and_check(w)
    # One process: the default registry, with prometheus_client's process metrics beside ours.
    assert total(s, "process_cpu_seconds_total") > 0


def test_worker_up_goes_with_the_worker(start_worker: WorkerFactory, redis_db: RedisDb) -> None:
    w = start_worker(topology("prefork", concurrency=1), redis_db.url, redis_db.url)
    stop(w.proc, 30)
    assert w.proc.returncode == 0, tail(w.log, 60)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        w.scrape()
