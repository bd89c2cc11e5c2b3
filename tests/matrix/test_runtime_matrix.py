"""The pods' runtime on every supported Celery minor, on the oldest and newest Python here, every pool.

Each case (dev/localenv/matrix.py: a Celery minor with its kombu, a Python) runs in a venv of its own:
real `celery worker` and `celery beat` processes of that venv run the operator's rendered command and
env with the ConfigMap's modules, on the session's real RabbitMQ and Redis (beat's lease and state on
the real API server), and the producer is tests/e2e/client.py on the same venv. What a case proves:

- worker (prefork, RabbitMQ): tasks go to the queues the generated routes name (task metrics labelled
  by queue); task and worker metrics count exactly; the heartbeat file the probes read is touched again
  and again, and the rendered probes pass (served by the worker over HTTP, or exec'd on that Python for
  gevent and eventlet); SIGTERM starts Celery's
  soft shutdown and requeues the running task before the grace period (Celery 5.5+), or, before 5.5,
  the documented fallback: a warm shutdown that lets a running task finish and acknowledge;
- pools (threads, solo, gevent, eventlet on the newest Celery, Redis): tasks and metrics, heartbeat;
- beat: two beats, one sends while the other stands by, a handover on a graceful stop, each run once.

A case that passes writes what it ran into $CELERY_OPERATOR_MATRIX_RESULTS, which `make test` compares
with the README's support table (`python -m localenv.matrix check`).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from celery_operator import api, metrics, schedule
from celery_operator.brokers.rabbitmq import RabbitMQBroker
from celery_operator.config import celery_config, config_json, module_sources
from celery_operator.models import CeleryApp, CeleryBeatSchedule, SecretKeyRef
from celery_operator.render import beat, configmap, worker
from celery_operator.topology import Topology
from localenv import matrix
from localenv.controlplane import ControlPlane
from localenv.procs import REPO, free_port, spawn, stop, tail
from tests.fixtures.brokers import RedisDb, Vhost
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.matrix, pytest.mark.timeout(600)]

CLIENT = REPO / "tests" / "e2e" / "client.py"
ADD, FAIL, SLOW = "sample_tasks.tasks.add", "sample_tasks.tasks.fail", "sample_tasks.tasks.slow"
GRACE = 10  # the pod's grace period: soft shutdown timeout 7 s, the smallest margin (worker.soft_shutdown_timeout)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CASES = matrix.cases()
POOL_CASES = [(c, p) for c in CASES for p in c.pools if p != "prefork"]


@pytest.fixture(scope="session")
def venvs() -> Callable[[matrix.Case], Path]:
    """A case's venv (`make test` builds them all before the tests; built here when missing)."""
    return cache(matrix.build)


@cache
def versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-c", "import celery, kombu, platform, json; print(json.dumps("
                          "{'python': platform.python_version(), 'celery': celery.__version__, "
                          "'kombu': kombu.__version__}))"], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def record(case: matrix.Case, python: Path, scenario: str, pools: list[str]) -> None:
    """What passed, for the README's support table (only when `make test` collects the results)."""
    directory = os.environ.get(matrix.ENV_RESULTS)
    if not directory:
        return
    got = {"case": case.id, "python_minor": case.python, "celery_minor": case.celery,
           "soft_shutdown": case.soft_shutdown, "pools": pools, "scenarios": [scenario], **versions(python)}
    path = Path(directory) / f"{case.id}-{scenario.replace(':', '-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=1))


def wait(check: Callable[[], Any], timeout: float, what: str, log: Path | None = None,
         proc: subprocess.Popen[bytes] | None = None, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} while waiting for {what}:\n{tail(log, 60)}")
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout}s\n{tail(log, 60)}")


# -- workers --------------------------------------------------------------------------------------

