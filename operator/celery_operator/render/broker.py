"""Managed brokers and result backends: StatefulSet, Services and the Secret clients read.

RabbitMQ: StatefulSet `<app>-rabbitmq` (management and prometheus plugins enabled through
`RABBITMQ_ENABLED_PLUGINS`), a headless Service for the StatefulSet and a client Service
`<app>-rabbitmq` (amqp 5672, management 15672), Secret `<app>-broker` with `username`, `password`,
`url`, `managementUrl`. Redis: StatefulSet + Service `<app>-redis` (broker) or
`<app>-result-backend` (result backend), Secret `<app>-broker` / `<app>-result-backend` with
`password` and `url`.

Passwords are inputs: the kube layer generates them once and reuses the Secret's values after
that; nothing here is random.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from celery_operator import api
from celery_operator.models import Body, CeleryApp, ManagedServer, SecretKeyRef
from celery_operator.render import labels as lbl
from celery_operator.render import names

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
PROMETHEUS_PORT = 15692
REDIS_PORT = 6379
RABBITMQ_PLUGINS = "rabbitmq_management,rabbitmq_prometheus"
RABBITMQ_UID = 999  # the `rabbitmq` user of the official image
REDIS_UID = 999  # the `redis` user of the official image
DATA_VOLUME = "data"
DEFAULT_USERNAME = "celery"


@dataclass(frozen=True)
class SecretsContext:
    """Credentials of managed servers (generated once by the kube layer, then read back)."""

    broker_password: str | None = None
    result_backend_password: str | None = None
    broker_username: str = DEFAULT_USERNAME


def broker_url_ref(app: CeleryApp) -> SecretKeyRef:
    """Where workers read the broker URL from."""
    b = app.broker
    if b.external is not None:
        return b.external
    if b.rabbitmq_cluster is not None:
        return SecretKeyRef(names.rabbitmq_cluster_secret(b.rabbitmq_cluster), "connection_string")
    return SecretKeyRef(names.broker_secret(app.meta.name), "url")


def result_backend_url_ref(app: CeleryApp) -> SecretKeyRef | None:
    """Where workers read the result backend URL from; None when the app has none."""
    rb = app.result_backend
    if rb is None:
        return None
    if rb.external is not None:
        return rb.external
    return SecretKeyRef(names.result_backend(app.meta.name), "url")


def _host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc"


def _secret(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any] | None,
            data: dict[str, str]) -> Body:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": lbl.metadata(name, namespace, labels, owner), "data": encoded}


def rabbitmq_secret(app: CeleryApp, username: str, password: str, owner: dict[str, Any] | None) -> Body:
    ns, server = app.meta.namespace, names.broker_server(app.meta.name, "rabbitmq")
    host = _host(server, ns)
    user, pw = quote(username, safe=""), quote(password, safe="")
    name = names.broker_secret(app.meta.name)
    return _secret(name, ns, lbl.labels(app.meta.name, api.COMPONENT_BROKER, instance=name,
                                        name="rabbitmq"), owner, {
        "username": username,
        "password": password,
        "url": f"amqp://{user}:{pw}@{host}:{AMQP_PORT}//",
        "managementUrl": f"http://{user}:{pw}@{host}:{MANAGEMENT_PORT}",
    })


def redis_secret(app: CeleryApp, secret_name: str, server: str, component: str, password: str,
                 owner: dict[str, Any] | None) -> Body:
    host = _host(server, app.meta.namespace)
    return _secret(secret_name, app.meta.namespace,
                   lbl.labels(app.meta.name, component, instance=secret_name, name="redis"), owner, {
                       "password": password,
                       "url": f"redis://:{quote(password, safe='')}@{host}:{REDIS_PORT}/0",
                   })


def _security(uid: int) -> tuple[Body, Body]:
    pod = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _statefulset(app: CeleryApp, name: str, service: str, labels: dict[str, str], container: Body,
                 mount_path: str, server: ManagedServer, uid: int, owner: dict[str, Any] | None) -> Body:
    pod_sc, container_sc = _security(uid)
    container = {**container, "securityContext": container_sc,
                 "volumeMounts": [{"name": DATA_VOLUME, "mountPath": mount_path}]}
    if server.resources:
        container["resources"] = dict(server.resources)
    pod_spec: Body = {"containers": [container], "securityContext": pod_sc,
                      "enableServiceLinks": False, "automountServiceAccountToken": False,
                      "terminationGracePeriodSeconds": 60}
    spec: Body = {
        "replicas": 1,
        "serviceName": service,
        "selector": {"matchLabels": lbl.selector(app.meta.name, labels[api.LABEL_COMPONENT],
                                                 instance=name)},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if server.storage is not None:
        claim: Body = {"accessModes": ["ReadWriteOnce"],
                       "resources": {"requests": {"storage": server.storage.size}}}
        if server.storage.storage_class_name:
            claim["storageClassName"] = server.storage.storage_class_name
        spec["volumeClaimTemplates"] = [{"metadata": {"name": DATA_VOLUME}, "spec": claim}]
    else:
        pod_spec["volumes"] = [{"name": DATA_VOLUME, "emptyDir": {}}]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": lbl.metadata(name, app.meta.namespace, labels, owner), "spec": spec}


def _service(app: CeleryApp, name: str, labels: dict[str, str], selector: dict[str, str],
             ports: list[Body], owner: dict[str, Any] | None, headless: bool = False) -> Body:
    spec: Body = {"selector": dict(selector), "ports": ports}
    if headless:
        spec = {"clusterIP": "None", "publishNotReadyAddresses": True, **spec}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": lbl.metadata(name, app.meta.namespace, labels, owner), "spec": spec}


def _secret_env(name: str, secret: str, key: str) -> Body:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def rabbitmq(app: CeleryApp, server: ManagedServer, owner: dict[str, Any] | None) -> list[Body]:
    """StatefulSet, headless Service and client Service of a managed RabbitMQ broker."""
    name = names.broker_server(app.meta.name, "rabbitmq")
    secret = names.broker_secret(app.meta.name)
    labels = lbl.labels(app.meta.name, api.COMPONENT_BROKER, instance=name, name="rabbitmq")
    container: Body = {
        "name": "rabbitmq",
        "image": server.image,
        "env": [
            _secret_env("RABBITMQ_DEFAULT_USER", secret, "username"),
            _secret_env("RABBITMQ_DEFAULT_PASS", secret, "password"),
            {"name": "RABBITMQ_ENABLED_PLUGINS", "value": RABBITMQ_PLUGINS},
        ],
        "ports": [{"name": "amqp", "containerPort": AMQP_PORT},
                  {"name": "management", "containerPort": MANAGEMENT_PORT},
                  {"name": "prometheus", "containerPort": PROMETHEUS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "amqp"}, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": ["rabbitmq-diagnostics", "-q", "ping"]},
                          "initialDelaySeconds": 60, "periodSeconds": 60, "timeoutSeconds": 30,
                          "failureThreshold": 3},
    }
    headless = names.headless_service(name)
    selector = lbl.selector(app.meta.name, api.COMPONENT_BROKER, instance=name)
    ports = [{"name": "amqp", "port": AMQP_PORT, "targetPort": "amqp"},
             {"name": "management", "port": MANAGEMENT_PORT, "targetPort": "management"},
             {"name": "prometheus", "port": PROMETHEUS_PORT, "targetPort": "prometheus"}]
    return [
        _statefulset(app, name, headless, labels, container, "/var/lib/rabbitmq", server,
                     RABBITMQ_UID, owner),
        _service(app, headless, labels, selector, ports, owner, headless=True),
        _service(app, name, labels, selector, ports, owner),
    ]


def redis(app: CeleryApp, server: ManagedServer, name: str, secret: str, component: str,
          owner: dict[str, Any] | None) -> list[Body]:
    """StatefulSet and Service of a managed Redis (broker or result backend)."""
    labels = lbl.labels(app.meta.name, component, instance=name, name="redis")
    persistent = server.storage is not None
    container: Body = {
        "name": "redis",
        "image": server.image,
        "command": ["redis-server"],
        # $(REDIS_PASSWORD) is expanded by the kubelet from the env below.
        "args": ["--requirepass", "$(REDIS_PASSWORD)", "--dir", "/data",
                 "--appendonly", "yes" if persistent else "no"]
        + ([] if persistent else ["--save", ""]),
        "env": [_secret_env("REDIS_PASSWORD", secret, "password")],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "initialDelaySeconds": 30,
                          "periodSeconds": 30, "failureThreshold": 3},
    }
    selector = lbl.selector(app.meta.name, component, instance=name)
    ports = [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]
    return [
        _statefulset(app, name, name, labels, container, "/data", server, REDIS_UID, owner),
        _service(app, name, labels, selector, ports, owner),
    ]


def managed_objects(app: CeleryApp, secrets: SecretsContext, owner: dict[str, Any] | None) -> list[Body]:
    """Every object of the app's managed broker and result backend (none for external ones).

    Raises ValueError when a managed server's password is missing from `secrets`.
    """
    out: list[Body] = []
    managed = app.broker.managed
    if managed is not None:
        if secrets.broker_password is None:
            raise ValueError(f"app {app.meta.name!r}: managed broker needs a password")
        if managed.kind == "rabbitmq":
            out.append(rabbitmq_secret(app, secrets.broker_username, secrets.broker_password, owner))
            out += rabbitmq(app, managed, owner)
        else:
            server = names.broker_server(app.meta.name, "redis")
            secret = names.broker_secret(app.meta.name)
            out.append(redis_secret(app, secret, server, api.COMPONENT_BROKER,
                                    secrets.broker_password, owner))
            out += redis(app, managed, server, secret, api.COMPONENT_BROKER, owner)
    backend = app.result_backend.managed if app.result_backend is not None else None
    if backend is not None:
        if backend.kind != "redis":
            raise ValueError(f"app {app.meta.name!r}: a managed result backend must be redis")
        if secrets.result_backend_password is None:
            raise ValueError(f"app {app.meta.name!r}: managed result backend needs a password")
        name = names.result_backend(app.meta.name)
        out.append(redis_secret(app, name, name, api.COMPONENT_RESULT_BACKEND,
                                secrets.result_backend_password, owner))
        out += redis(app, backend, name, name, api.COMPONENT_RESULT_BACKEND, owner)
    return out
