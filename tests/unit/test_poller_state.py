"""The poller owns the app's poll findings and its pools' autoscaler state: each poll replaces them with new
values (never changes one in place), and a scale, a drain's included, lands in the pool's state at once."""

from __future__ import annotations

import asyncio
import copy
import json
from contextlib import AbstractContextManager
from typing import Any

import pytest

from celery_operator.brokers import ledger
from celery_operator.brokers.base import BrokerError, DepthReport, QueueDepth
from celery_operator.controller import poller as poller_module
from celery_operator.controller.poller import Poller
from celery_operator.controller.state import AppState
from celery_operator.endpoints import Endpoint
from celery_operator.metrics import OperatorMetrics
from celery_operator.models import CeleryApp, CeleryQueue, CeleryWorkerPool, SecretKeyRef
from celery_operator.plan import Memory
from celery_operator.topology import Topology
from tests.unit.test_autoscale_keda import DEFAULTS as AUTOSCALING
from tests.unit.test_decide import APP, NS, POOL, QUEUE

KEY = (NS, "proj")
RECORD = {"id": "t1", "task": "m.boom", "queue": "work", "at": 1.0}


class Cache:
    def __init__(self, replicas: int) -> None:
        self.deployment = {"spec": {"replicas": replicas}, "status": {"readyReplicas": replicas}}

    def crs(self, key: Any) -> dict[Any, Any]:
        return {}

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.deployment if kind == "Deployment" else None

    def pods(self, namespace: str, app: str) -> list[dict[str, Any]]:
        return []


class Client:
    def __init__(self) -> None:
        self.scaled: list[int] = []

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None) -> None:
        assert (kind, sub) == ("Deployment", "scale")
        self.scaled.append(body["spec"]["replicas"])


class Recorder:
    async def emit(self, *args: Any, **kwargs: Any) -> None:
        pass

    normal = warning = emit


class Broker(AbstractContextManager["Broker"]):
    ready: int | None = 25  # None: the broker fails

    def __exit__(self, *exc: object) -> None:
        pass

    def measure(self, queues: Any, count_in_flight: bool) -> DepthReport:
        if self.ready is None:
            raise BrokerError("connection refused")
        return DepthReport("redis", {"work": QueueDepth("work", self.ready, 0, None)})


def unreadable(url: str) -> dict[str, str]:
    raise BrokerError("redis: connection refused")


def setup(monkeypatch: pytest.MonkeyPatch, quarantine: dict[str, str] | None) -> tuple[Poller, AppState, Client]:
    """An app with one pool autoscaled on depth (10 messages a replica), its Deployment at 1 replica."""
    pool = copy.deepcopy(POOL)
    pool["spec"]["autoscaling"] = AUTOSCALING
    topo = Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(pool)], ())
    broker = Endpoint(SecretKeyRef("broker", "url"), url="redis://redis:6379/0")
    state = AppState(uid="u", reconciled=Memory(topology=topo, broker=broker))
    monkeypatch.setattr(poller_module, "connect", lambda *a, **kw: Broker())

    monkeypatch.setattr(ledger, "read_quarantine", unreadable if quarantine is None else
                        lambda url: quarantine)
    client = Client()
    poller = Poller(client, Cache(replicas=1), Recorder(), OperatorMetrics(),  # type: ignore[arg-type]
                    lambda _key, _full: None)
    return poller, state, client


def test_a_poll_replaces_its_findings_and_the_pools_state_with_new_values(monkeypatch: pytest.MonkeyPatch) -> None:
    poller, state, client = setup(monkeypatch, {"t1": json.dumps(RECORD)})
    before, pools_before = state.findings, state.pools
    asyncio.run(poller.poll(KEY, state))
    assert before.polled.poll.broker_up is None and dict(pools_before) == {}  # what was read before stays as it was
    polled = state.findings.polled
    assert (polled.poll.broker_up, polled.poll.error, polled.poll.failed_polls) == (True, None, 0)
    assert [r["id"] for r in polled.quarantined or []] == ["t1"] and polled.quarantine_problem is None
    assert client.scaled == [3]  # 25 messages, 10 a replica
    st = state.pools["w"]
    assert (st.desired, st.depth, st.source) == (3, 25, "redis") and st.last_scale_time is not None
    assert state.last_seen == state.seen()


def test_a_failed_poll_counts_the_failure_and_keeps_the_pools_count_and_the_quarantine_last_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    poller, state, client = setup(monkeypatch, {"t1": json.dumps(RECORD)})
    asyncio.run(poller.poll(KEY, state))
    first, pool_first = state.findings, state.pools["w"]
    monkeypatch.setattr(Broker, "ready", None)
    monkeypatch.setattr(ledger, "read_quarantine", unreadable)
    asyncio.run(poller.poll(KEY, state))
    polled = state.findings.polled
    assert (polled.poll.broker_up, polled.poll.error, polled.poll.failed_polls) == (False, "connection refused", 1)
    assert polled.quarantined == first.polled.quarantined and polled.polled_at > first.polled.polled_at
    assert state.findings.statistics == first.statistics and state.findings.waits == first.waits
    st = state.pools["w"]
    assert (st.desired, st.depth, st.source, st.last_scale_time) == (3, None, "redis", pool_first.last_scale_time)
    assert client.scaled == [3]  # missing data never scales down
    assert first.polled.poll.broker_up is True and pool_first.depth == 25  # the earlier values unchanged


def test_without_a_redis_the_quarantine_is_not_read_and_the_findings_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    poller, state, _ = setup(monkeypatch, None)
    broker = Endpoint(SecretKeyRef("broker", "url"), url="amqp://rabbit//", management_url="http://rabbit:15672")
    state.reconciled = Memory(topology=state.topology, broker=broker)
    asyncio.run(poller.poll(KEY, state))
    polled = state.findings.polled
    assert polled.quarantined is None and "poison-task protection is off" in (polled.quarantine_problem or "")


def test_a_scale_a_drain_makes_after_the_poll_lands_in_the_pools_state_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    poller, state, client = setup(monkeypatch, {})
    asyncio.run(poller.poll(KEY, state))
    polled = state.pools["w"]
    topo = state.topology
    assert topo is not None
    (pool,) = [p for p in topo.effective_pools if p.meta.name == "w"]
    assert asyncio.run(poller._scale(KEY, state, pool, 3, 2, "drained"))  # what a drain's task calls
    st = state.pools["w"]
    assert client.scaled == [3, 2] and st.desired == 2 and st.last_scale_time is not None
    assert (st.history, st.depth) == (polled.history, polled.depth) and polled.desired == 3


def test_a_pool_no_longer_autoscaled_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    poller, state, _ = setup(monkeypatch, {})
    asyncio.run(poller.poll(KEY, state))
    assert set(state.pools) == {"w"}
    plain = Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(POOL)], ())
    state.reconciled = Memory(topology=plain, broker=state.broker)
    asyncio.run(poller.poll(KEY, state))
    assert dict(state.pools) == {}
