"""Poison tasks on the real node: a task that kills its worker runs at most maxWorkerDeaths times, then
waits in its queue's quarantine queue, and everything queued beside it runs, once.

The app acknowledges late and rejects on a lost worker (`task_acks_late`, `task_reject_on_worker_lost`:
what users choose so that no task is lost, and what makes a killing task loop). Two poison tasks of
sample_tasks: `crash` (os._exit(1)) and `hog` (allocates past the pool's memory limit), sent among 200
`tracked` tasks, each of which records every run of it (start and end, by host) in the result backend's
Redis, so duplicates are counted, not guessed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_operator import api, metrics, poison
from localenv.cluster import Cluster
from localenv.procs import REPO, ServerError
from tests.e2e.test_scale_in import install_checkout
from tests.fixtures.brokers import RedisDb, Vhost, vhost_counts
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    condition,
    get,
    list_objects,
    metric_line,
    pod_logs,
    pool_selector,
    secret,
    wait_for,
    wait_pods_ready,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

APP, POOL, QUEUE = "proj", "workers", "work"
MAX_DEATHS = 2
ORDINARY = 200
RUNS_KEY = "sample-tasks:runs:{}"  # sample_tasks.tasks.RUNS_KEY


def documents(image: str, broker: dict[str, Any], pool: str, max_deaths: int = MAX_DEATHS,
              queue_type: str = "classic", quarantine_queue: str | None = None) -> list[dict[str, Any]]:
    v = api.API_VERSION
    return [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": APP},
         "spec": {"image": image, "app": "sample_tasks.app", "defaultQueue": QUEUE,
                  "config": {"task_acks_late": True, "task_reject_on_worker_lost": True},
                  "broker": broker,
                  "resultBackend": {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}}},
        {"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": QUEUE},
         "spec": {"appRef": {"name": APP}, "queueType": queue_type,
                  **({"quarantineQueue": quarantine_queue} if quarantine_queue else {})}},
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": POOL},
         "spec": {"appRef": {"name": APP}, "queues": [QUEUE], "replicas": 2, "pool": pool,
                  "concurrency": 1 if pool == "solo" else 2,
                  "maxWorkerDeaths": max_deaths, "terminationGracePeriodSeconds": 10,
                  "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "64Mi"}}}},
    ]


def runs(client: redis.Redis, ids: list[str]) -> dict[str, list[str]]:
    return {i: [b.decode() for b in client.lrange(RUNS_KEY.format(i), 0, -1)] for i in ids}


def quarantined_headers(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Task id -> the quarantine header of each message set aside."""
    out = {}
    for m in messages:
        record = json.loads(m["headers"][poison.QUARANTINE_HEADER])
        out[m["headers"]["id"]] = record
    return out


def rabbit_quarantine(vhost: Vhost, name: str) -> list[dict[str, Any]]:
    """The messages of a RabbitMQ queue, looked at (requeued) through the management API."""
    path = f"/api/queues/{urllib.parse.quote(vhost.name, safe='')}/{urllib.parse.quote(name, safe='')}/get"
    try:
        got = vhost.server.api("POST", path, {"count": 100, "ackmode": "ack_requeue_true", "encoding": "auto"})
    except ServerError as e:
        if "404" in str(e):
            return []  # not declared yet: the first worker that quarantines a task declares it
        raise
    return [{"headers": m["properties"].get("headers", {}), "body": m["payload"]} for m in got]


