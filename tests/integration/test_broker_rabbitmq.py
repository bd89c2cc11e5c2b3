"""RabbitMQBroker against a real RabbitMQ 3.10 (one per session, a fresh vhost per test)."""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import amqp
import pytest

from celery_operator import api
from celery_operator.brokers import BrokerUnreachable, DepthReport, QueueDepth, connect
from celery_operator.brokers.rabbitmq import NAME_FILTER_MAX_CHARS, PAGE_SIZE, POLICY_PRIORITY, RabbitMQBroker
from localenv.brokers import RabbitMQ, ServerError, free_port
from tests.fixtures.brokers import Vhost, exchange_model, queue_model
from tests.fixtures.operator import wait_for

pytestmark = pytest.mark.integration


def _api(vhost: Vhost, path: str) -> Any:
    return vhost.server.api("GET", path.replace("{vhost}", urllib.parse.quote(vhost.name, safe="")))


def _channel(vhost: Vhost) -> tuple[amqp.Connection, amqp.Channel]:
    conn = amqp.Connection(host=f"127.0.0.1:{vhost.server.amqp_port}", userid=vhost.server.user,
                           password=vhost.server.password, virtual_host=vhost.name,
                           connect_timeout=5, confirm_publish=True)
    conn.connect()
    # Each publish returns once RabbitMQ confirmed it, so counts read after it are exact. (py-amqp waits for the
    # confirm only on a connection opened with confirm_publish: `confirm_select()` alone turns RabbitMQ's
    # confirms on and returns, and a count could be read before the queue had every message.)
    return conn, conn.channel()


def _publish(ch: amqp.Channel, exchange: str, routing_key: str, n: int) -> None:
    for i in range(n):
        ch.basic_publish(amqp.Message(f"m{i}", delivery_mode=2), exchange, routing_key)


class CountingProxy:
    """A real HTTP proxy in front of the management API that counts the requests it forwards."""

    def __init__(self, target_port: int) -> None:
        self.requests: list[str] = []
        self.answers: list[Any] = []  # each answer's decoded JSON
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.requests.append(self.path)
                req = urllib.request.Request(f"http://127.0.0.1:{target_port}{self.path}",
                                             headers={"Authorization": self.headers["Authorization"]})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    body = resp.read()
                proxy.answers.append(json.loads(body) if body else None)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(rabbitmq: RabbitMQ) -> Iterator[CountingProxy]:
    p = CountingProxy(rabbitmq.management_port)
    yield p
    p.close()


def test_declare_creates_exchanges_queues_and_bindings_with_their_arguments(rabbitmq_vhost: Vhost) -> None:
    exchanges = [exchange_model("events", "topic"),
                 exchange_model("broadcast", "fanout", durable=False, autoDelete=True),
                 exchange_model("dlx", "direct")]
    queues = [
        queue_model("orders", exchange="events", routingKey="orders.#", maxPriority=9,
                    messageTTLSeconds=60, maxLength=1000,
                    deadLetter={"exchange": "dlx", "routingKey": "dead"}),
        queue_model("fanned", exchange="broadcast", durable=False, autoDelete=True),
        queue_model("plain"),
        queue_model("safe", queueType="quorum"),
    ]
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)

    results = broker.declare(exchanges, queues)

    assert [(r.kind, r.name) for r in results if not r.ok] == []
    assert {(r.kind, r.name) for r in results} >= {
        ("exchange", "events"), ("exchange", "plain"), ("queue", "orders"), ("binding", "plain")}
    ex = {x["name"]: x for x in _api(rabbitmq_vhost, "/api/exchanges/{vhost}")}
    assert (ex["events"]["type"], ex["events"]["durable"], ex["events"]["auto_delete"]) == ("topic", True, False)
    assert (ex["broadcast"]["type"], ex["broadcast"]["durable"], ex["broadcast"]["auto_delete"]) == (
        "fanout", False, True)
    assert ex["plain"]["type"] == "direct"  # Celery's implicit exchange, named like the queue
    q = {x["name"]: x for x in _api(rabbitmq_vhost, "/api/queues/{vhost}")}
    assert q["orders"]["arguments"] == {"x-max-priority": 9}  # the rest is its policy, which can change
    assert _api(rabbitmq_vhost, "/api/policies/{vhost}/celery-operator.orders")["definition"] == {
        "message-ttl": 60000, "max-length": 1000, "dead-letter-exchange": "dlx", "dead-letter-routing-key": "dead"}
    assert q["orders"]["durable"] is True
    assert (q["fanned"]["durable"], q["fanned"]["auto_delete"]) == (False, True)
    assert q["safe"]["type"] == "quorum"
    bindings = {(b["source"], b["destination"], b["routing_key"])
                for b in _api(rabbitmq_vhost, "/api/bindings/{vhost}") if b["source"]}
    assert bindings == {("events", "orders", "orders.#"), ("broadcast", "fanned", "fanned"),
                        ("plain", "plain", "plain"), ("safe", "safe", "safe")}
    listed = rabbitmq_vhost.server.rabbitmqctl("list_queues", "-p", rabbitmq_vhost.name, "name",
                                               "arguments", "--no-table-headers", "--quiet")
    orders_line = next(line for line in listed.splitlines() if line.startswith("orders\t"))
    assert '"x-max-priority",9' in orders_line.replace(" ", "")


