"""Managed RabbitMQ / Redis objects and where workers read the URLs from."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from celery_operator import api
from celery_operator.models import SecretKeyRef
from celery_operator.render import broker
from celery_operator.render.broker import SecretsContext
from tests.unit import crs

SECRETS = SecretsContext(broker_password="b-pass_1", result_backend_password="r-pass")


def by_kind_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_managed_rabbitmq_objects() -> None:
    app = crs.app(broker={"rabbitmq": {"image": "rabbitmq:3.13-management",
                                       "storage": {"size": "1Gi", "storageClassName": "fast"},
                                       "resources": {"limits": {"memory": "1Gi"}}}})
    objs = by_kind_name(broker.managed_objects(app, SECRETS, None))
    assert set(objs) == {("Secret", "proj-broker"), ("StatefulSet", "proj-rabbitmq"),
                         ("Service", "proj-rabbitmq-headless"), ("Service", "proj-rabbitmq")}
    assert secret_data(objs["Secret", "proj-broker"]) == {
        "username": "celery", "password": "b-pass_1",
        "url": "amqp://celery:b-pass_1@proj-rabbitmq.team.svc:5672//",
        "managementUrl": "http://celery:b-pass_1@proj-rabbitmq.team.svc:15672"}
    sts = objs["StatefulSet", "proj-rabbitmq"]
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "proj-rabbitmq-headless"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "fast"}
    [c] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RABBITMQ_DEFAULT_PASS"]["valueFrom"] == {
        "secretKeyRef": {"name": "proj-broker", "key": "password"}}
    assert "rabbitmq_management" in env["RABBITMQ_ENABLED_PLUGINS"]["value"]
    assert c["resources"] == {"limits": {"memory": "1Gi"}}
    assert c["readinessProbe"]["tcpSocket"] == {"port": "amqp"}
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    client = objs["Service", "proj-rabbitmq"]["spec"]
    assert {p["name"]: p["port"] for p in client["ports"]} == {"amqp": 5672, "management": 15672,
                                                                "prometheus": 15692}
    assert objs["Service", "proj-rabbitmq-headless"]["spec"]["clusterIP"] == "None"


def test_managed_redis_broker_and_result_backend() -> None:
    app = crs.app(broker={"redis": {"image": "redis:7"}},
                  resultBackend={"redis": {"image": "redis:7", "storage": {"size": "2Gi"}}})
    objs = by_kind_name(broker.managed_objects(app, SECRETS, None))
    assert set(objs) == {("Secret", "proj-broker"), ("StatefulSet", "proj-redis"), ("Service", "proj-redis"),
                         ("Secret", "proj-result-backend"), ("StatefulSet", "proj-result-backend"),
                         ("Service", "proj-result-backend")}
    assert secret_data(objs["Secret", "proj-broker"]) == {
        "password": "b-pass_1", "url": "redis://:b-pass_1@proj-redis.team.svc:6379/0"}
    assert secret_data(objs["Secret", "proj-result-backend"])["url"] == (
        "redis://:r-pass@proj-result-backend.team.svc:6379/0")
    broker_sts = objs["StatefulSet", "proj-redis"]
    [c] = broker_sts["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "proj-broker",
                                                                     "key": "password"}}} in c["env"]
    assert "volumeClaimTemplates" not in broker_sts["spec"]
    assert objs["StatefulSet", "proj-result-backend"]["spec"]["volumeClaimTemplates"]
    # the two servers select different pods
    selectors = [objs[k]["spec"]["selector"] for k in (("Service", "proj-redis"), ("Service", "proj-result-backend"))]
    assert selectors[0] != selectors[1]


def test_passwords_with_url_special_characters_are_quoted() -> None:
    app = crs.app()
    [secret, *_] = broker.managed_objects(app, SecretsContext(broker_password="p@ss/w:rd"), None)
    data = secret_data(secret)
    assert data["password"] == "p@ss/w:rd"
    assert data["url"] == "amqp://celery:p%40ss%2Fw%3Ard@proj-rabbitmq.team.svc:5672//"


def test_rendering_is_deterministic_for_the_same_passwords() -> None:
    app = crs.seed_app()
    assert broker.managed_objects(app, SECRETS, None) == broker.managed_objects(app, SECRETS, None)


def test_managed_server_without_password_is_an_error() -> None:
    with pytest.raises(ValueError, match="password"):
        broker.managed_objects(crs.app(), SecretsContext(), None)


def test_external_broker_renders_nothing_and_workers_read_its_secret() -> None:
    app = crs.app(broker={"external": {"urlSecretRef": {"name": "ext", "key": "amqp"}}},
                  resultBackend={"external": {"urlSecretRef": {"name": "rb"}}})
    assert broker.managed_objects(app, SecretsContext(), None) == []
    assert broker.broker_url_ref(app) == SecretKeyRef("ext", "amqp")
    assert broker.result_backend_url_ref(app) == SecretKeyRef("rb", "url")


@pytest.mark.parametrize(
    ("spec", "broker_ref", "backend_ref"),
    [
        ({}, SecretKeyRef("proj-broker", "url"), None),
        ({"resultBackend": {"redis": {"image": "redis:7"}}}, SecretKeyRef("proj-broker", "url"),
         SecretKeyRef("proj-result-backend", "url")),
        ({"broker": {"rabbitmqClusterRef": {"name": "rmq"}}},
         SecretKeyRef("rmq-default-user", "connection_string"), None),
    ],
)
def test_url_refs(spec: dict[str, Any], broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None) -> None:
    app = crs.app(**spec)
    assert broker.broker_url_ref(app) == broker_ref
    assert broker.result_backend_url_ref(app) == backend_ref


def test_server_children_carry_labels_and_owner() -> None:
    app = crs.app()
    owner = {"apiVersion": api.API_VERSION, "kind": api.APP, "name": "proj", "uid": "u"}
    for obj in broker.managed_objects(app, SECRETS, owner):
        assert obj["metadata"]["ownerReferences"] == [{**owner, "controller": True, "blockOwnerDeletion": True}]
        assert obj["metadata"]["labels"][api.LABEL_COMPONENT] == api.COMPONENT_BROKER
        assert obj["metadata"]["labels"][api.LABEL_MANAGED_BY] == api.OPERATOR_NAME