def topology(pool_kind: str, **app_config: Any) -> Topology:
    app = crs.app(config=app_config) if app_config else crs.app()
    return Topology.of(app, queues=[crs.queue("adds", tasks=[ADD, SLOW]), crs.queue("fails", tasks=[FAIL])],
                       pools=[crs.pool("workers", ["adds", "fails"], pool=pool_kind, concurrency=2,
                                       terminationGracePeriodSeconds=GRACE)])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    python: Path
    log: Path
    port: int
    heartbeat: Path
    client_env: dict[str, str]
    env: dict[str, str]
    probes: dict[str, Any]  # the rendered container's startup, readiness and liveness probes
    health_port: int | None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{api.METRICS_PATH}", timeout=5) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def scraped(self, ready: Callable[[Samples], bool], what: str, timeout: float = 60) -> Samples:
        def attempt() -> Samples | None:
            try:
                s = self.scrape()
            except OSError:
                return None
            return s if ready(s) else None
        return dict(wait(attempt, timeout, what, self.log, self.proc))

    def client(self, what: str) -> dict[str, Any]:
        out = subprocess.run([str(self.python), str(CLIENT), what], env=self.client_env, capture_output=True,
                             text=True, timeout=200)
        assert out.returncode == 0, out.stderr[-3000:] + tail(self.log)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(python: Path, topo: Topology, broker_url: str, backend_url: str) -> Worker:
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        for key, text in configmap.config_map(topo, None)["data"].items():  # what the pod mounts
            (config_dir / key).write_text(text)
        [pool] = topo.pools
        dep = worker.deployment(topo, pool, SecretKeyRef("broker", "url"), None, "hash", None, 1)
        [container] = dep["spec"]["template"]["spec"]["containers"]
        literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        heartbeat = tmp_path / "heartbeat"
        client_env = {k: v for k, v in os.environ.items() if k not in (api.ENV_REMAP_SIGTERM, "VIRTUAL_ENV")}
        client_env.update({"PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO / "sample_tasks")]),
                           api.ENV_CONFIG_DIR: str(config_dir), api.ENV_APP: topo.app.app,
                           api.ENV_BROKER_URL: broker_url, api.ENV_RESULT_BACKEND: backend_url,
                           api.ENV_HEARTBEAT_FILE: str(tmp_path / "client-heartbeat")})  # counts what it sends
        port = free_port()
        env = {**literal, **client_env, "HOME": str(tmp_path), api.ENV_HEARTBEAT_FILE: str(heartbeat),
               api.ENV_METRICS_PORT: str(port), api.ENV_WORKER_STATE_FILE: str(tmp_path / "state.json")}
        health_port = free_port() if api.ENV_HEALTH_PORT in literal else None  # the pod's port, here a free one
        if health_port is not None:
            env[api.ENV_HEALTH_PORT] = str(health_port)
        if api.ENV_PROMETHEUS_MULTIPROC_DIR in literal:  # the pod's /tmp is the test's tmp here
            env[api.ENV_PROMETHEUS_MULTIPROC_DIR] = str(tmp_path / "metrics")
        log = tmp_path / "worker.log"
        probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        w = Worker(spawn([str(python.with_name("celery")), *container["command"][1:]], log, env=env, cwd=tmp_path,
                         tied=True),
                   python, log, port, heartbeat, client_env, env, probes, health_port)
        started.append(w)
        w.scraped(lambda s: s.get((metrics.WORKER_UP, worker_labels())) == 1, "the worker up")
        return w

    yield start
    for w in started:
        stop(w.proc, GRACE)


def worker_labels() -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": crs.NS, "app": crs.APP, "pool": "workers"}.items()))


def task_labels(name: str, queue: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": crs.NS, "app": crs.APP, "pool": "workers", "name": name,
                         "queue_name": queue, **more}.items()))


def ask(w: Worker, probe: dict[str, Any]) -> tuple[bool, str]:
    """What the kubelet would hear from the rendered probe: an HTTP GET to the worker, or the exec'd command on
    the venv's Python with this worker's heartbeat file for the pod's."""
    if "httpGet" in probe:
        url = f"http://127.0.0.1:{w.health_port}{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=probe["timeoutSeconds"]) as r:
                return r.status == 200, r.read().decode()
        except urllib.error.HTTPError as e:
            return False, e.read().decode()
    command = [str(w.python), *(c.replace(api.HEARTBEAT_FILE, str(w.heartbeat)) for c in probe["exec"]["command"][1:])]
    out = subprocess.run(command, env=w.env, capture_output=True, text=True, timeout=probe["timeoutSeconds"])
    return out.returncode == 0, out.stdout + out.stderr


def check_heartbeat(w: Worker) -> None:
    """The heartbeat file is touched on every heartbeat, and every rendered probe passes."""
    first = wait(lambda: w.heartbeat.exists() and w.heartbeat.stat().st_mtime, 30, "the heartbeat file", w.log)
    wait(lambda: w.heartbeat.stat().st_mtime > first, 15, "the heartbeat file touched again", w.log, w.proc)
    for name, probe in w.probes.items():
        live, said = ask(w, probe)
        assert live, f"{name}: {said}\n{tail(w.log, 40)}"


