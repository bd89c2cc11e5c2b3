"""Settings that only the whole topology shows to be wrong become conditions and Warning Events."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import OperatorFactory, apply, condition, get, list_events, secret, wait_for
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _reason(cluster: Cluster, ns: str, kind: str, name: str, reason: str) -> dict[str, Any] | None:
    c = condition(get(cluster.control_plane, ns, kind, name))
    return c if c is not None and c["reason"] == reason else None


def _warning_events(cluster: Cluster, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in list_events(cluster.control_plane, ns)
            if e["involvedObject"]["name"] == name and e["type"] == "Warning"]


def test_redis_visibility_timeout_and_prefetch_warnings_show_on_the_objects_that_fix_them(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory,
        backend_db: RedisDb) -> None:
    cp = cluster.control_plane
    secret(cp, namespace, "broker", url=backend_db.url)  # an external Redis broker: known from its URL only
    operator_factory("--namespace", namespace, "--no-leader-election")
    app = {"image": images.sample_tasks, "app": "sample_tasks.app", "maxCountdownSeconds": 600,
           "broker": {"external": {"urlSecretRef": {"name": "broker"}}},
           "config": {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 300}}}
    apply(cp, namespace, [
        _doc("CeleryApp", "proj", app),
        _doc("CeleryQueue", "jobs", {"appRef": {"name": "proj"}, "maxLength": 100}),
        _doc("CeleryWorkerPool", "long", {"appRef": {"name": "proj"}, "queues": ["jobs"], "concurrency": 1,
                                          "timeLimitSeconds": 300, "terminationGracePeriodSeconds": 300}),
        _doc("CeleryWorkerPool", "greedy", {"appRef": {"name": "proj"}, "queues": ["jobs"], "concurrency": 1,
                                            "prefetchMultiplier": 4,
                                            "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}),
    ])

    app_cond = wait_for(lambda: _reason(cluster, namespace, "celeryapp", "proj", "VisibilityTimeoutTooShort"),
                        120, "the app's countdown warning")
    assert app_cond["status"] == "True"
    assert "maxCountdownSeconds 600 reaches the Redis broker's visibility_timeout 300 s" in app_cond["message"]
    queue = wait_for(lambda: _reason(cluster, namespace, "celeryqueue", "jobs", "UnsupportedByBroker"), 60,
                     "the queue's ignored setting")
    assert queue["message"].startswith("maxLength have no effect on a Redis broker")
    # Pool warnings show once the workers are ready (until then, their progress does).
    long = wait_for(lambda: _reason(cluster, namespace, "celeryworkerpool", "long", "VisibilityTimeoutTooShort"),
                    240, "the long pool's warning")
    assert long["status"] == "True"
    assert "timeLimitSeconds 300 reaches the Redis broker's visibility_timeout 300 s" in long["message"]
    assert long["message"].endswith("(1/1 workers ready)")
    greedy = wait_for(lambda: _reason(cluster, namespace, "celeryworkerpool", "greedy", "PrefetchHidesBacklog"),
                      240, "the greedy pool's warning")
    assert "set prefetchMultiplier: 1" in greedy["message"]
    wait_for(lambda: "PrefetchHidesBacklog" in _warning_events(cluster, namespace, "greedy"), 60, "a Warning Event")


def test_queue_settings_without_the_management_api_say_what_to_set(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost) -> None:
    cp = cluster.control_plane
    parts = urllib.parse.urlsplit(broker_vhost.management_url)
    unreachable = parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:1").geturl()
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=unreachable)
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, [
        _doc("CeleryApp", "proj", {"image": images.sample_tasks, "app": "sample_tasks.app", "broker": {"external": {
            "urlSecretRef": {"name": "broker"}, "managementUrlSecretRef": {"name": "broker"}}}}),
        _doc("CeleryQueue", "jobs", {"appRef": {"name": "proj"}, "messageTTLSeconds": 60}),
    ])
    cond = wait_for(lambda: _reason(cluster, namespace, "celeryqueue", "jobs", "PolicyNotApplied"), 120,
                    "the queue's policy failure")
    assert cond["status"] == "False"
    assert "messageTTLSeconds not applied" in cond["message"]
    assert "managementUrlSecretRef" in cond["message"]
    queue = get(cp, namespace, "celeryqueue", "jobs")
    assert queue is not None and queue["status"]["declared"] is True  # the queue itself is on the broker