def describe_rabbitmq(vhost: Vhost) -> str:
    """What RabbitMQ counted in the vhost (published, delivered, acknowledged, redelivered, dropped), what it
    holds, and its log of the vhost's connections that ended badly (`connection_log`)."""
    vhost_path = urllib.parse.quote(vhost.name, safe="")
    stats = vhost_counts(vhost.server, vhost.name)
    queues = [{k: q.get(k) for k in ("name", "type", "messages_ready", "messages_unacknowledged", "consumers")}
              for q in vhost.server.api("GET", f"/api/queues/{vhost_path}")]
    exchanges = {e["name"]: {k: e["message_stats"].get(k) for k in ("publish_in", "publish_out")}
                 for e in vhost.server.api("GET", f"/api/exchanges/{vhost_path}") if e.get("message_stats")}
    bindings = [(b["source"], b["routing_key"], b["destination"])
                for b in vhost.server.api("GET", f"/api/bindings/{vhost_path}") if b["source"]]
    return (f"RabbitMQ counted {json.dumps(stats)}, by exchange {json.dumps(exchanges)}, and holds "
            f"{json.dumps([q for q in queues if not str(q['name']).startswith('celery_delayed_')])}; "
            f"bindings {json.dumps(bindings)}; {connection_log(vhost)}")


def connection_log(vhost: Vhost, limit: int = 80) -> str:
    """RabbitMQ's log of the vhost's connections that ended with a warning or an error (a client that did not
    close, a connection RabbitMQ closed): every line of those connections, by their Erlang pid."""
    lines = vhost.server.log_text().splitlines()
    pid = re.compile(r"\] (<[0-9.]+>) ")
    ours = {m.group(1) for line in lines if f"'{vhost.name}'" in line for m in [pid.search(line)] if m}
    bad = {m.group(1) for line in lines if "[warning]" in line or "[error]" in line
           for m in [pid.search(line)] if m and m.group(1) in ours}
    picked = [line for line in lines if (m := pid.search(line)) and m.group(1) in bad]
    return (f"RabbitMQ logged {len(ours)} connections to the vhost, {len(bad)} ending with a warning or an error"
            + (":\n" + "\n".join(picked[-limit:]) if picked else "") + "\n")