def check_tasks_and_metrics(w: Worker, adds: int, fails: int) -> None:
    """Tasks routed by the generated config, counted exactly by task, outcome and queue."""
    produced = w.client(f"tasks:{adds}:{fails}")
    assert produced["states"] == {"SUCCESS": adds, "FAILURE": fails}
    assert {name: c["value"] for name, c in produced["sent"].items()} == {ADD: adds, FAIL: fails}
    assert produced["sent"][ADD]["labels"]["queue_name"] == "adds"
    add, fail = task_labels(ADD, "adds"), task_labels(FAIL, "fails")
    s = w.scraped(lambda s: s.get(("celery_task_succeeded_total", add)) == adds
                  and s.get(("celery_task_failed_total", task_labels(FAIL, "fails", exception="SampleTaskError")))
                  == fails, f"{adds} succeeded adds on queue adds and {fails} failed tasks on queue fails")
    assert s[("celery_task_received_total", add)] == adds
    assert s[("celery_task_received_total", fail)] == fails
    assert s[("celery_task_runtime_count", add)] == adds
    assert s[(metrics.WORKER_UP, worker_labels())] == 1
    assert s[(metrics.WORKER_TASKS_ACTIVE, worker_labels())] == 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_prefork_worker_routes_counts_beats_and_shuts_down_within_the_grace_period(
        case: matrix.Case, venvs: Callable[[matrix.Case], Path], start_worker: Callable[..., Worker],
        rabbitmq_vhost: Vhost, redis_db: RedisDb) -> None:
    python = venvs(case) / "bin" / "python"
    topo = topology("prefork", task_acks_late=True)
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare(topo.effective_exchanges, topo.effective_queues)
    w = start_worker(python, topo, rabbitmq_vhost.url, redis_db.url)
    check_heartbeat(w)
    check_tasks_and_metrics(w, adds=20, fails=3)

    seconds = 120 if case.soft_shutdown else 3
    [task_id] = w.client(f"publish:adds:1:{seconds}")["ids"]
    wait(lambda: f"{task_id}] received" in w.logs(), 30, "the slow task started", w.log, w.proc)
    started = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    w.proc.wait(timeout=GRACE + 30)
    took = time.monotonic() - started
    soft = int(worker.soft_shutdown_timeout(topo.pools[0]) or 0)
    if case.soft_shutdown:
        # Celery 5.5+: running tasks get the soft timeout, then go back to the queue, before the grace period.
        assert f"Initiating Soft Shutdown, terminating in {soft}" in w.logs(), tail(w.log, 60)
        assert soft <= took < GRACE, f"exited after {took:.1f}s:\n{tail(w.log, 60)}"
        depth = broker.measure_passive(["adds"]).queues["adds"]
        assert (depth.ready, depth.consumers) == (1, 0)
    else:
        # Before 5.5 (no soft shutdown): the documented fallback, a warm shutdown; a task shorter than
        # the grace period finishes and is acknowledged.
        assert "Soft Shutdown" not in w.logs()
        assert f"{task_id}] succeeded" in w.logs(), tail(w.log, 60)
        assert w.proc.returncode == 0 and took < GRACE
        assert broker.measure_passive(["adds"]).queues["adds"].ready == 0
    record(case, python, "worker", ["prefork"])


@pytest.mark.parametrize(("case", "pool"), POOL_CASES, ids=[f"{c.id}-{p}" for c, p in POOL_CASES])
def test_pool_runs_and_counts_tasks_and_keeps_the_heartbeat(
        case: matrix.Case, pool: str, venvs: Callable[[matrix.Case], Path], start_worker: Callable[..., Worker],
        redis_db: RedisDb) -> None:
    python = venvs(case) / "bin" / "python"
    w = start_worker(python, topology(pool), redis_db.url, redis_db.url)
    check_heartbeat(w)
    check_tasks_and_metrics(w, adds=10, fails=2)
    stop(w.proc, GRACE)
    assert w.proc.returncode == 0, tail(w.log, 60)
    record(case, python, f"pool:{pool}", [pool])


# -- beat -----------------------------------------------------------------------------------------

QUEUE = "celery"


def beat_topology(namespace: str) -> Topology:
    app_spec = {"image": "unused", "app": "sample_tasks.app",
                "broker": {"external": {"urlSecretRef": {"name": "broker"}}},
                "defaultQueue": QUEUE, "defaultExchange": QUEUE, "defaultRoutingKey": QUEUE}
    app = CeleryApp.of(crs.body(api.APP, "proj", app_spec, namespace=namespace))
    entry = {"name": "tick", "task": ADD, "everySeconds": 1, "args": ["tick", 0], "startingDeadlineSeconds": 60}
    sched = CeleryBeatSchedule.of(crs.body(api.SCHEDULE, "ticks", {"appRef": {"name": "proj"}, "timezone": "UTC",
                                                                   "entries": [entry]}, namespace=namespace))
    return Topology.of(app, schedules=[sched])


