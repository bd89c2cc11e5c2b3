"""What the scale-in asks real workers over real brokers: their running and reserved tasks, and to stop
and restart consuming (Celery's remote control, as the operator speaks it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_operator.brokers import BrokerUnreachable
from celery_operator.brokers.control import RemoteControl
from celery_operator.topology import Topology
from sample_tasks import create_app
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import wait_for
from tests.fixtures.workers import LocalWorkers
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SLOW = "sample_tasks.tasks.slow"


def topology(**config: object) -> Topology:
    app = crs.app(config={"task_acks_late": True, **config})
    return Topology.of(app, queues=[crs.queue("jobs")], pools=[crs.pool("p", ["jobs"], concurrency=1)])


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        vhost: Vhost = request.getfixturevalue("rabbitmq_vhost")
        return vhost.url
    db: RedisDb = request.getfixturevalue("redis_db")
    return db.url


def test_loads_name_each_workers_running_task_and_leave_out_nodes_that_do_not_answer(
        broker_url: str, local_workers: LocalWorkers, tmp_path: Path) -> None:
    topo = topology()
    busy, idle = (local_workers(topo, "p", broker_url, host) for host in ("busy-host", "idle-host"))
    busy.wait_ready()
    idle.wait_ready()
    client = create_app({"broker_url": broker_url, "task_acks_late": True})
    try:
        task = client.send_task(SLOW, (60,), queue="jobs")
        wait_for(lambda: f"{task.id}] received" in busy.logs() + idle.logs(), 30, "a worker took the task")
        runner, other = (busy, idle) if f"{task.id}] received" in busy.logs() else (idle, busy)
        with RemoteControl(broker_url, topo.app.config) as rc:
            loads = rc.loads([busy.node, idle.node, "p@no-such-host"])
        assert set(loads) == {busy.node, idle.node}
        assert loads[runner.node].active == (task.id,) and loads[runner.node].reserved == ()
        assert loads[other.node].idle
    finally:
        client.close()


def test_a_worker_whose_consumers_are_cancelled_takes_nothing_new_until_they_are_added_back(
        broker_url: str, local_workers: LocalWorkers) -> None:
    topo = topology()
    w = local_workers(topo, "p", broker_url, "drained-host")
    w.wait_ready()
    client = create_app({"broker_url": broker_url, "task_acks_late": True})
    try:
        with RemoteControl(broker_url, topo.app.config) as rc:
            assert rc.cancel_consumers(["jobs"], [w.node]) == {w.node}
            task = client.send_task(SLOW, (0.1,), queue="jobs")
            # The worker answers, holds nothing, and the message waits in the queue.
            for _ in range(3):
                assert rc.loads([w.node])[w.node].idle
            assert f"{task.id}] received" not in w.logs()
            assert rc.add_consumers(["jobs"], [w.node]) == {w.node}
        wait_for(lambda: f"{task.id}] succeeded" in w.logs(), 60, "the waiting task ran once consuming again")
    finally:
        client.close()


def test_redis_key_prefix_of_the_app_is_honoured(redis_db: RedisDb, local_workers: LocalWorkers) -> None:
    opts = {"global_keyprefix": "tenant-a:"}
    topo = topology(broker_transport_options=opts)
    w = local_workers(topo, "p", redis_db.url, "prefixed-host")
    w.wait_ready()
    with RemoteControl(redis_db.url, topo.app.config, opts) as rc:
        assert rc.loads([w.node])[w.node].idle
    with RemoteControl(redis_db.url, topo.app.config, {}, timeout=1.0) as rc:
        assert rc.loads([w.node]) == {}  # without the prefix nobody hears the operator


def test_an_unreachable_broker_raises_broker_unreachable() -> None:
    with pytest.raises(BrokerUnreachable), RemoteControl("redis://127.0.0.1:1/0") as rc:
        rc.loads(["p@x"])
