"""Random custom resources through the real API server's validation and the operator's pure pipeline.

Whatever the API server admits, the operator reads, analyses, renders and configures without an
exception; every admitted object either names a missing app (the operator says AppNotFound) or is
part of its app's topology (whose every object gets a condition each cycle); every Celery schedule
it writes is one Celery accepts. The e2e variant (tests/e2e/test_fuzz_operator.py) runs the operator.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.schedules import crontab
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from celery_operator import api
from celery_operator.config import celery_config, config_json
from celery_operator.models import CeleryApp, CeleryBeatSchedule, CeleryExchange, CeleryQueue, CeleryWorkerPool
from celery_operator.render import SecretsContext, render_all
from celery_operator.topology import Topology
from tests.fixtures.apiserver import ApiServer
from tests.strategies import APP_NAMES, custom_resources

pytestmark = pytest.mark.integration

MODELS: dict[str, Any] = {api.APP: CeleryApp, api.EXCHANGE: CeleryExchange, api.QUEUE: CeleryQueue,
                          api.POOL: CeleryWorkerPool, api.SCHEDULE: CeleryBeatSchedule}
SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid app (so topologies form), then random objects of every kind."""
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": draw(st.sampled_from(APP_NAMES))},
           "spec": {"image": "registry.invalid/app:1", "app": "sample_tasks.app",
                    "broker": draw(st.sampled_from([{"redis": {}}, {"rabbitmq": {}},
                                                    {"external": {"urlSecretRef": {"name": "b"}}}]))}}
    return [app, *draw(st.lists(custom_resources(), min_size=3, max_size=10))]


def admitted(apiserver: ApiServer, namespace: str, objs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(kind, name) -> the admitted object, as the API server would store it (defaults applied)."""
    out = {}
    for obj in objs:
        verdict = apiserver.create(namespace, obj)
        note(f"{obj['kind']} {obj['metadata']['name']}: {'admitted' if verdict.admitted else verdict.message}")
        if verdict.admitted:
            assert verdict.object is not None
            out[obj["kind"], obj["metadata"]["name"]] = verdict.object
    return out


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batches())
def test_whatever_the_api_server_admits_the_operator_reads_renders_and_configures(
        apiserver: ApiServer, namespace: str, batch: list[dict[str, Any]]) -> None:
    bodies = admitted(apiserver, namespace, batch)
    for kind in sorted({k for k, _ in bodies}):
        event(f"admitted a {kind}")
    typed = {key: MODELS[key[0]].of(body) for key, body in bodies.items()}
    apps = [m for (kind, _), m in typed.items() if kind == api.APP]
    assert apps, "the batch's first app is valid"
    in_a_topology: set[tuple[str, str]] = set()
    for app in apps:
        of = {kind: [m for (k, _), m in typed.items() if k == kind] for kind in MODELS}
        topo = Topology.of(app, of[api.EXCHANGE], of[api.QUEUE], of[api.POOL], of[api.SCHEDULE])
        topo.problems()
        config = celery_config(topo)
        config_json(config)
        for entry in config["beat_schedule"].values():
            if "cron" in entry["schedule"]:
                crontab(**entry["schedule"]["cron"])
        for obj in render_all(topo, SECRETS):
            verdict = apiserver.create(namespace, obj)
            assert verdict.admitted, f"the operator would fail to apply {obj['kind']}: {verdict.message}"
        in_a_topology |= {(api.APP, app.meta.name)} | {
            (kind, o.meta.name) for kind, objs in ((api.EXCHANGE, topo.exchanges), (api.QUEUE, topo.queues),
                                                   (api.POOL, topo.pools), (api.SCHEDULE, topo.schedules))
            for o in objs}
    app_names = {a.meta.name for a in apps}
    for (kind, name), model in typed.items():
        # an object is reported by its app's cycle, or as AppNotFound
        assert (kind, name) in in_a_topology or model.app_name not in app_names, (kind, name)

