"""The generated Celery config (JSON data) of a topology."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from celery_operator import api
from celery_operator.config import celery_config, config_hash, config_json
from celery_operator.topology import Topology
from tests.unit import crs


def test_task_queues_carry_exchange_routing_key_and_arguments() -> None:
    config = celery_config(crs.seed())
    assert config["task_queues"] == [
        {"name": "default", "exchange": "default", "exchange_type": "direct", "routing_key": "default",
         "durable": True, "auto_delete": False, "queue_arguments": {}},
        {"name": "high_queue", "exchange": "task", "exchange_type": "topic", "routing_key": "high_task",
         "durable": True, "auto_delete": False, "queue_arguments": {"x-max-priority": 10}},
        {"name": "low_queue", "exchange": "task", "exchange_type": "topic", "routing_key": "low_task",
         # its TTL is a RabbitMQ policy, never a declare argument
         "durable": True, "auto_delete": False, "queue_arguments": {}},
    ]
    assert config["exchanges"] == [
        {"name": "default", "type": "direct", "durable": True, "auto_delete": False, "arguments": {}},
        {"name": "task", "type": "topic", "durable": True, "auto_delete": False, "arguments": {}},
    ]


def test_defaults_routes_beat_and_timezone() -> None:
    config = celery_config(crs.seed())
    assert (config["task_default_queue"], config["task_default_exchange"],
            config["task_default_exchange_type"], config["task_default_routing_key"]) == (
        "default", "default", "direct", "default")
    assert config["task_routes"] == {"sample_tasks.tasks.add": {"queue": "high_queue"},
                                     "sample_tasks.tasks.slow*": {"queue": "low_queue"}}
    assert config["beat_schedule"] == {
        "add-every-minute": {
            "task": "sample_tasks.tasks.add",
            "schedule": {"cron": {"minute": "*", "hour": "*", "day_of_month": "*",
                                  "month_of_year": "*", "day_of_week": "*"}},
            "args": [1, 2], "kwargs": {}, "options": {"queue": "high_queue", "priority": 5}},
        "slow-every-30s": {
            "task": "sample_tasks.tasks.slow", "schedule": {"every_seconds": 30},
            "args": [], "kwargs": {"seconds": 0.1}, "options": {"expires": 25}},
    }
    assert config["timezone"] == "UTC"
    assert config["broker_connection_retry_on_startup"] is True
    assert config[api.CONFIG_BEAT_ENTRIES_KEY] == {"add-every-minute": {"starting_deadline_seconds": None},
                                                   "slow-every-30s": {"starting_deadline_seconds": None}}


def test_each_entrys_starting_deadline_reaches_beats_scheduler_beside_celerys_schedule() -> None:
    topo = Topology.of(crs.app(), schedules=[crs.schedule("s", [
        {"name": "tick", "task": "t.tick", "everySeconds": 10, "startingDeadlineSeconds": 60}])])
    config = celery_config(topo)
    assert config[api.CONFIG_BEAT_ENTRIES_KEY] == {"tick": {"starting_deadline_seconds": 60}}
    assert "starting_deadline_seconds" not in json.dumps(config["beat_schedule"])


def test_user_config_is_kept_but_cannot_override_operator_keys_or_carry_urls() -> None:
    topo = Topology.of(crs.app(
        imports=["proj.tasks"],
        config={"task_acks_late": True, "task_default_queue": "mine", "broker_url": "amqp://leak",
                "result_backend": "redis://leak", "task_routes": {"other.*": {"queue": "celery"}}}))
    config = celery_config(topo)
    assert config["task_acks_late"] is True
    assert config["task_default_queue"] == "celery"
    assert "broker_url" not in config
    assert "result_backend" not in config
    assert config["imports"] == ["proj.tasks"]
    assert config["task_routes"] == {"other.*": {"queue": "celery"}}


def test_broker_transport_options_merge_over_the_users() -> None:
    topo = Topology.of(crs.app(config={"broker_transport_options": {"a": 1, "b": 1}}))
    config = celery_config(topo, {"b": 2, "c": 3})
    assert config["broker_transport_options"] == {"a": 1, "b": 2, "c": 3}


def test_a_rabbitmq_app_with_a_quorum_queue_publishes_with_confirms_and_a_classic_only_one_does_not() -> None:
    quorum = [crs.queue("work", queueType="quorum"), crs.queue("other")]
    assert celery_config(Topology.of(crs.app(), queues=quorum))["broker_transport_options"] == {
        "confirm_publish": True}
    assert "broker_transport_options" not in celery_config(Topology.of(crs.app(), queues=[crs.queue("other")]))
    # On Redis queueType means nothing and kombu's Redis transport has no confirms.
    redis_app = crs.app(broker={"redis": {"image": "redis:7"}})
    assert "broker_transport_options" not in celery_config(Topology.of(redis_app, queues=quorum))


def test_the_users_confirm_publish_wins_and_other_transport_options_are_kept() -> None:
    quorum = [crs.queue("work", queueType="quorum")]
    off = crs.app(config={"broker_transport_options": {"confirm_publish": False, "a": 1}})
    assert celery_config(Topology.of(off, queues=quorum))["broker_transport_options"] == {
        "confirm_publish": False, "a": 1}
    assert celery_config(Topology.of(crs.app(), queues=quorum), {"b": 2})["broker_transport_options"] == {
        "confirm_publish": True, "b": 2}


def test_config_is_json_serialisable_and_round_trips() -> None:
    config = celery_config(crs.seed())
    assert json.loads(config_json(config)) == config


def test_config_hash_changes_with_the_config() -> None:
    base = celery_config(crs.seed())
    changed = {**base, "timezone": "Europe/Paris"}
    assert config_hash(base) != config_hash(changed)
    assert len(config_hash(base)) == 64


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(config=st.dictionaries(st.text(), json_values, max_size=8), seed=st.integers())
def test_config_hash_is_stable_across_key_orderings(config: dict[str, Any], seed: int) -> None:
    other = _shuffled(config, random.Random(seed))
    assert config_hash(other) == config_hash(config)
    assert config_json(other) == config_json(config)


def test_seed_config_hash_is_the_same_for_objects_listed_in_another_order() -> None:
    topo = crs.seed()
    reordered = Topology.of(topo.app, exchanges=reversed(topo.exchanges), queues=reversed(topo.queues),
                            pools=reversed(topo.pools), schedules=reversed(topo.schedules))
    assert config_hash(celery_config(reordered)) == config_hash(celery_config(topo))


def test_only_chosen_quarantine_queues_reach_the_workers_config() -> None:
    plain = celery_config(Topology.of(crs.app(), queues=[crs.queue("a")]))
    assert api.CONFIG_QUARANTINE_QUEUES_KEY not in plain  # the workers' default: no change for existing apps
    chosen = celery_config(Topology.of(crs.app(), queues=[crs.queue("a", quarantineQueue="poisoned"),
                                                          crs.queue("b")]))
    assert chosen[api.CONFIG_QUARANTINE_QUEUES_KEY] == {"a": "poisoned"}
