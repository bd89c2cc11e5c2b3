"""Every app and pool name the schema admits yields children the API server and its controllers
accept: names at the limits, rendered by the operator's code, judged by the real API server (dry-run),
and created for real so the StatefulSet and ReplicaSet controllers name and label their pods."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from celery_operator import api
from celery_operator.render import SecretsContext, render_all
from celery_operator.schema import apply_defaults
from celery_operator.topology import Topology
from localenv.controlplane import ControlPlane
from tests.fixtures.apiserver import ApiServer
from tests.fixtures.operator import wait_for
from tests.strategies import topologies
from tests.unit import crs

pytestmark = pytest.mark.integration

SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")
# An image no node has and none can pull: pods are created and named, nothing runs.
ABSENT_IMAGE = "localhost/celery-operator/absent:never"


def no_owner(kind: str, meta: Any) -> None:
    return None  # the owners are not created here (the garbage collector would delete orphans' children)


def crs_of(topology: Topology) -> list[dict[str, Any]]:
    """The custom resources behind a topology, as a user would write them."""
    app = topology.app
    out = [{"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": app.meta.name},
            "spec": {"image": app.image, "app": app.app, "broker": {"redis": {}}}}]
    out += [{"apiVersion": api.API_VERSION, "kind": api.POOL, "metadata": {"name": p.meta.name},
             "spec": {"appRef": {"name": app.meta.name}, "queues": list(p.queues)}} for p in topology.pools]
    return [apply_defaults(o["kind"], o) for o in out]


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(topologies())
def test_the_api_server_admits_the_crs_and_every_child_of_names_at_the_limits(
        apiserver: ApiServer, namespace: str, topology: Topology) -> None:
    for obj in [*crs_of(topology), *render_all(topology, SECRETS, no_owner)]:
        verdict = apiserver.create(namespace, obj)
        assert verdict.admitted, f"{obj['kind']} {obj['metadata']['name']}: {verdict.message}"


def longest(letter: str) -> str:
    return letter + "-x" * 30 + "z"  # 63 characters, the schema's limit


def test_controllers_create_pods_for_children_of_63_character_app_and_pool_names(
        apiserver: ApiServer, control_plane: ControlPlane, namespace: str) -> None:
    app_name, pool_name = longest("a"), longest("p")
    server = {"image": ABSENT_IMAGE}
    topology = Topology.of(
        crs.app(app_name, image=ABSENT_IMAGE, broker={"rabbitmq": server}, resultBackend={"redis": server}),
        pools=[crs.pool(pool_name, ["celery"], app_name=app_name)],
        schedules=[crs.schedule("s", [{"name": "e", "task": "t", "everySeconds": 5}], app_name=app_name)])
    objs = render_all(topology, SECRETS, no_owner)
    for obj in objs:
        verdict = apiserver.create(namespace, obj, dry_run=False)
        assert verdict.admitted, f"{obj['kind']} {obj['metadata']['name']}: {verdict.message}"
    workloads = [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]
    assert {o["kind"] for o in workloads} == {"StatefulSet", "Deployment"}
    for w in workloads:
        selector = ",".join(f"{k}={v}" for k, v in w["spec"]["selector"]["matchLabels"].items())

        def pods(selector: str = selector) -> list[dict[str, Any]]:
            out = control_plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
            return list(json.loads(out)["items"])

        [pod] = wait_for(pods, 60, f"a pod of {w['kind']} {w['metadata']['name']}")
        assert len(pod["metadata"]["name"]) <= 63
        if w["kind"] == "StatefulSet":
            assert pod["metadata"]["name"] == f"{w['metadata']['name']}-0"
