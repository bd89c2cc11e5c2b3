"""Parsing broker URLs the way kombu and redis-py read them, and keeping passwords out of logs."""

from __future__ import annotations

import pytest

from celery_operator.brokers.redis import RedisBroker, topic_pattern
from celery_operator.brokers.urls import (
    InvalidBrokerUrl,
    broker_kind,
    management_for,
    parse_amqp,
    parse_management,
    parse_redis,
    redact,
)
from celery_operator.models import CeleryQueue
from celery_operator.topology import policy_fields, queue_arguments, queue_policy


@pytest.mark.parametrize(("url", "vhost"), [
    ("amqp://u:p@h:5672/", "/"),
    ("amqp://u:p@h:5672", "/"),
    ("amqp://u:p@h:5672//", "/"),
    ("amqp://u:p@h:5672/%2F", "/"),
    ("amqp://u:p@h:5672/prod", "prod"),
    ("amqp://u:p@h:5672/team%2Fa", "team/a"),
])
def test_amqp_vhost_is_read_like_kombu(url: str, vhost: str) -> None:
    assert parse_amqp(url).vhost == vhost


def test_amqp_url_gives_credentials_host_port_and_tls() -> None:
    u = parse_amqp("amqps://celery:s%40cret@rabbit.ns.svc:5999/v")
    assert (u.host, u.port, u.username, u.password, u.tls) == ("rabbit.ns.svc", 5999, "celery", "s@cret", True)
    assert parse_amqp("amqp://h").port == 5672
    assert parse_amqp("amqps://h").port == 5671
    assert (parse_amqp("amqp://h").username, parse_amqp("amqp://h").password) == ("guest", "guest")


def test_management_url_is_derived_from_amqp_host_and_credentials() -> None:
    m = management_for(parse_amqp("amqp://celery:pw@rabbit:5672/prod"))
    assert (m.base, m.username, m.password) == ("http://rabbit:15672", "celery", "pw")
    assert management_for(parse_amqp("amqps://c:p@rabbit/x")).base == "https://rabbit:15671"


def test_explicit_management_url_keeps_path_prefix_and_drops_credentials_from_base() -> None:
    m = parse_management("https://admin:p%2Fw@mq.example.com:8443/rabbitmq/")
    assert (m.base, m.username, m.password) == ("https://mq.example.com:8443/rabbitmq", "admin", "p/w")


@pytest.mark.parametrize(("url", "db"), [
    ("redis://:pw@h:6379/0", 0), ("redis://:pw@h:6379/5", 5), ("redis://h", 0), ("redis://h/?db=7", 7),
])
def test_redis_db_comes_from_the_path(url: str, db: int) -> None:
    assert parse_redis(url).db == db


def test_redis_url_gives_user_password_and_tls() -> None:
    u = parse_redis("rediss://worker:pw@redis.ns:6380/2")
    assert (u.username, u.password, u.host, u.port, u.tls) == ("worker", "pw", "redis.ns", 6380, True)
    assert parse_redis("redis://:only-pw@h").username is None
    assert parse_redis("redis://h").password is None


@pytest.mark.parametrize(("url", "kind"), [
    ("amqp://h", "rabbitmq"), ("amqps://h", "rabbitmq"), ("pyamqp://h", "rabbitmq"),
    ("redis://h", "redis"), ("rediss://h", "redis"),
])
def test_broker_kind_follows_the_scheme(url: str, kind: str) -> None:
    assert broker_kind(url) == kind


@pytest.mark.parametrize("url", ["sqs://key:secret@", "nonsense", "redis://:pw@h/notanumber",
                                 "amqp://u:secret@h:notaport/"])
def test_invalid_urls_are_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(InvalidBrokerUrl) as e:
        parse_redis(url) if url.startswith("redis") else (
            parse_amqp(url) if url.startswith("amqp") else broker_kind(url))
    assert "secret" not in str(e.value)
    assert ":pw@" not in str(e.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://celery:hunter2@rabbit:5672/prod", "amqp://celery:***@rabbit:5672/prod"),
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
    ("amqp://user@rabbit/", "amqp://user@rabbit/"),
    ("amqp://u:p@ss/w@rd@rabbit/v", "amqp://u:***@rabbit/v"),
    ("not a url", "not a url"),
])
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_parsed_urls_do_not_show_the_password_in_repr() -> None:
    assert "hunter2" not in repr(parse_amqp("amqp://u:hunter2@h/"))
    assert "hunter2" not in repr(parse_redis("redis://:hunter2@h/0"))
    assert "hunter2" not in repr(parse_management("http://u:hunter2@h:15672"))


def _queue(**spec: object) -> CeleryQueue:
    base = {"appRef": {"name": "app"}, "durable": True, "autoDelete": False, "queueType": "classic",
            "deletionPolicy": "Retain"}
    return CeleryQueue.of({"metadata": {"name": "q", "namespace": "ns"}, "spec": {**base, **spec}})


def test_queue_spec_splits_into_declare_arguments_and_a_policy_definition() -> None:
    q = _queue(maxPriority=9, messageTTLSeconds=1.5, maxLength=100,
               deadLetter={"exchange": "dlx", "routingKey": "dead"}, queueType="quorum")
    assert queue_arguments(q) == {"x-max-priority": 9, "x-queue-type": "quorum"}
    assert queue_policy(q) == {"message-ttl": 1500, "max-length": 100, "dead-letter-exchange": "dlx",
                               "dead-letter-routing-key": "dead"}
    assert policy_fields(q) == ["messageTTLSeconds", "maxLength", "deadLetter"]
    assert queue_arguments(_queue()) == {}
    assert queue_policy(_queue()) == {}


def test_redis_priority_lists_follow_kombu_steps_separator_and_prefix() -> None:
    b = RedisBroker("redis://h/0", {"global_keyprefix": "pfx:", "sep": ":", "priority_steps": [0, 5]})
    assert b.priority_lists("jobs") == ["pfx:jobs", "pfx:jobs:5"]
    lists = [b.list_for_priority("jobs", p) for p in (0, 4, 5, 9)]
    assert lists == ["pfx:jobs", "pfx:jobs", "pfx:jobs:5", "pfx:jobs:5"]
    d = RedisBroker("redis://h/0")
    assert d.priority_lists("jobs") == ["jobs", "jobs\x06\x163", "jobs\x06\x166", "jobs\x06\x169"]


def test_topic_pattern_matches_like_amqp_wildcards() -> None:
    import re
    p = topic_pattern("orders.*.created")
    assert re.match(p, "orders.eu.created")
    assert not re.match(p, "orders.eu.x.created")
    assert re.match(topic_pattern("orders.#"), "orders.eu.x.created")
