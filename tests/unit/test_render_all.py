"""Every object of one app, in order, valid against the Kubernetes API schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from celery_operator import api
from celery_operator.models import Meta
from celery_operator.render import SecretsContext, render_all
from celery_operator.topology import Topology
from tests.unit import crs

SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")
K8S_VERSION = "1.33.0"


def kinds_names(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objs]


def test_seed_renders_servers_config_workers_and_beat_in_order() -> None:
    objs = render_all(crs.seed(), SECRETS)
    assert kinds_names(objs) == [
        ("Secret", "proj-broker"), ("StatefulSet", "proj-rabbitmq"), ("Service", "proj-rabbitmq-headless"),
        ("Service", "proj-rabbitmq"),
        ("Secret", "proj-result-backend"), ("StatefulSet", "proj-result-backend"),
        ("Service", "proj-result-backend"),
        ("ConfigMap", "proj-celery-config"),
        ("Deployment", "proj-default"), ("Deployment", "proj-high"), ("Deployment", "proj-low"),
        ("ServiceAccount", "proj-beat"), ("Role", "proj-beat"), ("RoleBinding", "proj-beat"),
        ("ConfigMap", "proj-beat-state"), ("Lease", "proj-beat"), ("Deployment", "proj-beat"),
    ]


def test_pod_monitor_comes_last_owned_by_the_app_only_when_asked_for() -> None:
    objs = render_all(crs.seed(), SECRETS, pod_monitor=True)
    assert objs[:-1] == render_all(crs.seed(), SECRETS)
    assert kinds_names(objs[-1:]) == [(api.POD_MONITOR, "proj-celery")]
    assert objs[-1]["metadata"]["ownerReferences"][0]["kind"] == api.APP


def test_render_all_is_deterministic_whatever_the_input_order() -> None:
    topo = crs.seed()
    reordered = Topology.of(topo.app, reversed(topo.exchanges), reversed(topo.queues),
                            reversed(topo.pools), reversed(topo.schedules))
    assert render_all(reordered, SECRETS) == render_all(topo, SECRETS)


def test_every_object_has_labels_namespace_and_owner() -> None:
    for obj in render_all(crs.seed(), SECRETS):
        meta = obj["metadata"]
        assert meta["namespace"] == crs.NS
        assert meta["labels"][api.LABEL_APP] == "proj"
        assert {api.LABEL_NAME, api.LABEL_INSTANCE, api.LABEL_COMPONENT, api.LABEL_PART_OF,
                api.LABEL_MANAGED_BY} <= meta["labels"].keys()
        [owner] = meta["ownerReferences"]
        assert owner["apiVersion"] == api.API_VERSION
        assert owner["controller"] is True


def test_workers_are_owned_by_their_pool_everything_else_by_the_app() -> None:
    owners = {(o["kind"], o["metadata"]["name"]): o["metadata"]["ownerReferences"][0]["kind"]
              for o in render_all(crs.seed(), SECRETS)}
    assert owners["Deployment", "proj-high"] == api.POOL
    assert owners["Deployment", "proj-beat"] == api.APP
    assert owners["ConfigMap", "proj-celery-config"] == api.APP


def test_owner_of_none_renders_without_owner_references() -> None:
    def no_owner(kind: str, meta: Meta) -> None:
        return None

    assert all("ownerReferences" not in o["metadata"] for o in render_all(crs.seed(), SECRETS, no_owner))


def test_autoscaled_pool_starts_at_min_replicas_and_others_at_replicas() -> None:
    replicas = {o["metadata"]["name"]: o["spec"].get("replicas") for o in render_all(crs.seed(), SECRETS)
                if o["kind"] == "Deployment"}
    assert replicas == {"proj-default": 1, "proj-high": 1, "proj-low": 1, "proj-beat": 1}


def test_pool_without_known_queue_and_app_without_schedules_render_no_deployment() -> None:
    topo = Topology.of(crs.app(broker={"external": {"urlSecretRef": {"name": "ext"}}}),
                       pools=[crs.pool("p", ["ghost"])])
    assert kinds_names(render_all(topo, SecretsContext())) == [("ConfigMap", "proj-celery-config")]


def test_workers_and_beat_share_the_config_maps_hash() -> None:
    objs = render_all(crs.seed(), SECRETS)
    [cm] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "proj-celery-config"]
    digest = cm["metadata"]["annotations"][api.ANNOTATION_CONFIG_HASH]
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        assert dep["spec"]["template"]["metadata"]["annotations"][api.ANNOTATION_CONFIG_HASH] == digest


def test_celery_pods_share_their_process_namespace_so_celery_is_never_pid_1() -> None:
    """PID 1 drops a SIGTERM it has no handler for yet: Celery stopped while it imports must still stop."""
    deployments = [o for o in render_all(crs.seed(), SECRETS) if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"proj-default", "proj-high", "proj-low", "proj-beat"}
    for dep in deployments:
        assert dep["spec"]["template"]["spec"]["shareProcessNamespace"] is True


@pytest.mark.parametrize("obj", render_all(crs.seed(), SECRETS),
                         ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_rendered_objects_are_valid_kubernetes_objects(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
