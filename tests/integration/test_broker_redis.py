"""RedisBroker against a real redis-server, with kombu's own Redis transport as the other side."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from celery_operator import api
from celery_operator.brokers import BrokerUnreachable, connect
from celery_operator.brokers.redis import RedisBroker
from localenv.brokers import free_port
from tests.fixtures.brokers import RedisDb, exchange_model, queue_model

pytestmark = pytest.mark.integration

PRIORITIES = (0, 3, 6, 9)


@contextmanager
def kombu_channel(url: str, options: dict[str, Any] | None = None) -> Iterator[Any]:
    with Connection(url, transport_options=options or {}, connect_timeout=5) as conn:
        ch = conn.channel()
        try:
            yield ch
        finally:
            ch.close()


def publish(url: str, exchange: Exchange, routing_key: str, n: int, *, priority: int | None = None,
            options: dict[str, Any] | None = None) -> None:
    """Publish with kombu's producer, which routes through the binding tables in Redis
    (it declares the exchange in its channel only; it declares no queue)."""
    with kombu_channel(url, options) as ch:
        producer = Producer(ch, exchange=exchange)
        for i in range(n):
            producer.publish({"n": i}, routing_key=routing_key, priority=priority, serializer="json")


def test_declared_bindings_route_published_messages_to_their_queues(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    results = broker.declare(
        [exchange_model("events", "topic"), exchange_model("work", "direct")],
        [queue_model("orders", exchange="events", routingKey="orders.#"),
         queue_model("invoices", exchange="events", routingKey="invoices.*"),
         queue_model("jobs", exchange="work", routingKey="jobs"),
         queue_model("plain")])
    assert all(r.ok for r in results)

    publish(redis_db.url, Exchange("events", "topic"), "orders.eu.created", 2)
    publish(redis_db.url, Exchange("events", "topic"), "invoices.eu", 3)
    publish(redis_db.url, Exchange("work", "direct"), "jobs", 4)
    publish(redis_db.url, Exchange("plain", "direct"), "plain", 5)

    report = broker.measure(["orders", "invoices", "jobs", "plain"])
    assert {n: d.ready for n, d in report.queues.items()} == {"orders": 2, "invoices": 3, "jobs": 4, "plain": 5}
    assert report.source == "redis"
    with redis_db.client() as c:
        assert c.smembers("_kombu.binding.work") == {b"jobs\x06\x16\x06\x16jobs"}
        assert c.smembers("_kombu.binding_permanent.work") == {b"jobs\x06\x16\x06\x16jobs"}


def test_bindings_match_what_kombu_itself_records(redis_db: RedisDb) -> None:
    with kombu_channel(redis_db.url) as ch:
        Queue("k", Exchange("kx", "topic"), routing_key="a.*.c")(ch).declare()
    with redis_db.client() as c:
        by_kombu = c.smembers("_kombu.binding.kx")
        c.delete("_kombu.binding.kx", "_kombu.binding_permanent.kx")

    RedisBroker(redis_db.url).declare([exchange_model("kx", "topic")],
                                      [queue_model("k", exchange="kx", routingKey="a.*.c")])

    with redis_db.client() as c:
        assert c.smembers("_kombu.binding.kx") == by_kombu


@pytest.mark.parametrize("options", [{}, {"global_keyprefix": "team-a:"},
                                     {"global_keyprefix": "x/", "sep": ":", "priority_steps": [0, 3, 6, 9]}],
                         ids=["defaults", "global_keyprefix", "custom_sep"])
def test_thirty_messages_over_four_priorities_are_counted_as_thirty(
        redis_db: RedisDb, options: dict[str, Any]) -> None:
    broker = RedisBroker(redis_db.url, options)
    broker.declare([], [queue_model("tasks", maxPriority=9), queue_model("other")])
    for priority, n in zip(PRIORITIES, (9, 8, 7, 6), strict=True):
        publish(redis_db.url, Exchange("tasks", "direct"), "tasks", n, priority=priority, options=options)
    publish(redis_db.url, Exchange("other", "direct"), "other", 1, priority=9, options=options)

    report = broker.measure(["tasks", "other", "never-used"])

    assert report.queues["tasks"].ready == 30
    assert report.queues["other"].ready == 1
    assert report.queues["never-used"].ready == 0
    with redis_db.client() as c:
        lengths = [c.llen(key) for key in broker.priority_lists("tasks")]
        prefix = options.get("global_keyprefix", "")
        assert all(k.startswith(prefix.encode()) for k in c.keys("*"))
    assert lengths == [9, 8, 7, 6]  # every priority list is really in use


def test_measure_sends_one_llen_and_one_lindex_per_priority_list_and_nothing_else(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    broker.measure(["warm-up"])  # the connection's AUTH/SELECT/CLIENT SETINFO are not part of a poll
    with redis_db.client() as c:
        c.config_resetstat()
        broker.measure([f"q{i}" for i in range(50)])
        stats = c.info("commandstats")
    by_command = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    assert by_command.pop("llen") == 50 * 4
    assert by_command.pop("lindex") == 50 * 4
    assert set(by_command) <= {"config|resetstat", "info"}  # the checking client's own commands


def test_the_oldest_publish_time_over_every_priority_list_is_the_queues(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    broker.declare([], [queue_model("tasks", maxPriority=9), queue_model("plain")])
    with kombu_channel(redis_db.url) as ch:
        producer = Producer(ch, exchange=Exchange("tasks", "direct"))
        # The high-priority list holds the newest messages, a low-priority one the oldest.
        for priority, stamp in ((0, 1_700_000_300), (0, 1_700_000_400), (6, 1_700_000_100), (6, 1_700_000_200)):
            producer.publish({"p": priority}, routing_key="tasks", priority=priority, timestamp=stamp)
        Producer(ch, exchange=Exchange("plain", "direct")).publish({"n": 1}, routing_key="plain")
    report = broker.measure(["tasks", "plain", "empty"])
    assert report.queues["tasks"].oldest_published == 1_700_000_100
    assert report.queues["plain"].oldest_published is None  # published without a timestamp
    assert report.queues["empty"].oldest_published is None


def test_one_unstamped_priority_list_makes_the_oldest_publish_time_unknown(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    broker.declare([], [queue_model("tasks", maxPriority=9)])
    with kombu_channel(redis_db.url) as ch:
        producer = Producer(ch, exchange=Exchange("tasks", "direct"))
        producer.publish({"n": 1}, routing_key="tasks", priority=0, timestamp=1_700_000_000)
        producer.publish({"n": 2}, routing_key="tasks", priority=9)
    assert broker.measure(["tasks"]).queues["tasks"].oldest_published is None


def test_in_flight_counts_unacked_messages_per_queue(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    broker.declare([exchange_model("events", "topic")],
                   [queue_model("orders", exchange="events", routingKey="orders.#"), queue_model("jobs")])
    publish(redis_db.url, Exchange("events", "topic"), "orders.new", 5)
    publish(redis_db.url, Exchange("jobs", "direct"), "jobs", 4)
    with kombu_channel(redis_db.url) as ch:
        taken = [ch.basic_get("orders", no_ack=False) for _ in range(2)]
        taken.append(ch.basic_get("jobs", no_ack=False))
        assert all(taken)

        report = broker.measure(["orders", "jobs"], count_in_flight=True)
        without = broker.measure(["orders", "jobs"])

    assert (report.queues["orders"].ready, report.queues["orders"].in_flight) == (3, 2)
    assert (report.queues["jobs"].ready, report.queues["jobs"].in_flight) == (3, 1)
    assert report.in_flight() == 3
    assert without.queues["orders"].in_flight is None
    assert report.queues["orders"].consumers is None


def test_in_flight_over_the_attribution_limit_is_reported_as_a_total(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url, unacked_attribution_limit=2)
    broker.declare([], [queue_model("jobs")])
    publish(redis_db.url, Exchange("jobs", "direct"), "jobs", 5)
    with kombu_channel(redis_db.url) as ch:
        for _ in range(3):
            assert ch.basic_get("jobs", no_ack=False)
        report = broker.measure(["jobs"], count_in_flight=True)
    assert report.queues["jobs"].in_flight is None
    assert report.unattributed_in_flight == 3
    assert "attribution limit" in report.note
    assert report.in_flight() == 3


def test_delete_queue_removes_its_lists_and_bindings_and_delete_exchange_its_table(redis_db: RedisDb) -> None:
    opts = {"global_keyprefix": "p:"}
    broker = RedisBroker(redis_db.url, opts)
    broker.declare([exchange_model("events", "topic")],
                   [queue_model("orders", exchange="events", routingKey="orders.#"),
                    queue_model("audit", exchange="events", routingKey="#")])
    publish(redis_db.url, Exchange("events", "topic"), "orders.x", 3, priority=6, options=opts)

    broker.delete_queue("orders")

    assert broker.measure(["orders"]).queues["orders"].ready == 0
    with redis_db.client() as c:
        assert c.smembers("p:_kombu.binding.events") == {b"#\x06\x16^.*?$\x06\x16audit"}
        assert c.exists("p:orders\x06\x166") == 0
    broker.delete_exchange("events")
    with redis_db.client() as c:
        assert c.exists("p:_kombu.binding.events", "p:_kombu.binding_permanent.events") == 0


def test_headers_exchanges_are_refused_on_redis_without_stopping_the_rest(redis_db: RedisDb) -> None:
    results = RedisBroker(redis_db.url).declare(
        [exchange_model("h", "headers")], [queue_model("hq", exchange="h"), queue_model("ok")])
    assert [(r.kind, r.name) for r in results if not r.ok] == [("exchange", "h"), ("binding", "hq")]
    assert any(r.kind == "binding" and r.name == "ok" and r.ok for r in results)


def test_queue_ttl_length_and_dead_letter_are_reported_as_having_no_effect_on_redis(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    results = broker.declare([], [queue_model("jobs", messageTTLSeconds=60, maxLength=10,
                                              deadLetter={"exchange": "dlx"}), queue_model("plain")])
    assert all(r.ok for r in results)  # the queues work: only the settings are ignored
    [ignored] = [r for r in results if r.kind == "policy"]
    assert (ignored.name, ignored.reason) == ("jobs", api.Reason.UNSUPPORTED_BY_BROKER)
    assert ignored.message.startswith("messageTTLSeconds, maxLength, deadLetter have no effect on a Redis broker")
    with redis_db.client() as c:
        c.rpush("jobs", *[f"m{i}" for i in range(12)])
    assert broker.measure(["jobs"]).queues["jobs"].ready == 12  # no length limit is enforced


def test_unreachable_redis_raises_broker_unreachable(redis_db: RedisDb) -> None:
    broker = connect(f"redis://:pw@127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerUnreachable):
        broker.measure(["jobs"])
    with pytest.raises(BrokerUnreachable):
        broker.declare([], [queue_model("jobs")])
    wrong = redis_db.url.replace(redis_db.server.password, "wrong-password")
    with pytest.raises(BrokerUnreachable) as e:
        connect(wrong).measure(["jobs"])
    assert "wrong-password" not in str(e.value)


def test_measure_raises_while_redis_is_stopped_and_recovers_after_restart(redis_db: RedisDb) -> None:
    broker = RedisBroker(redis_db.url)
    broker.declare([], [queue_model("jobs")])
    publish(redis_db.url, Exchange("jobs", "direct"), "jobs", 2)
    assert broker.measure(["jobs"]).queues["jobs"].ready == 2
    redis_db.server.stop()
    try:
        with pytest.raises(BrokerUnreachable):
            broker.measure(["jobs"])
    finally:
        redis_db.server.start()
    assert broker.measure(["jobs"]).queues["jobs"].ready == 0  # no persistence: the data went