def beat_env(cp: ControlPlane, namespace: str, topo: Topology, broker_url: str, tmp: Path) -> dict[str, str]:
    """The rendered beat's env, with the token of the ServiceAccount (and Role) the operator renders."""
    objs = [o for o in beat.objects(topo, SecretKeyRef("broker", "url"), None, "h", None) if o["kind"] != "Deployment"]
    cp.apply(objs)
    account = tmp / "serviceaccount"
    account.mkdir()
    token = cp.create_token(namespace, "proj-beat", 3600)
    (account / "token").write_text(token.strip())
    (account / "ca.crt").write_bytes(cp.pki.ca.read_bytes())
    (account / "namespace").write_text(namespace)
    config_dir = tmp / "config"
    config_dir.mkdir()
    (config_dir / api.CONFIG_JSON_KEY).write_text(config_json(celery_config(topo)))
    for key, source in module_sources().items():
        (config_dir / key).write_text(source)
    server = urlsplit(cp.server)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update({"PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO / "sample_tasks")]),
                api.ENV_CONFIG_DIR: str(config_dir), api.ENV_APP: "sample_tasks.app", api.ENV_BROKER_URL: broker_url,
                api.ENV_HEARTBEAT_FILE: str(tmp / "heartbeat"), api.ENV_METRICS_PORT: "0",
                "KUBERNETES_SERVICE_HOST": str(server.hostname), "KUBERNETES_SERVICE_PORT": str(server.port),
                api.ENV_SERVICE_ACCOUNT_DIR: str(account), api.ENV_NAMESPACE: namespace})
    env.update({e["name"]: e["value"] for e in beat.beat_env("proj") if "value" in e})
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_beat_sends_each_run_once_across_a_handover(
        case: matrix.Case, venvs: Callable[[matrix.Case], Path], control_plane: ControlPlane, namespace: str,
        redis_db: RedisDb, tmp_path: Path) -> None:
    python = venvs(case) / "bin" / "python"
    env = beat_env(control_plane, namespace, beat_topology(namespace), redis_db.url, tmp_path)
    beats: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> Path:
        log = tmp_path / f"{name}.log"
        beats[name] = spawn([str(python.with_name("celery")), *beat.beat_command()[1:]], log,
                            env={**env, api.ENV_POD_NAME: name}, cwd=tmp_path, tied=True)
        return log

    def holder() -> str:
        lease = control_plane.read(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/proj-beat")
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def sent() -> int:
        with redis_db.client() as c:
            return int(c.llen(QUEUE))

    def sends(n: int, log: Path) -> None:
        before = sent()
        wait(lambda: sent() >= before + n, 30, f"{n} more runs sent", log)

    try:
        a_log = start("beat-a")
        wait(lambda: holder().startswith("beat-a_"), 30, "beat-a holding the lease", a_log)
        b_log = start("beat-b")
        wait(lambda: "standing by" in b_log.read_text(errors="replace"), 30, "beat-b standing by", b_log)
        sends(2, a_log)
        stop(beats["beat-a"], 15)  # a graceful stop releases the lease: beat-b takes over at once
        assert beats["beat-a"].returncode == 0, tail(a_log, 40)
        wait(lambda: holder().startswith("beat-b_"), 30, "beat-b taking the lease over", b_log)
        sends(2, b_log)
        stop(beats["beat-b"], 15)
        assert beats["beat-b"].returncode == 0, tail(b_log, 40)
    finally:
        for p in beats.values():
            stop(p, 5)

    with redis_db.client() as c:
        messages = [json.loads(m) for m in reversed(c.lrange(QUEUE, 0, -1))]
    runs = Counter(schedule.from_rfc3339(m["headers"][api.BEAT_SCHEDULED_TIME_HEADER]) for m in messages)
    assert [t for t, n in runs.items() if n > 1] == []  # each run once
    slots = sorted(runs)
    assert slots == list(range(slots[0], slots[-1] + 1, schedule.US))  # none missed across the handover
    assert {json.loads(base64.b64decode(m["body"]))[0][0] for m in messages} == {"tick"}
    record(case, python, "beat", [])
