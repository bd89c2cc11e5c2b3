"""A worker whose broker connection hangs (half-open: the broker stays up and answers everyone else) is
restarted by its liveness probe, saying why, and the tasks sent meanwhile are consumed. The probe is
served by the worker over HTTP: the kubelet's Unhealthy Event keeps only its status code, and the restarted
container's previous log has the verdict.

The cut is made where it happens in life, in the worker pod's network namespace: iptables drops every packet
of the worker's consumer connection (its local port, which the worker records in its probe state file) in
both directions, so the socket stays open with nothing arriving, while new connections (the probe's, the
restarted container's) work. The pod's network namespace outlives its containers: the rules are removed once
the restart is seen, always.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from celery_operator import api
from localenv.cluster import Cluster
from tests.e2e.faults import external_app, pool, queue
from tests.fixtures.brokers import vhost_counts
from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    get,
    pool_selector,
    secret,
    wait_for,
    wait_pods_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
STUCK_AFTER_SECONDS = api.MIN_STUCK_AFTER_SECONDS
# The liveness probe fails once the connection has been silent for stuckAfterSeconds and twice its rhythm
# (AMQP: the broker's heartbeat every 30 s, so 60 s; Redis: a BRPOP reply every second), then three times
# 10 s apart; the kubelet then stops the container (SIGTERM, a 30 s grace) and starts it again.
RESTART_BOUND_SECONDS = 150
TASKS = 20


def container_status(cluster: Cluster, ns: str, pod: str) -> dict[str, Any]:
    (status,) = (get(cluster.control_plane, ns, "pod", pod) or {})["status"]["containerStatuses"]
    return dict(status)


def worker_state(cluster: Cluster, ns: str, pod: str) -> dict[str, Any]:
    out = cluster.control_plane.kubectl("exec", "-n", ns, pod, "-c", "worker", "--", "cat", api.WORKER_STATE_FILE)
    return dict(json.loads(out.stdout))


def container_pid(cluster: Cluster, container_id: str) -> int:
    info = json.loads(cluster.node.crictl("inspect", container_id.split("://", 1)[-1]).stdout)
    return int(info["info"]["pid"])


@contextlib.contextmanager
def cut(pid: int, local_port: int) -> Iterator[None]:
    """Drop both directions of one TCP connection in the network namespace of process `pid`."""
    rules = [["INPUT", "-p", "tcp", "--dport", str(local_port), "-j", "DROP"],
             ["OUTPUT", "-p", "tcp", "--sport", str(local_port), "-j", "DROP"]]
    added = []
    try:
        for rule in rules:
            subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables", "-w", "-I", *rule], check=True,
                           capture_output=True, text=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables", "-w", "-D", *rule], check=False,
                           capture_output=True, text=True)


def liveness_failures(cluster: Cluster, ns: str, pod: str) -> list[str]:
    """The kubelet's Unhealthy Events of `pod`'s liveness probe."""
    out = cluster.control_plane.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pod},reason=Unhealthy", "-o", "json")
    return [e.get("message", "") for e in json.loads(out.stdout)["items"] if "Liveness" in e.get("message", "")]


def stuck_verdicts(cluster: Cluster, ns: str, pod: str) -> list[str]:
    """The probe's verdicts in the log of `pod`'s previous (restarted) container."""
    logs = cluster.control_plane.kubectl("logs", "-n", ns, pod, "--previous", check=False).stdout
    return [line for line in logs.splitlines() if "celery-operator: stuck worker, restarting" in line]


def done(backend_local: str, ids: list[str]) -> int:
    with redis_lib.Redis.from_url(backend_local) as c:
        raw = c.mget([f"celery-task-meta-{i}" for i in ids])
    return sum(1 for v in raw if v is not None and b'"SUCCESS"' in v)


# RabbitMQ: py-amqp notices the cut itself within a heartbeat tick (its socket's TCP_USER_TIMEOUT of 1 s fails
# the next frame it sends) and the worker restarts in about 40 s. RabbitMQ keeps the dead connection "running"
# (heartbeat timeout 60) for minutes, holding the messages it had prefetched and the worker's exclusive pidbox
# queue (named after the pod), so the restarted container exits on RESOURCE_LOCKED until the operator, seeing
# the restart, closes the connections the earlier container opened (management API): the Event says so.
def stale_closed_events(cluster: Cluster, ns: str, pod: str) -> list[str]:
    out = cluster.control_plane.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"reason={api.Reason.STALE_CONNECTIONS_CLOSED}", "-o", "json")
    return [e.get("message", "") for e in json.loads(out.stdout)["items"] if f"pod {pod}'s" in e.get("message", "")]


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_a_worker_whose_broker_connection_is_cut_is_restarted_with_an_event_and_others_consume_its_tasks(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, images: Images, tmp_path: Path,
        cluster_rabbitmq: PodRabbitMQ, cluster_redis: PodRedis, kind: str) -> None:
    cp, ns = cluster.control_plane, namespace
    backend_db, broker_db = secrets.SystemRandom().sample(range(1, cluster_redis.databases), 2)
    for db in (backend_db, broker_db):
        with redis_lib.Redis.from_url(cluster_redis.local_url(db)) as c:
            c.flushdb()
    config: dict[str, Any] = {}
    if kind == "rabbitmq":
        vhost = f"stuck-{secrets.token_hex(4)}"
        cluster_rabbitmq.add_vhost(vhost)
        url, management = cluster_rabbitmq.url(vhost), cluster_rabbitmq.management_url
    else:
        url, management = cluster_redis.url(broker_db), ""
        # kombu 5.7 drops a BRPOP connection whose reply is overdue by its health_check_interval (25 s)
        # and reconnects by itself; kombu before 5.7 (Celery 5.3/5.4 images) waits for ever. Without that
        # check, as there, only the probe can bring the worker back: that is what this test proves.
        config = {"broker_transport_options": {"health_check_interval": 0, "visibility_timeout": 60}}
    try:
        secret(cp, ns, "broker", url=url, managementUrl=management)
        secret(cp, ns, "backend", url=cluster_redis.url(backend_db))
        operator_factory("--namespace", ns, "--no-leader-election")
        apply(cp, ns, [external_app("proj", images.sample_tasks, config=config, backend=True),
                       queue("proj", "work", "work"),
                       pool("proj", "w", ["work"], replicas=2, concurrency=2, terminationGracePeriodSeconds=30,
                            stuckAfterSeconds=STUCK_AFTER_SECONDS)])
        pods = wait_pods_ready(cp, ns, pool_selector("proj", "w"), 2, 240)
        victim, other = pods
        cm = wait_for(lambda: get(cp, ns, "configmap", "proj-celery-config"), 30, "ConfigMap")
        env = celery_client_env(tmp_path, cm, url, cluster_redis.url(backend_db))
        # The consumer is connected and, on Redis, waiting in a BRPOP (a state with a rhythm).
        state = wait_for(lambda: (s := worker_state(cluster, ns, victim)).get("rhythm") and s, 60, "consumer state")
        local_port = int(state["local"].rsplit(":", 1)[1])
        status = container_status(cluster, ns, victim)
        assert status["restartCount"] == 0
        pid = container_pid(cluster, status["containerID"])

        with cut(pid, local_port):
            cut_at = time.monotonic()
            time.sleep(2)  # a BRPOP sent before the cut has timed out on the server: nothing more goes there
            ids = celery_call(cluster, env, f"publish:work:{TASKS}:0.5")["ids"]
            wait_for(lambda: container_status(cluster, ns, victim)["restartCount"] >= 1, RESTART_BOUND_SECONDS,
                     "the cut worker restarted", interval=2)
            restarted_after = time.monotonic() - cut_at
            if kind == "rabbitmq":  # still cut: RabbitMQ cannot learn from the pod's kernel that it is dead
                closed = wait_for(lambda: stale_closed_events(cluster, ns, victim), 90,
                                  "Event: the earlier container's connections closed", interval=2)
                print(f"\n{kind}: {closed[0]}", flush=True)
        print(f"\n{kind}: cut worker restarted {restarted_after:.0f} s after the cut", flush=True)

        status = container_status(cluster, ns, victim)
        verdicts = stuck_verdicts(cluster, ns, victim)
        if kind == "redis":
            # Nothing in redis-py notices a half-open BRPOP: the probe does, and its verdict says why.
            try:
                wait_for(lambda: liveness_failures(cluster, ns, victim), 30, "Unhealthy Event: liveness")
                verdicts = wait_for(lambda: stuck_verdicts(cluster, ns, victim), 30, "the probe's verdict logged")
            except AssertionError as e:
                seen = cp.kubectl("get", "events", "-n", ns, "--field-selector",
                                  f"involvedObject.name={victim}").stdout
                logs = cp.kubectl("logs", "-n", ns, victim, "--previous", "--tail", "40", check=False)
                raise AssertionError(f"{e}\n{seen}\n{json.dumps(status)}\nprevious log:\n{logs.stdout}") from None
            assert "broker connection" in verdicts[-1] and f":{local_port}" in verdicts[-1], verdicts
        print(f"{kind}: restarted by {'its liveness probe: ' + verdicts[-1] if verdicts else status['lastState']}",
              flush=True)
        try:
            wait_for(lambda: done(cluster_redis.local_url(backend_db), ids) == TASKS, 120,
                     f"all {TASKS} tasks sent while the worker was cut consumed", interval=2)
        except AssertionError as e:
            where = ""
            if kind == "rabbitmq":
                where = json.dumps([{k: q.get(k) for k in ("name", "messages_ready", "messages_unacknowledged",
                                                             "consumers")}
                                    for q in cluster_rabbitmq.api("GET", f"/api/queues/{vhost}")])
                where += json.dumps([{k: c.get(k) for k in ("peer_host", "peer_port", "state", "timeout")}
                                     for c in cluster_rabbitmq.api("GET", f"/api/vhosts/{vhost}/connections")])
                # What RabbitMQ counted: published, delivered, acknowledged, redelivered, in the vhost.
                where += json.dumps(vhost_counts(cluster_rabbitmq, vhost))
            raise AssertionError(f"{e}: {done(cluster_redis.local_url(backend_db), ids)} done; {where}; "
                                 f"{json.dumps(container_status(cluster, ns, victim))}") from None
        consumed_after = time.monotonic() - cut_at
        print(f"{kind}: all {TASKS} tasks done {consumed_after:.0f} s after the cut", flush=True)
        assert container_status(cluster, ns, other)["restartCount"] == 0
        wait_pods_ready(cp, ns, pool_selector("proj", "w"), 2, 120)
    finally:
        if kind == "rabbitmq":
            with contextlib.suppress(Exception):
                cluster_rabbitmq.delete_vhost(vhost)