def redis_quarantine(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    out = []
    for raw in client.lrange(name, 0, -1):
        payload = json.loads(raw)
        out.append({"headers": payload.get("headers", {}), "body": payload.get("body")})
    return out


def run_scenario(cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path,
                 images: Images, backend_db: RedisDb, broker_url: str, broker_local_url: str,
                 broker: dict[str, Any], quarantine: Any, pool: str, queue_type: str = "classic",
                 quarantine_queue: str | None = None, describe_broker: Callable[[], str] | None = None) -> None:
    cp = cluster.control_plane
    install_checkout(cp)  # this checkout's CRDs (status fields), whatever another session installed since
    secret(cp, namespace, "backend", url=backend_db.url)
    op = operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, documents(images.sample_tasks, broker, pool, queue_type=queue_type,
                                   quarantine_queue=quarantine_queue))
    wait_ready(cp, namespace, "celeryapp", APP, 120)
    wait_pods_ready(cp, namespace, pool_selector(APP, POOL), 2, 240)
    cm = wait_for(lambda: get(cp, namespace, "configmap", f"{APP}-celery-config"), 30, "ConfigMap")
    env = celery_client_env(tmp_path, cm, broker_url, backend_db.url)
    client = backend_db.client()

    half = ORDINARY // 2
    sent = [celery_call(cluster, env, f"send:{QUEUE}:sample_tasks.tasks.{what}")
            for what in (f"tracked:[0.05]:{half}", "crash:[1]", "hog:[1024]", f"tracked:[0.05]:{half}")]
    first, [crash], [hog], behind = (s["ids"] for s in sent)
    retried = [r for s in sent for r in s.get("retried", [])]  # publishes the client retried after a connection error
    ordinary = first + behind
    started = time.monotonic()

    qname = quarantine_queue or poison.quarantine_queue(QUEUE)

    def set_aside() -> dict[str, dict[str, Any]] | None:
        found = quarantined_headers(quarantine(qname))
        return found if {crash, hog} <= set(found) else None

    records = wait_for(set_aside, 300, "both poison tasks in quarantine", interval=2)

    def all_ended() -> bool:
        return all(any(e.startswith("end:") for e in r) for r in runs(client, ordinary).values())

    try:
        wait_for(all_ended, 240, f"all {ORDINARY} ordinary tasks ran", interval=2)
    except AssertionError as e:  # say where they are: run, cut, or never started; and what the workers did
        every = runs(client, ordinary)
        ended = sum(any(x.startswith("end:") for x in r) for r in every.values())
        begun = sum(bool(r) for r in every.values())
        # Where the missing ones were sent: a run of them at the end of one client's batch, or spread out.
        missing = {"first": [i for i, t in enumerate(first) if not every[t]],
                   "behind": [i for i, t in enumerate(behind) if not every[t]]}
        held = sorted(quarantined_headers(quarantine(qname)))
        pods = list_objects(cp, namespace, "pods", pool_selector(APP, POOL))
        containers = [(p["metadata"]["name"], c.get("restartCount"), c.get("state"), c.get("lastState"))
                      for p in pods for c in p["status"].get("containerStatuses") or []]
        logs = "\n".join(f"--- {p['metadata']['name']}, its last 30 lines:\n"
                         + "\n".join(pod_logs(cp, namespace, p["metadata"]["name"]).splitlines()[-30:])
                         for p in pods)
        seen = {k: v for k, v in ((get(cp, namespace, "celeryworkerpool", POOL) or {}).get("status") or {}).items()
                if k in ("queueDepth", "messagesInFlight", "replicas", "readyReplicas")}
        raise AssertionError(f"{e}: {ended} ended, {begun - ended} started and not ended, {ORDINARY - begun} "
                             f"never started (their places in the two batches of {half}: {missing}); the client "
                             f"retried {retried or 'no publish'}; quarantined {held}; the pool's status: {seen}; "
                             f"{describe_broker() if describe_broker else ''}"
                             f"containers: {json.dumps(containers)}\n{logs}") from None
    elapsed = time.monotonic() - started
    every = runs(client, ordinary)
    starts = sum(sum(e.startswith("start:") for e in r) for r in every.values())
    interrupted = sum(sum(e.startswith("start:") for e in r) - sum(e.startswith("end:") for e in r)
                      for r in every.values())
    print(f"\n{pool} pool: {ORDINARY} ordinary tasks, {starts} runs ({interrupted} cut by a dying worker, "
          f"run again), drained with both poison tasks set aside in {elapsed:.0f}s; quarantine: "
          + json.dumps({k: [(d["pod"], d["how"]) for d in v["deaths"]] for k, v in records.items()}))
    # Each ordinary task ran to its end once; a second start is only allowed for a run a dying worker cut
    # (Celery's at-least-once for tasks in flight there), and those are counted above.
    for task_id, r in every.items():
        assert sum(e.startswith("end:") for e in r) == 1, (task_id, r)
    assert starts - ORDINARY == interrupted
    for task_id in (crash, hog):
        record = records[task_id]
        assert record["queue"] == QUEUE and record["quarantineQueue"] == qname
        assert len(record["deaths"]) == MAX_DEATHS, record
        # The result backend says it was not run (revoked), the ledger keeps its deaths for a replay.
        meta = json.loads(client.get(f"celery-task-meta-{task_id}") or b"{}")
        assert meta.get("status") == "REVOKED", meta
        assert client.hexists(poison.QUARANTINE_KEY, task_id)
    crash_how = {d["how"] for d in records[crash]["deaths"]}
    if pool == "prefork":
        assert crash_how == {"exitcode 1"}, records[crash]
    pods = list_objects(cp, namespace, "pods", pool_selector(APP, POOL))
    restarts = sum(c.get("restartCount", 0) for p in pods for c in p["status"].get("containerStatuses", []))
    print(f"{pool} pool: worker container restarts: {restarts}")
    if pool == "solo":
        # The container was the process that died: its last termination (exit code 1, or OOMKilled) has a
        # termination message naming the task it was running.
        pods = list_objects(cp, namespace, "pods", pool_selector(APP, POOL))
        ends = [c.get("lastState", {}).get("terminated", {}) for p in pods
                for c in p["status"].get("containerStatuses", [])]
        print("solo pool: last terminations: " + json.dumps([(t.get("reason"), t.get("exitCode"), t.get("message"))
                                                            for t in ends if t]))
        named = {i for t in ends if t for i in (poison.parse_termination_message(t.get("message")) or
                                                poison.InFlight("", {}, 0)).tasks}
        assert named & {crash, hog}, ends

    # Said: the pool's condition and Warning Events, the app's status, the operator's metric.
    def said() -> dict[str, Any] | None:
        body = get(cp, namespace, "celeryworkerpool", POOL) or {}
        cond = condition(body, api.TASKS_QUARANTINED)
        app_status = (get(cp, namespace, "celeryapp", APP) or {}).get("status") or {}
        listed = {t["id"] for t in app_status.get("quarantinedTasks") or []}
        # The pool's status and the app's are written apart: both must have seen the two tasks.
        if cond and cond["status"] == "True" and {crash, hog} <= listed \
                and (body.get("status") or {}).get("quarantinedTasks") == 2:
            return body
        return None

    try:
        body = wait_for(said, 90, "TasksQuarantined condition and the app's status list", interval=1)
    except AssertionError as e:
        pool_status = (get(cp, namespace, "celeryworkerpool", POOL) or {}).get("status")
        app_status = (get(cp, namespace, "celeryapp", APP) or {}).get("status")
        raise AssertionError(f"{e}\npool: {json.dumps(pool_status)}\napp: {json.dumps(app_status)}") from None
    assert body["status"]["quarantinedTasks"] == 2
    # The executor writes the status before it posts the Event that names the same change: awaited.
    warned: list[str] = []

    def both_warned() -> bool:
        warned[:] = [e["message"] for e in list_objects(cp, namespace, "events")
                     if e["reason"] == api.Reason.TASKS_QUARANTINED and e["involvedObject"]["name"] == POOL
                     and e["type"] == "Warning"]
        return (any(crash in m and "sample_tasks.tasks.crash" in m for m in warned)
                and any(hog in m for m in warned))

    try:
        wait_for(both_warned, 30, "a Warning Event for each quarantined task", interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {warned}") from None
    for task in ("sample_tasks.tasks.crash", "sample_tasks.tasks.hog"):
        assert metric_line(op, metrics.QUARANTINED_TASKS, namespace=namespace, task=task) == 1

    # Fixed (a flag on the pool: the pods roll), then replayed: each runs once more, and succeeds.
    cp.kubectl("patch", "celeryworkerpool", POOL, "-n", namespace, "--type", "merge", "-p", json.dumps(
        {"spec": {"env": [{"name": "SAMPLE_TASKS_POISON_FIXED", "value": "1"}]}}))
    wait_for(lambda: all(any(e.get("name") == "SAMPLE_TASKS_POISON_FIXED" for e in
                             p["spec"]["containers"][0].get("env") or [])
                         for p in list_objects(cp, namespace, "pods", pool_selector(APP, POOL))
                         if not p["metadata"].get("deletionTimestamp")) or None, 240, "pods rolled with the fix")
    wait_pods_ready(cp, namespace, pool_selector(APP, POOL), 2, 240)
    replay = subprocess.run([sys.executable, "-m", "celery_operator", "quarantine", "replay", APP, "-n", namespace],
                            env={**cp.env(), "PYTHONPATH": str(REPO / "operator")}, capture_output=True, text=True,
                            timeout=150)
    assert replay.returncode == 0, replay.stderr

    states: list[str | None] = []

    def succeeded() -> bool:
        states[:] = [json.loads(client.get(f"celery-task-meta-{i}") or b"{}").get("status") for i in (crash, hog)]
        return states == ["SUCCESS", "SUCCESS"]

    try:
        wait_for(succeeded, 120, "both replayed tasks succeeded", interval=1)
    except AssertionError as e:
        annotations = ((get(cp, namespace, "celeryapp", APP) or {}).get("metadata") or {}).get("annotations")
        replayed = [ev["message"] for ev in list_objects(cp, namespace, "events")
                    if ev["reason"] == api.Reason.QUARANTINE_REPLAYED]
        raise AssertionError(f"{e}: states {states} (crash, hog); the app's annotations {annotations}; replay "
                             f"Events {replayed}; still in quarantine "
                             f"{[m['headers'].get('id') for m in quarantine(qname)]}; "
                             f"{describe_broker() if describe_broker else ''}") from None
    assert not quarantine(qname)
    assert not client.hexists(poison.QUARANTINE_KEY, crash) and not client.exists(poison.LEDGER_PREFIX + crash)
    wait_for(lambda: (condition(get(cp, namespace, "celeryworkerpool", POOL), api.TASKS_QUARANTINED) or {})
             .get("status") == "False", 60, "TasksQuarantined turns False")
    events = list_objects(cp, namespace, "events")
    assert any(e["reason"] == api.Reason.QUARANTINE_REPLAYED and "2 put back" in e["message"] for e in events)



def test_rabbitmq_a_task_that_kills_its_worker_runs_max_worker_deaths_times_then_waits_in_quarantine(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    secret(cluster.control_plane, namespace, "broker", url=broker_vhost.url,
           managementUrl=broker_vhost.management_url)
    broker = {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                           "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}
    run_scenario(cluster, namespace, operator_factory, tmp_path, images, backend_db, broker_vhost.url,
                 broker_vhost.local_url, broker, lambda q: rabbit_quarantine(broker_vhost, q), "prefork",
                 describe_broker=lambda: describe_rabbitmq(broker_vhost))


def test_redis_a_task_that_kills_its_worker_runs_max_worker_deaths_times_then_waits_in_quarantine(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        backend_db: RedisDb) -> None:
    # One Redis database as broker and result backend (the ledger is in the result backend's Redis).
    secret(cluster.control_plane, namespace, "broker", url=backend_db.url)
    broker = {"external": {"urlSecretRef": {"name": "broker", "key": "url"}}}
    client = backend_db.client()
    run_scenario(cluster, namespace, operator_factory, tmp_path, images, backend_db, backend_db.url,
                 backend_db.local_url, broker, lambda q: redis_quarantine(client, q), "prefork")


def test_rabbitmq_a_task_that_kills_a_single_process_worker_container_is_named_in_its_termination_message(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    """The solo pool runs tasks in the worker's only process: the crash and the hog end the container (exit
    code 1, OOMKilled), whose termination message names the task, and the next worker counts the death."""
    secret(cluster.control_plane, namespace, "broker", url=broker_vhost.url,
           managementUrl=broker_vhost.management_url)
    broker = {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                           "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}
    run_scenario(cluster, namespace, operator_factory, tmp_path, images, backend_db, broker_vhost.url,
                 broker_vhost.local_url, broker, lambda q: rabbit_quarantine(broker_vhost, q), "solo",
                 describe_broker=lambda: describe_rabbitmq(broker_vhost))


def test_rabbitmq_quorum_queue_a_task_that_kills_its_worker_waits_in_the_chosen_quarantine_queue_then_replays(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    secret(cluster.control_plane, namespace, "broker", url=broker_vhost.url,
           managementUrl=broker_vhost.management_url)
    broker = {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                           "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}
    run_scenario(cluster, namespace, operator_factory, tmp_path, images, backend_db, broker_vhost.url,
                 broker_vhost.local_url, broker, lambda q: rabbit_quarantine(broker_vhost, q), "prefork",
                 queue_type="quorum", quarantine_queue="work-poisoned",  # a name the app chose
                 describe_broker=lambda: describe_rabbitmq(broker_vhost))
    assert broker_vhost.server.queue(broker_vhost.name, QUEUE)["type"] == "quorum"
