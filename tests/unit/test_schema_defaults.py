"""Offline defaulting (`apply_defaults`) behaves like the API server's structural defaulting."""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.schema import apply_defaults


def pool(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.POOL, "metadata": {"name": "p"}, "spec": spec}


def test_minimal_pool_gets_every_defaulted_field() -> None:
    out = apply_defaults(api.POOL, pool({"appRef": {"name": "proj"}, "queues": ["q"]}))
    assert out["spec"] == {"appRef": {"name": "proj"}, "queues": ["q"], "replicas": 1, "concurrency": 2,
                           "pool": "prefork", "prefetchMultiplier": 1, "terminationGracePeriodSeconds": 60,
                           "maxWorkerDeaths": api.DEFAULT_MAX_WORKER_DEATHS,
                           "stuckAfterSeconds": api.DEFAULT_STUCK_AFTER_SECONDS}


def test_autoscaling_defaults_fill_around_the_fields_given() -> None:
    out = apply_defaults(api.POOL, pool({"appRef": {"name": "a"}, "queues": ["q"],
                                         "autoscaling": {"maxReplicas": 4, "minReplicas": 0,
                                                         "targetWaitSeconds": 30}}))
    # No target is defaulted: a pool scales on the targets it names (on depth at the default target when
    # it names none, as before targetWaitSeconds existed).
    assert out["spec"]["autoscaling"] == {
        "maxReplicas": 4, "minReplicas": 0, "targetWaitSeconds": 30, "activationMessages": 0,
        "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 300,
        "scaleDownDrainSeconds": 60, "countInFlight": True}


def test_set_values_are_kept_even_when_falsy() -> None:
    out = apply_defaults(api.POOL, pool({"appRef": {"name": "a"}, "queues": ["q"], "replicas": 0,
                                         "autoscaling": {"maxReplicas": 1, "targetMessagesPerReplica": 5,
                                                         "countInFlight": False}}))
    assert out["spec"]["replicas"] == 0
    assert out["spec"]["autoscaling"]["countInFlight"] is False


def test_defaulted_object_gets_its_own_nested_defaults() -> None:
    """rabbitmq.storage defaults to {}, which then gets size 1Gi, as on the server."""
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": "a"},
           "spec": {"image": "i", "app": "m", "broker": {"rabbitmq": {}}}}
    spec = apply_defaults(api.APP, app)["spec"]
    assert spec["broker"] == {"rabbitmq": {"image": "rabbitmq:3.13-management", "storage": {"size": "1Gi"}}}
    assert (spec["defaultQueue"], spec["defaultExchange"], spec["defaultRoutingKey"]) == ("celery",) * 3
    assert "resultBackend" not in spec


def test_secret_key_refs_default_their_key() -> None:
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": "a"},
           "spec": {"image": "i", "app": "m", "broker": {"external": {
               "urlSecretRef": {"name": "s"}, "managementUrlSecretRef": {"name": "s"}}}}}
    ext = apply_defaults(api.APP, app)["spec"]["broker"]["external"]
    assert ext == {"urlSecretRef": {"name": "s", "key": "url"},
                   "managementUrlSecretRef": {"name": "s", "key": "managementUrl"}}


def test_redis_storage_stays_absent_unless_asked_for() -> None:
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": "a"},
           "spec": {"image": "i", "app": "m", "broker": {"redis": {}}, "resultBackend": {"redis": {"storage": {}}}}}
    spec = apply_defaults(api.APP, app)["spec"]
    assert spec["broker"]["redis"] == {"image": "redis:7.2"}
    assert spec["resultBackend"]["redis"] == {"image": "redis:7.2", "storage": {"size": "1Gi"}}


def test_list_items_are_defaulted() -> None:
    q = {"apiVersion": api.API_VERSION, "kind": api.QUEUE, "metadata": {"name": "q"},
         "spec": {"appRef": {"name": "a"}}}
    assert apply_defaults(api.QUEUE, q)["spec"] == {"appRef": {"name": "a"}, "durable": True, "autoDelete": False,
                                                    "queueType": "classic", "deletionPolicy": "Retain"}
    b = {"apiVersion": api.API_VERSION, "kind": api.SCHEDULE, "metadata": {"name": "b"},
         "spec": {"appRef": {"name": "a"}, "entries": [{"name": "e", "task": "t", "everySeconds": 5}]}}
    assert apply_defaults(api.SCHEDULE, b)["spec"]["timezone"] == "UTC"


def test_null_takes_the_default_and_null_without_default_is_dropped() -> None:
    out = apply_defaults(api.POOL, pool({"appRef": {"name": "a"}, "queues": ["q"], "concurrency": None,
                                         "image": None}))
    assert out["spec"]["concurrency"] == 2
    assert "image" not in out["spec"]


def test_free_form_fields_are_left_alone() -> None:
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": "a"},
           "spec": {"image": "i", "app": "m", "broker": {"redis": {}},
                    "config": {"broker_transport_options": {"visibility_timeout": 3600}, "x": None}}}
    assert apply_defaults(api.APP, app)["spec"]["config"] == app["spec"]["config"]


def test_input_is_not_modified() -> None:
    body = pool({"appRef": {"name": "a"}, "queues": ["q"]})
    apply_defaults(api.POOL, body)
    assert body["spec"] == {"appRef": {"name": "a"}, "queues": ["q"]}