def test_published_message_reaches_queue_through_declared_topic_binding(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([exchange_model("events", "topic")],
                   [queue_model("orders", exchange="events", routingKey="orders.#")])
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "events", "orders.eu.created", 2)
        _publish(ch, "events", "invoices.eu", 1)
    finally:
        conn.close()
    # Confirmed publishes are enqueued; under load the queue may count them a moment later.
    wait_for(lambda: broker.measure_passive(["orders"]).queues["orders"].ready == 2, 10, "2 orders counted")


def test_conflicting_redeclare_is_reported_and_the_rest_still_declare(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    assert all(r.ok for r in broker.declare([], [queue_model("jobs", maxPriority=5)]))

    results = broker.declare(
        [exchange_model("work", "direct")],
        [queue_model("jobs", maxPriority=9), queue_model("after", exchange="work")])

    by_key = {(r.kind, r.name): r for r in results}
    conflict = by_key[("queue", "jobs")]
    assert conflict.conflict
    assert not conflict.ok
    assert "PRECONDITION_FAILED" in conflict.message
    assert "x-max-priority" in conflict.message
    assert by_key[("queue", "after")].ok
    assert by_key[("binding", "after")].ok
    assert by_key[("exchange", "work")].ok
    assert [r for r in results if not r.ok] == [conflict]
    queues = {q["name"]: q for q in _api(rabbitmq_vhost, "/api/queues/{vhost}")}
    assert queues["jobs"]["arguments"] == {"x-max-priority": 5}  # the broker kept the original
    assert "after" in queues


def test_binding_to_a_missing_exchange_fails_only_that_binding(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    results = broker.declare([], [queue_model("lost", exchange="nowhere"), queue_model("fine")])
    failed = [r for r in results if not r.ok]
    assert [(r.kind, r.name, r.conflict) for r in failed] == [("binding", "lost", False)]
    assert "NOT_FOUND" in failed[0].message


def test_delete_removes_queue_and_exchange_and_tolerates_absent_ones(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([exchange_model("events", "topic")], [queue_model("orders", exchange="events")])

    broker.delete_queue("orders")
    broker.delete_exchange("events")
    broker.delete_queue("orders")
    broker.delete_exchange("events")

    assert "orders" not in {q["name"] for q in _api(rabbitmq_vhost, "/api/queues/{vhost}")}
    assert "events" not in {x["name"] for x in _api(rabbitmq_vhost, "/api/exchanges/{vhost}")}


def test_measure_reports_true_ready_and_unacked_counts_in_one_request(
        rabbitmq_vhost: Vhost, proxy: CountingProxy) -> None:
    mgmt = f"http://{rabbitmq_vhost.server.user}:{rabbitmq_vhost.server.password}@127.0.0.1:{proxy.port}"
    broker = RabbitMQBroker(rabbitmq_vhost.url, mgmt)
    broker.declare([], [queue_model(f"q{i}") for i in range(5)])
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "q0", 10)
        _publish(ch, "", "q1", 4)
        consumer_ch = conn.channel()
        consumer_ch.basic_qos(0, 3, False)
        consumer_ch.basic_consume("q0", callback=lambda m: None)  # never acks
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            report = broker.measure(["q0", "q1", "q2", "absent"])
            if report.queues["q0"].in_flight == 3:
                break
            time.sleep(0.1)
        proxy.requests.clear()

        report = broker.measure(["q0", "q1", "q2", "absent"])
    finally:
        conn.close()

    assert len(proxy.requests) == 1
    assert proxy.requests[0].startswith(f"/api/queues/{rabbitmq_vhost.name}?")
    assert report.source == "management"
    assert (report.queues["q0"].ready, report.queues["q0"].in_flight) == (7, 3)
    assert (report.queues["q1"].ready, report.queues["q1"].in_flight) == (4, 0)
    assert report.queues["q2"].ready == 0
    assert report.missing == ("absent",)
    assert set(report.queues) == {"q0", "q1", "q2"}
    assert report.ready() == 11
    assert report.in_flight() == 3


def _rows(answer: Any) -> list[Any]:
    return answer["items"] if isinstance(answer, dict) else answer


@pytest.mark.parametrize("stats", ["totals", "full"])
def test_measure_in_a_vhost_shared_with_many_queues_receives_only_its_own_queues_rows(
        rabbitmq_vhost: Vhost, proxy: CountingProxy, stats: str) -> None:
    mgmt = f"http://{rabbitmq_vhost.server.user}:{rabbitmq_vhost.server.password}@127.0.0.1:{proxy.port}"
    conn, ch = _channel(rabbitmq_vhost)
    try:
        others = [f"o{i}" for i in range(PAGE_SIZE + 100)]
        for name in [*others, "app.q", "appxq", "app.q.dlq"]:  # "." must not match any character
            ch.queue_declare(name, durable=True, auto_delete=False)
        _publish(ch, "", "app.q", 5)
        _publish(ch, "", "appxq", 2)
        with RabbitMQBroker(rabbitmq_vhost.url, mgmt, stats=stats) as broker:  # type: ignore[arg-type]
            # The statistics database, which the "full" listing reads, lags by up to its interval: waited for, so
            # that every queue has its consumers. A "full" measure lists twice: the statistics, the live totals.
            def caught_up() -> bool:
                queues = broker.measure([*others, "app.q"]).queues
                return queues["app.q"].ready == 5 and (
                    stats == "totals" or all(q.consumers is not None for q in queues.values()))

            wait_for(caught_up, 30, "the depth listed (and every queue's statistics, for the statistics listing)")
            proxy.requests.clear()
            proxy.answers.clear()
            report = broker.measure(["app.q", "absent"])
            listed = [r["name"] for a in proxy.answers for r in _rows(a)]
            proxy.requests.clear()
            proxy.answers.clear()
            everything = broker.measure(others)  # more than a page: every page is fetched
            paged = len(proxy.requests), sum(len(_rows(a)) for a in proxy.answers)
            proxy.requests.clear()
            proxy.answers.clear()
            long_names = [f"{'x' * 60}-{i}" for i in range(NAME_FILTER_MAX_CHARS // 60)]
            unfiltered = broker.measure([*long_names, "app.q"])  # too long a regex: the vhost is listed
    finally:
        conn.close()
    listings = 1 if stats == "totals" else 2
    assert len(proxy.requests) == listings and all(len(_rows(a)) == len(others) + 3 for a in proxy.answers)
    assert unfiltered.queues["app.q"].ready == 5 and set(unfiltered.missing) == set(long_names)
    assert listed == ["app.q"] * listings
    assert report.queues["app.q"].ready == 5 and report.missing == ("absent",)
    assert set(everything.queues) == set(others) and everything.missing == ()
    assert paged == (listings * math.ceil(len(others) / PAGE_SIZE), listings * len(others))


def test_measure_with_full_stats_reports_consumers(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url, stats="full")
    broker.declare([], [queue_model("watched")])
    conn, ch = _channel(rabbitmq_vhost)
    try:
        ch.basic_consume("watched", callback=lambda m: None)
        conn.channel().basic_consume("watched", callback=lambda m: None)
        deadline = time.monotonic() + 30  # the statistics database lags by its collect interval
        consumers = None
        while time.monotonic() < deadline and consumers != 2:
            consumers = broker.measure(["watched"]).queues["watched"].consumers
            time.sleep(0.5)
    finally:
        conn.close()
    assert consumers == 2


def _measured_while_the_listing_lags(vhost: Vhost, prefix: str, messages: int, *,
                                    seen_empty: bool) -> tuple[str, DepthReport]:
    """A new queue given `messages` and measured at once with the statistics listing, on an attempt whose
    listing still lagged after the measure: the queue listed by name only, or (`seen_empty`: measured once
    the listing had it empty) still at 0. An attempt the statistics caught up with proves nothing: another
    queue is tried (RabbitMQ collects them every 5 s by default)."""
    broker = RabbitMQBroker(vhost.url, vhost.management_url, stats="full")

    def listed_ready(name: str) -> int | None:
        row = next(r for r in broker.list_queues([name]) if r["name"] == name)
        return int(row["messages_ready"]) if "messages_ready" in row else None

    for attempt in range(5):
        name = f"{prefix}-{attempt}"
        broker.declare([], [queue_model(name)])
        if seen_empty:
            wait_for(lambda name=name: listed_ready(name) == 0, 30, "the statistics listing the empty queue")
        conn, ch = _channel(vhost)
        try:
            _publish(ch, "", name, messages)
            measured = broker.measure([name])
        finally:
            conn.close()
        if listed_ready(name) == (0 if seen_empty else None):
            return name, measured
    pytest.fail("RabbitMQ's statistics caught up with each queue before it could be measured without them")


def test_a_queue_the_statistics_have_not_reached_yet_is_counted_from_the_live_totals_not_as_empty(
        rabbitmq_vhost: Vhost) -> None:
    name, first = _measured_while_the_listing_lags(rabbitmq_vhost, "fresh", 5, seen_empty=False)
    assert first.queues[name].ready == 5
    assert first.statistics


def test_a_statistics_poll_counts_a_backlog_the_statistics_have_not_caught_up_with_from_the_live_totals(
        rabbitmq_vhost: Vhost) -> None:
    # The listing had the queue empty; the 7 messages are in the live totals, not yet in the listing.
    name, measured = _measured_while_the_listing_lags(rabbitmq_vhost, "lagging", 7, seen_empty=True)
    assert measured.statistics
    assert (measured.queues[name].ready, measured.queues[name].in_flight) == (7, 0)
    assert measured.queues[name].consumers == 0  # still the listing's


def test_the_statistics_listing_gives_the_head_messages_publish_time_and_the_delivery_rate(
        rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url, stats="full")
    totals = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url, stats="totals")
    broker.declare([], [queue_model("stamped"), queue_model("unstamped"), queue_model("quorum", queueType="quorum")])
    now = int(time.time())
    conn, ch = _channel(rabbitmq_vhost)
    try:
        for i, age in enumerate((300, 200, 100)):
            ch.basic_publish(amqp.Message(f"m{i}", timestamp=now - age), "", "stamped")
            ch.basic_publish(amqp.Message(f"m{i}", timestamp=now - age), "", "quorum")
        _publish(ch, "", "unstamped", 300)

        def stats() -> dict[str, QueueDepth] | None:
            for _ in range(5):  # a consumer keeps taking messages: a delivery rate to measure
                ch.basic_get("unstamped", no_ack=True)
            q = broker.measure(["stamped", "unstamped", "quorum"]).queues
            return q if q["stamped"].oldest_published is not None and q["unstamped"].drain_rate else None

        queues = wait_for(stats, 30, "the statistics database caught up")
    finally:
        conn.close()
    assert queues["stamped"].oldest_published == now - 300  # the head: the oldest
    assert queues["unstamped"].oldest_published is None
    assert queues["unstamped"].drain_rate > 0
    assert queues["quorum"].oldest_published is None  # RabbitMQ keeps no head timestamp for quorum queues
    # The live totals (every other poll) carry none of it.
    live = totals.measure(["stamped"]).queues["stamped"]
    assert (live.ready, live.oldest_published, live.drain_rate) == (3, None, None)
    assert 0 < queues["unstamped"].ready < 300


def test_measure_falls_back_to_passive_declares_when_management_is_unreachable(
        rabbitmq_vhost: Vhost) -> None:
    wrong = f"http://{rabbitmq_vhost.server.user}:{rabbitmq_vhost.server.password}@127.0.0.1:{free_port()}"
    broker = RabbitMQBroker(rabbitmq_vhost.url, wrong)
    broker.declare([], [queue_model("jobs"), queue_model("idle")])
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "jobs", 6)
        ch.basic_consume("idle", callback=lambda m: None)
        report = broker.measure(["jobs", "idle", "absent"])
    finally:
        conn.close()
    assert report.source == "passive"
    assert report.queues["jobs"] == QueueDepth("jobs", ready=6, in_flight=None, consumers=0)
    assert report.queues["idle"].consumers == 1
    assert report.missing == ("absent",)
    assert "management API unavailable" in report.note
    assert report.in_flight() is None


def test_unreachable_broker_raises_broker_unreachable_instead_of_zero_depth(rabbitmq: RabbitMQ) -> None:
    closed = free_port()
    broker = connect(f"amqp://u:p@127.0.0.1:{closed}/", management_url=f"http://u:p@127.0.0.1:{closed}")
    with pytest.raises(BrokerUnreachable):
        broker.measure(["jobs"])
    with pytest.raises(BrokerUnreachable):
        broker.declare([], [queue_model("jobs")])
    bad_password = rabbitmq.url("/").replace(rabbitmq.password, "wrong")
    with pytest.raises(BrokerUnreachable) as e:
        RabbitMQBroker(bad_password, f"http://127.0.0.1:{closed}").measure(["jobs"])
    assert "wrong" not in str(e.value)
    assert rabbitmq.password not in str(e.value)


def test_measure_raises_while_broker_is_stopped_and_recovers_after_restart(own_rabbitmq_vhost: Vhost) -> None:
    rabbitmq_vhost = own_rabbitmq_vhost  # it stops its broker: not the one other tests share
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([], [queue_model("durable-jobs")])
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "durable-jobs", 3)
    finally:
        conn.close()
    ports = (rabbitmq_vhost.server.amqp_port, rabbitmq_vhost.server.management_port)

    rabbitmq_vhost.server.stop()
    try:
        with pytest.raises(BrokerUnreachable):
            broker.measure(["durable-jobs"])
    finally:
        rabbitmq_vhost.server.start()

    assert (rabbitmq_vhost.server.amqp_port, rabbitmq_vhost.server.management_port) == ports
    assert broker.measure(["durable-jobs"]).queues["durable-jobs"].ready == 3


def test_queue_on_the_default_exchange_needs_no_binding(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    results = broker.declare([], [queue_model("by-name", exchange="")])
    assert all(r.ok for r in results)
    assert [r.exchange for r in results if r.kind == "binding"] == [""]
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "by-name", 2)
    finally:
        conn.close()
    wait_for(lambda: broker.measure_passive(["by-name"]).queues["by-name"].ready == 2, 10, "2 counted")


# -- changeable queue settings: an operator-owned policy per queue -----------------------------------

def _queue_info(vhost: Vhost, name: str) -> dict[str, Any]:
    return dict(_api(vhost, "/api/queues/{vhost}/" + urllib.parse.quote(name, safe="")))


def _policy(vhost: Vhost, queue: str) -> dict[str, Any] | None:
    try:
        return dict(_api(vhost, "/api/policies/{vhost}/" + urllib.parse.quote(f"celery-operator.{queue}", safe="")))
    except ServerError as e:
        if "HTTP 404" in str(e):
            return None
        raise


def _effective(vhost: Vhost, queue: str, definition: dict[str, Any]) -> bool:
    return _queue_info(vhost, queue).get("effective_policy_definition") == definition


def test_ttl_and_max_length_edits_apply_to_a_live_queue_without_losing_its_messages(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    assert all(r.ok for r in broker.declare([], [queue_model("jobs", messageTTLSeconds=600, maxLength=100)]))
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "jobs", 5)

        # The edit a redeclare could never make (PRECONDITION_FAILED): longer TTL, shorter max length.
        results = broker.declare([], [queue_model("jobs", messageTTLSeconds=1200, maxLength=8)])

        assert [(r.kind, r.ok, r.conflict) for r in results if r.kind != "exchange"] == [
            ("queue", True, False), ("binding", True, False), ("policy", True, False)]
        wait_for(lambda: _effective(rabbitmq_vhost, "jobs", {"message-ttl": 1200000, "max-length": 8}), 30,
                 "the new TTL and max length in effect on the live queue")
        assert broker.measure_passive(["jobs"]).queues["jobs"].ready == 5  # nothing lost
        assert _queue_info(rabbitmq_vhost, "jobs")["arguments"] == {}
        # The new max length is enforced on that same queue: the oldest messages are dropped past 8.
        _publish(ch, "", "jobs", 6)
    finally:
        conn.close()
    assert broker.measure_passive(["jobs"]).queues["jobs"].ready == 8
    policy = _policy(rabbitmq_vhost, "jobs")
    assert policy is not None
    assert (policy["pattern"], policy["apply-to"], policy["priority"]) == ("^jobs$", "queues", POLICY_PRIORITY)


def test_unset_settings_leave_the_policy_and_a_queue_without_settings_has_none(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([], [queue_model("jobs", messageTTLSeconds=60, maxLength=10)])

    assert all(r.ok for r in broker.declare([], [queue_model("jobs", messageTTLSeconds=60)]))
    wait_for(lambda: _effective(rabbitmq_vhost, "jobs", {"message-ttl": 60000}), 30, "max-length gone")
    policy = _policy(rabbitmq_vhost, "jobs")
    assert policy is not None and policy["definition"] == {"message-ttl": 60000}

    results = broker.declare([], [queue_model("jobs")])
    assert [r.kind for r in results if r.kind != "exchange"] == ["queue", "binding"]  # no policy to report
    assert _policy(rabbitmq_vhost, "jobs") is None
    wait_for(lambda: _queue_info(rabbitmq_vhost, "jobs").get("policy") in (None, ""), 30, "no policy applied")


def test_dead_letter_policy_sends_expired_messages_to_the_dead_letter_exchange(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    results = broker.declare(
        [exchange_model("dlx", "direct")],
        [queue_model("jobs", messageTTLSeconds=0.2, deadLetter={"exchange": "dlx", "routingKey": "dead"}),
         queue_model("graveyard", exchange="dlx", routingKey="dead")])
    assert all(r.ok for r in results)
    wait_for(lambda: _queue_info(rabbitmq_vhost, "jobs").get("policy") == "celery-operator.jobs", 30,
             "the policy applied")
    conn, ch = _channel(rabbitmq_vhost)
    try:
        _publish(ch, "", "jobs", 3)
    finally:
        conn.close()
    wait_for(lambda: broker.measure_passive(["graveyard"]).queues["graveyard"].ready == 3, 30,
             "expired messages dead-lettered")
    assert broker.measure_passive(["jobs"]).queues["jobs"].ready == 0


def test_policy_pattern_matches_only_its_own_queue(rabbitmq_vhost: Vhost) -> None:
    """A '.' in a queue name is escaped: the policy of `a.b` does not catch `aXb`."""
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([], [queue_model("a.b", maxLength=1), queue_model("aXb"), queue_model("a.bc")])
    wait_for(lambda: _queue_info(rabbitmq_vhost, "a.b").get("policy") == "celery-operator.a.b", 30,
             "the policy applied")
    conn, ch = _channel(rabbitmq_vhost)
    try:
        for q in ("a.b", "aXb", "a.bc"):
            _publish(ch, "", q, 3)
    finally:
        conn.close()
    depths = broker.measure_passive(["a.b", "aXb", "a.bc"]).queues
    assert {q: d.ready for q, d in depths.items()} == {"a.b": 1, "aXb": 3, "a.bc": 3}


def test_settings_without_the_management_api_are_reported_and_the_queue_still_declares(
        rabbitmq_vhost: Vhost) -> None:
    wrong = f"http://{rabbitmq_vhost.server.user}:{rabbitmq_vhost.server.password}@127.0.0.1:{free_port()}"
    broker = RabbitMQBroker(rabbitmq_vhost.url, wrong)

    results = broker.declare([], [queue_model("jobs", messageTTLSeconds=60, maxLength=10), queue_model("plain")])

    by_key = {(r.kind, r.name): r for r in results}
    assert by_key[("queue", "jobs")].ok and by_key[("queue", "plain")].ok
    assert ("policy", "plain") not in by_key
    failed = by_key[("policy", "jobs")]
    assert (failed.ok, failed.reason) == (False, api.Reason.POLICY_NOT_APPLIED)
    assert "messageTTLSeconds, maxLength not applied" in failed.message
    assert "managementUrlSecretRef" in failed.message
    assert rabbitmq_vhost.server.password not in failed.message


def test_deleting_a_queue_deletes_its_policy(rabbitmq_vhost: Vhost) -> None:
    broker = RabbitMQBroker(rabbitmq_vhost.url, rabbitmq_vhost.management_url)
    broker.declare([], [queue_model("jobs", maxLength=10)])
    assert _policy(rabbitmq_vhost, "jobs") is not None

    broker.delete_queue("jobs")

    assert _policy(rabbitmq_vhost, "jobs") is None
    assert "jobs" not in {q["name"] for q in _api(rabbitmq_vhost, "/api/queues/{vhost}")}
    broker.delete_queue("jobs")  # absent queue, absent policy: not an error
