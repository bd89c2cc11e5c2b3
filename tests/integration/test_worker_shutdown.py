"""A rendered prefork worker on a real RabbitMQ: SIGTERM finishes or requeues work before the grace period ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from celery_operator.brokers.rabbitmq import RabbitMQBroker
from celery_operator.models import SecretKeyRef
from celery_operator.render import configmap, worker
from celery_operator.topology import Topology
from localenv.procs import free_port
from sample_tasks import create_app
from tests.fixtures.brokers import Vhost
from tests.fixtures.operator import wait_for
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GRACE = 20
SAMPLE_TASKS_ROOT = Path(__file__).resolve().parents[2] / "sample_tasks"


class Worker:
    """The rendered worker container's command and literal env, run as a local process."""

    def __init__(self, topo: Topology, pool: str, broker_url: str, tmp: Path) -> None:
        config_dir = tmp / "config"
        config_dir.mkdir()
        for key, text in configmap.config_map(topo, None)["data"].items():  # what the pod mounts
            (config_dir / key).write_text(text)
        the_pool = next(p for p in topo.pools if p.meta.name == pool)
        dep = worker.deployment(topo, the_pool, SecretKeyRef("broker", "url"), None, "hash", None, 1)
        [container] = dep["spec"]["template"]["spec"]["containers"]
        literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env = {k: v for k, v in os.environ.items() if k != api.ENV_REMAP_SIGTERM}
        env.update(literal)
        env.update({"PYTHONPATH": f"{config_dir}:{SAMPLE_TASKS_ROOT}", "HOME": str(tmp),
                    api.ENV_CONFIG_DIR: str(config_dir), api.ENV_HEARTBEAT_FILE: str(tmp / "heartbeat"),
                    api.ENV_BROKER_URL: broker_url,
                    # A host process: its own metrics port and multiprocess directory, not the pod's.
                    api.ENV_METRICS_PORT: str(free_port()), api.ENV_PROMETHEUS_MULTIPROC_DIR: str(tmp / "metrics")})
        self.soft_timeout = int(literal[api.ENV_SOFT_SHUTDOWN_TIMEOUT])
        self.heartbeat = tmp / "heartbeat"
        celery_bin = str(Path(sys.executable).with_name("celery"))
        self.proc = subprocess.Popen([celery_bin, *container["command"][1:]], env=env, cwd=tmp,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def acks_late_worker(vhost: Vhost, tmp_path: Path) -> Iterator[tuple[Worker, Any, RabbitMQBroker]]:
    """A one-process acks_late worker of queue `jobs` (grace period GRACE), a client, the broker."""
    app = crs.app(config={"task_acks_late": True})
    topo = Topology.of(app, queues=[crs.queue("jobs")],
                       pools=[crs.pool("p", ["jobs"], concurrency=1, terminationGracePeriodSeconds=GRACE)])
    broker = RabbitMQBroker(vhost.url, vhost.management_url)
    broker.declare(topo.effective_exchanges, topo.effective_queues)
    w = Worker(topo, "p", vhost.url, tmp_path)
    client = create_app({"broker_url": vhost.url, "task_acks_late": True})
    try:
        yield w, client, broker
    finally:
        w.stop()
        client.close()


def test_sigterm_lets_a_task_run_until_the_soft_timeout_then_requeues_it_before_the_grace_period(
        rabbitmq_vhost: Vhost, tmp_path: Path) -> None:
    with acks_late_worker(rabbitmq_vhost, tmp_path) as (w, client, broker):
        wait_for(lambda: w.heartbeat.exists() or w.proc.poll() is not None, 60, "worker ready")
        assert w.proc.poll() is None, w.log()
        task = client.send_task("sample_tasks.tasks.slow", (120,), queue="jobs")
        wait_for(lambda: f"{task.id}] received" in w.log(), 30, "the task started")

        started = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        code = w.proc.wait(timeout=GRACE + 30)
        took = time.monotonic() - started

        assert f"Initiating Soft Shutdown, terminating in {w.soft_timeout}" in w.log()
        assert w.soft_timeout <= took < GRACE, f"exited after {took:.1f}s:\n{w.log()[-3000:]}"
        assert code is not None
        # The task was cancelled, not lost: its unacknowledged message is back in the queue.
        depth = broker.measure_passive(["jobs"]).queues["jobs"]
        assert (depth.ready, depth.consumers) == (1, 0)


def test_sigterm_lets_a_short_task_finish_and_acknowledge(rabbitmq_vhost: Vhost, tmp_path: Path) -> None:
    with acks_late_worker(rabbitmq_vhost, tmp_path) as (w, client, broker):
        wait_for(lambda: w.heartbeat.exists() or w.proc.poll() is not None, 60, "worker ready")
        task = client.send_task("sample_tasks.tasks.slow", (4,), queue="jobs")
        wait_for(lambda: f"{task.id}] received" in w.log(), 30, "the task started")
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(timeout=GRACE + 30)
        assert f"{task.id}] succeeded" in w.log(), w.log()[-3000:]
        assert broker.measure_passive(["jobs"]).queues["jobs"].ready == 0
