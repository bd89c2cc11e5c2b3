"""Producers configured by the generated config, publishing to a quorum queue on a real RabbitMQ.

Several producers at once each publish bursts of tasks and close their connection right after each
burst, as a CronJob or a recycled web worker does. Without publisher confirms RabbitMQ drops the tail of
some bursts to a quorum queue (bench/quorum_publish.py measures how many); the generated config of an app
with a quorum queue turns confirms on (`confirms_publishes`), so every task must be in the queue. The
operator's own publishes into an app's queues (a quarantine replay) are confirmed too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kombu
import pytest

from celery_operator import poison
from celery_operator.brokers.ledger import move_back
from celery_operator.brokers.rabbitmq import RabbitMQBroker
from celery_operator.config import celery_config
from celery_operator.topology import Topology
from localenv.procs import REPO
from tests.fixtures.brokers import Vhost, vhost_counts
from tests.fixtures.operator import wait_for
from tests.fixtures.workers import client_env, write_config
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENT = REPO / "tests" / "e2e" / "client.py"
ADD = "sample_tasks.tasks.add"
PRODUCERS, BURSTS, PER_BURST = 4, 10, 100


def test_producers_closing_right_after_their_bursts_lose_no_task_to_a_quorum_queue(
        rabbitmq_vhost: Vhost, tmp_path: Path) -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("work", queueType="quorum", tasks=[ADD])])
    assert celery_config(topo)["broker_transport_options"] == {"confirm_publish": True}
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    assert [r for r in broker.declare(topo.effective_exchanges, topo.effective_queues) if not r.ok] == []
    env = client_env(topo, write_config(topo, tmp_path / "config"), rabbitmq_vhost.url)

    producers = [subprocess.Popen([sys.executable, str(CLIENT), f"bursts:work:{BURSTS}:{PER_BURST}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(PRODUCERS)]
    sent = 0
    for p in producers:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert "retried" not in report, report
        assert report["confirmed"], report  # each burst's connection waited for RabbitMQ's confirms
        sent += report["sent"]

    assert sent == PRODUCERS * BURSTS * PER_BURST
    # Each publish returned once RabbitMQ confirmed it: the queue holds every task now, nothing left to await.
    with kombu.Connection(rabbitmq_vhost.url, connect_timeout=5) as conn:
        in_queue = conn.default_channel.queue_declare("work", passive=True).message_count
    assert in_queue == sent


def test_replaying_quarantined_tasks_into_a_quorum_queue_has_rabbitmq_confirm_each_one(rabbitmq_vhost: Vhost) -> None:
    """The replay acknowledges each message in quarantine once it is published again: on a quorum queue that
    must mean confirmed, or a message the queue then drops is lost from both (the app's options say nothing)."""
    topo = Topology.of(crs.app(), queues=[crs.queue("work", queueType="quorum", tasks=[ADD])])
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    assert [r for r in broker.declare(topo.effective_exchanges, topo.effective_queues) if not r.ok] == []
    ids = [f"task-{i}" for i in range(50)]
    quarantine = poison.quarantine_queue("work")
    with kombu.Connection(rabbitmq_vhost.url, connect_timeout=5) as conn:
        producer = conn.Producer()
        for task_id in ids:
            record = json.dumps({"id": task_id, "queue": "work"})
            producer.publish({"n": task_id}, exchange="", routing_key=quarantine, delivery_mode=2,
                             headers={poison.QUARANTINE_HEADER: record, "id": task_id},
                             declare=[kombu.Queue(quarantine, durable=True, auto_delete=False)])
    confirms_before = vhost_counts(rabbitmq_vhost.server, rabbitmq_vhost.name).get("confirm", 0)

    moved = move_back(rabbitmq_vhost.url, None, [quarantine], lambda record: True)

    assert moved == ids
    with kombu.Connection(rabbitmq_vhost.url, connect_timeout=5) as conn:
        assert conn.default_channel.queue_declare("work", passive=True).message_count == len(ids)
        assert conn.default_channel.queue_declare(quarantine, passive=True).message_count == 0
    # RabbitMQ's statistics (every 5 s, and later on a loaded machine) count the confirms it sent.
    wait_for(lambda: vhost_counts(rabbitmq_vhost.server, rabbitmq_vhost.name).get("confirm", 0)
             >= confirms_before + len(ids), 120, f"RabbitMQ counting the {len(ids)} replays confirmed")
