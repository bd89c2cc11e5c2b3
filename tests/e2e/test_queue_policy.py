"""Editing a live queue's TTL and max length through its CeleryQueue: the broker applies it, messages stay."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from tests.fixtures.brokers import Vhost
from tests.fixtures.operator import OperatorFactory, apply, secret, wait_for, wait_ready
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _queue(vhost: Vhost, name: str) -> dict[str, Any]:
    return dict(vhost.server.api("GET", f"/api/queues/{urllib.parse.quote(vhost.name, safe='')}/{name}"))


def _publish(vhost: Vhost, queue: str, n: int) -> None:
    path = f"/api/exchanges/{urllib.parse.quote(vhost.name, safe='')}/amq.default/publish"
    for i in range(n):
        out = vhost.server.api("POST", path, {"properties": {"delivery_mode": 2}, "routing_key": queue,
                                              "payload": f"m{i}", "payload_encoding": "string"})
        assert out["routed"] is True


def test_ttl_and_max_length_edits_reach_the_live_queue_and_keep_its_messages(
        cluster: Cluster, namespace: str, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost) -> None:
    cp = cluster.control_plane
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    operator_factory("--namespace", namespace, "--no-leader-election")
    queue = {"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "jobs"},
             "spec": {"appRef": {"name": "proj"}, "messageTTLSeconds": 3600, "maxLength": 100}}
    apply(cp, namespace, [
        {"apiVersion": api.API_VERSION, "kind": "CeleryApp", "metadata": {"name": "proj"},
         "spec": {"image": images.sample_tasks, "app": "sample_tasks.app", "broker": {"external": {
             "urlSecretRef": {"name": "broker"}, "managementUrlSecretRef": {"name": "broker"}}}}},
        queue])
    wait_ready(cp, namespace, "celeryqueue", "jobs", 90)
    wait_for(lambda: _queue(broker_vhost, "jobs").get("effective_policy_definition")
             == {"message-ttl": 3600000, "max-length": 100}, 60, "the first policy in effect")
    _publish(broker_vhost, "jobs", 5)

    cp.kubectl("patch", "celeryqueue", "jobs", "-n", namespace, "--type", "merge",
               "-p", json.dumps({"spec": {"messageTTLSeconds": 7200, "maxLength": 8}}))

    wait_for(lambda: _queue(broker_vhost, "jobs").get("effective_policy_definition")
             == {"message-ttl": 7200000, "max-length": 8}, 90, "the edit in effect on the live queue")
    wait_ready(cp, namespace, "celeryqueue", "jobs", 30)
    info = _queue(broker_vhost, "jobs")
    assert info["arguments"] == {}
    wait_for(lambda: _queue(broker_vhost, "jobs").get("messages") == 5, 30, "the 5 messages still there")
    _publish(broker_vhost, "jobs", 6)
    wait_for(lambda: _queue(broker_vhost, "jobs").get("messages") == 8, 30, "max length 8 enforced")
