"""Pools follow the depth of their queues on real brokers; blind spots never scale down."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.procs import tail
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.cluster_brokers import PodRedis
from tests.fixtures.operator import (
    OperatorFactory,
    OperatorProcess,
    apply,
    celery_call,
    celery_client_env,
    condition,
    get,
    list_events,
    list_objects,
    metric_line,
    secret,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def topology(image: str, autoscaling: dict[str, Any], *, concurrency: int = 2, pool: str = "low",
             app_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    v = api.API_VERSION
    return [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": "proj"},
         "spec": {"image": image, "app": "sample_tasks.app", "config": app_config or {},
                  "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                          "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}},
                  "resultBackend": {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}}},
        {"apiVersion": v, "kind": "CeleryExchange", "metadata": {"name": "task"},
         "spec": {"appRef": {"name": "proj"}}},
        {"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": "low-queue"},
         "spec": {"appRef": {"name": "proj"}, "name": "low_queue", "exchange": "task", "routingKey": "low_task"}},
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": pool},
         "spec": {"appRef": {"name": "proj"}, "queues": ["low_queue"], "concurrency": concurrency,
                  "terminationGracePeriodSeconds": 30, "autoscaling": {"pollIntervalSeconds": 1, **autoscaling}}},
    ]


@dataclass
class Scaled:
    cluster: Cluster
    ns: str
    operator: OperatorProcess
    client_env: dict[str, str]

    @property
    def cp(self) -> ControlPlane:
        return self.cluster.control_plane

    def replicas(self, deployment: str = "proj-low") -> int | None:
        d = get(self.cp, self.ns, "deployment", deployment)
        return None if d is None else int(d["spec"].get("replicas", 1))

    def publish(self, n: int, seconds: float = 0.01) -> None:
        celery_call(self.cluster, self.client_env, f"publish:low_queue:{n}:{seconds}")

    def pool(self, name: str = "low") -> dict[str, Any]:
        p = get(self.cp, self.ns, "celeryworkerpool", name)
        assert p is not None
        p.setdefault("status", {})  # not written yet right after the pool is created: nothing observed
        return p

    def polls(self, result: str) -> float:
        return metric_line(self.operator, "celery_operator_broker_polls_total", app="proj", namespace=self.ns,
                           result=result) or 0.0

    def wait_polls(self, n: int, result: str) -> None:
        """Until the operator has polled the broker `n` more times with `result` (success, error) and decided
        on each (a poll's scale decision follows its count: the next poll's count shows it is done)."""
        start = self.polls(result)
        wait_for(lambda: self.polls(result) >= start + n + 1, 30 + 10 * n, f"{n} more polls ({result})")


def _setup(cluster: Cluster, ns: str, factory: OperatorFactory, tmp: Path, image: str, broker_url: str, mgmt: str,
           backend_url: str, autoscaling: dict[str, Any], **kw: Any) -> Scaled:
    cp = cluster.control_plane
    secret(cp, ns, "broker", url=broker_url, managementUrl=mgmt)
    secret(cp, ns, "backend", url=backend_url)
    op = factory("--namespace", ns, "--no-leader-election")
    apply(cp, ns, topology(image, autoscaling, **kw))
    wait_ready(cp, ns, "celeryqueue", "low-queue", 60)
    cm = wait_for(lambda: get(cp, ns, "configmap", "proj-celery-config"), 30, "ConfigMap")
    return Scaled(cluster, ns, op, celery_client_env(tmp, cm, broker_url, backend_url))


@pytest.fixture
def rabbit_scaled(cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path,
                  images: Images, broker_vhost: Vhost, backend_db: RedisDb, request: pytest.FixtureRequest) -> Scaled:
    autoscaling = dict(request.param)
    app_config = autoscaling.pop("_app_config", None)
    return _setup(cluster, namespace, operator_factory, tmp_path, images.sample_tasks, broker_vhost.url,
                  broker_vhost.management_url, backend_db.url, autoscaling, app_config=app_config)


@pytest.mark.parametrize("rabbit_scaled", [{"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 10,
                                            "scaleDownStabilizationSeconds": 5}], indirect=True)
def test_backlog_scales_the_pool_up_to_max_and_back_to_min_after_draining(rabbit_scaled: Scaled) -> None:
    s = rabbit_scaled
    wait_for(lambda: s.replicas() == 1, 30, "pool at its minimum")
    # 2 s tasks: the pool's first worker (concurrency 2) takes about 50 s alone, so the backlog stands.
    s.publish(50, seconds=2)
    try:
        wait_for(lambda: s.replicas() == 4, 120, "4 replicas for 50 messages / 10 per replica")
    except AssertionError as e:  # what the operator saw and did instead
        events = [f"{ev['reason']}: {ev['message']}" for ev in list_objects(s.cp, s.ns, "events")
                  if ev["involvedObject"]["name"] == "low"]
        raise AssertionError(f"{e}\nreplicas {s.replicas()}, pool status {s.pool()['status']}\nevents: {events}\n"
                             f"operator log:\n{tail(s.operator.log, 60)}") from None
    wait_for(lambda: s.pool()["status"].get("lastScaleTime"), 30, "the scale in the pool's status")
    # The status is the latest reading: by the time a loaded machine reads it the new workers may have drained the
    # queue. The ScaledUp Event records the reading the decision was made on (posted after the status: awaited).
    def scaled_to_four() -> list[re.Match[str]]:
        return [m for e in list_events(s.cp, s.ns) if e["reason"] == api.Reason.SCALED_UP
                and e["involvedObject"]["name"] == "low"
                and (m := re.match(r"\d+ → 4: (\d+) messages ready", e["message"]))]

    to_four = wait_for(scaled_to_four, 30, "a ScaledUp Event to 4")
    events = list_events(s.cp, s.ns)
    assert to_four and all(int(m.group(1)) >= 31 for m in to_four), [e["message"] for e in events]
    wait_for(lambda: s.pool()["status"].get("queueDepth") == 0, 240, "workers drained the queue")
    wait_for(lambda: s.replicas() == 1, 120, "back to minReplicas after the stabilization window")


@pytest.mark.parametrize("rabbit_scaled", [{"minReplicas": 0, "maxReplicas": 4, "targetMessagesPerReplica": 10,
                                            "activationMessages": 5}], indirect=True)
def test_a_pool_at_zero_wakes_only_above_activation(rabbit_scaled: Scaled) -> None:
    s = rabbit_scaled
    wait_for(lambda: s.replicas() == 0, 30, "pool at zero")
    s.publish(3)
    wait_for(lambda: s.pool()["status"].get("queueDepth") == 3, 30, "3 messages measured")
    s.wait_polls(3, "success")  # three more decisions on 3 messages
    assert s.replicas() == 0
    s.publish(3)
    wait_for(lambda: s.replicas() == 1, 30, "6 messages > activation 5 wake the pool")


@pytest.mark.parametrize("rabbit_scaled", [{"minReplicas": 1, "maxReplicas": 3, "targetMessagesPerReplica": 2,
                                            "scaleDownStabilizationSeconds": 2, "countInFlight": True,
                                            "_app_config": {"task_acks_late": True}}],
                         indirect=True)
def test_busy_workers_holding_prefetched_tasks_are_not_scaled_down(rabbit_scaled: Scaled) -> None:
    """With acks_late (the README's advice for long tasks) running tasks stay unacknowledged: in flight."""
    s = rabbit_scaled
    # Tasks long enough to outlast the slowest start of 3 workers under load and the polls below: the pool must
    # hold while all 6 are still running (the test ends at the assertion; it never waits for them to finish).
    s.publish(6, seconds=90)
    wait_for(lambda: s.replicas() == 3, 60, "3 replicas for 6 messages / 2 per replica")

    def all_in_flight() -> dict[str, Any] | None:
        st = s.pool()["status"]
        return st if st.get("queueDepth") == 0 and st.get("messagesInFlight") == 6 else None

    wait_for(all_in_flight, 150, "every task taken by a worker")
    s.wait_polls(7, "success")  # 1 s apart: over three times the scale-down window, ready 0 and in flight 6
    assert s.replicas() == 3
    assert s.pool()["status"]["desiredReplicas"] == 3


def test_a_broker_outage_holds_replicas_and_recovers_by_itself(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images) -> None:
    broker = PodRedis(cluster.control_plane, namespace, "broker", images.redis)  # this test's own: it stops it
    broker.deploy()
    s = _setup(cluster, namespace, operator_factory, tmp_path, images.sample_tasks, broker.url(0), "",
               broker.url(1), {"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 10,
                               "scaleDownStabilizationSeconds": 0})
    # 40 tasks of 4 s: a poll in the middle of the publishing sees fewer, and the next one scales further up.
    s.publish(40, seconds=4)
    wait_for(lambda: (s.replicas() or 0) >= 3, 90, "3 or more replicas for 40 messages")
    broker.stop()

    def degraded() -> bool:
        c = condition(s.pool(), "Degraded")
        return bool(c and c["status"] == "True" and c["reason"] == api.Reason.BROKER_UNREACHABLE)

    wait_for(degraded, 60, "Degraded/BrokerUnreachable")
    held = s.replicas()  # from here every poll fails
    assert f'celery_operator_broker_up{{app="proj",namespace="{namespace}"}} 0.0' in s.operator.get("/metrics")[1]
    s.wait_polls(3, "error")  # scaleDownStabilizationSeconds 0: a scale-down on missing data would be at once
    assert s.replicas() == held and (held or 0) >= 2  # never scaled down on missing data (above minReplicas 1)
    broker.start()

    def recovered() -> bool:
        c = condition(s.pool(), "Degraded")
        return bool(c and c["status"] == "False")

    wait_for(recovered, 60, "Degraded cleared")
    assert f'celery_operator_broker_up{{app="proj",namespace="{namespace}"}} 1.0' in s.operator.get("/metrics")[1]


@pytest.mark.parametrize("rabbit_scaled", [{"minReplicas": 0, "maxReplicas": 2, "activationMessages": 100}],
                         indirect=True)
def test_prometheus_scrapes_the_true_backlog_from_the_operator(rabbit_scaled: Scaled, prometheus_factory: Any,
                                                               promtool: Any) -> None:
    s = rabbit_scaled
    s.publish(7)
    wait_for(lambda: s.pool()["status"].get("queueDepth") == 7, 30, "7 messages measured")
    prom = prometheus_factory([f"127.0.0.1:{s.operator.port}"])
    query = f'celery_queue_length{{queue_name="low_queue",namespace="{s.ns}"}}'
    # Its first scrape, then the true backlog (awaited: the first scrapes may come before the operator's
    # next poll exports it).
    seen: list[str] = []

    def scraped_seven() -> bool:
        result = prom.query(query)
        seen.append(result[0]["value"][1] if result else "no series")
        return seen[-1] == "7"

    try:
        wait_for(scraped_seven, 120, "Prometheus scraping 7")
    except AssertionError as e:
        raise AssertionError(f"{e}; the last answers: {seen[-20:]}") from None
    scrape = s.operator.get("/metrics")[1]
    out = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "celery_active_consumer_count" not in line]
    assert problems == [], problems

