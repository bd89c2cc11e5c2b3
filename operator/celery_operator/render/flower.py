"""Flower for an app (spec.flower): a Deployment and a Service `<app>-flower`, an Ingress when asked for.

Flower runs `celery -A celery_operator_app flower` with the same ConfigMap and broker/backend Secrets as the
workers, so it sees the same broker, queues and result backend. Every option is given as Flower's own
`FLOWER_<OPTION>` environment variable (Flower stops on a `FLOWER_` variable that names no option of
its own, so only those are set); the secret ones (basic auth, OAuth client id and secret, the
RabbitMQ management URL behind `broker_api`) come from Secrets through `valueFrom`, never literal.

Authentication is required: basic auth (`FLOWER_BASIC_AUTH`) or OAuth (`FLOWER_AUTH_PROVIDER`,
`FLOWER_AUTH`, `FLOWER_OAUTH2_*`). `problem` says why Flower must not run (no authentication and no
`allowUnauthenticated`, or a Secret or key of its authentication missing); the operator then renders no
Flower at all (and deletes a running one), so a missing Secret never leaves Flower open.

One replica: Flower keeps what it learnt from events in memory, so two would show two different views.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_operator import api
from celery_operator.models import Body, CeleryApp, Flower, SecretKeyRef
from celery_operator.render import labels as lbl
from celery_operator.render import names, pod
from celery_operator.topology import Topology

CONTAINER = "flower"
# Flower's OAuth login handlers, by provider (flower/views/auth.py).
AUTH_PROVIDERS = {
    "google": "flower.views.auth.GoogleAuth2LoginHandler",
    "github": "flower.views.auth.GithubLoginHandler",
    "gitlab": "flower.views.auth.GitLabLoginHandler",
}
# The RabbitMQ management URL (from its Secret), which FLOWER_BROKER_API extends with `/api/`.
ENV_MANAGEMENT_URL = "CELERY_OPERATOR_BROKER_MANAGEMENT_URL"

Secrets = Mapping[str, "Mapping[str, str] | None"]  # Secret name -> its data (None: no such Secret)


def problem(flower: Flower, secrets: Secrets) -> tuple[str, str] | None:
    """(reason, message) when Flower must not run; None when it may (or is not enabled)."""
    if not flower.enabled:
        return None
    if not flower.authenticated:
        if flower.allow_unauthenticated:
            return None
        return (api.FlowerReason.AUTH_REQUIRED,
                "Flower is not run without authentication: set spec.flower.auth.basicAuthSecretRef (a Secret "
                "key holding user:password) or spec.flower.auth.oauth, or set spec.flower.allowUnauthenticated: "
                "true if something in front of Flower authenticates")
    for ref in flower.secret_refs():
        data = secrets.get(ref.name)
        if data is None:
            return (api.FlowerReason.AUTH_SECRET_NOT_FOUND,
                    f"Flower is not run: its authentication Secret {ref.name} does not exist; create it with the "
                    f"key {ref.key!r} (e.g. kubectl create secret generic {ref.name} "
                    f"--from-literal={ref.key}=admin:<password>)")
        if not data.get(ref.key):
            return (api.FlowerReason.AUTH_SECRET_NOT_FOUND,
                    f"Flower is not run: Secret {ref.name} has no key {ref.key!r} (it has: "
                    f"{', '.join(sorted(data)) or 'none'}); add the key or set the ref's key to one it has")
    return None


def management_url_ref(app: CeleryApp) -> SecretKeyRef | None:
    """Where the RabbitMQ management API URL is (Flower's broker tab shows queues through it)."""
    b = app.broker
    if b.managed is not None and b.managed.kind == "rabbitmq":
        return SecretKeyRef(names.broker_secret(app.meta.name), "managementUrl")
    return b.management_url


def path(flower: Flower) -> str:
    """The URL path Flower serves under: `/` or `/<prefix>/`."""
    return f"/{flower.url_prefix}/" if flower.url_prefix else "/"


def url(app: CeleryApp) -> str:
    """Flower's in-cluster URL (its Service)."""
    return (f"http://{names.flower(app.meta.name)}.{app.meta.namespace}.svc:{api.FLOWER_PORT}"
            f"{path(app.flower)}")


def flower_env(app: CeleryApp) -> list[Body]:
    f = app.flower
    env: list[Body] = [{"name": "FLOWER_PORT", "value": str(api.FLOWER_PORT)},
                       # Dead pods' workers leave the list after 10 minutes (pods are replaced, not revived).
                       {"name": "FLOWER_PURGE_OFFLINE_WORKERS", "value": "600"}]
    if f.url_prefix:
        env.append({"name": "FLOWER_URL_PREFIX", "value": f.url_prefix})
    mgmt = management_url_ref(app)
    if mgmt is not None:
        env += [pod.secret_env(ENV_MANAGEMENT_URL, mgmt),
                {"name": "FLOWER_BROKER_API", "value": f"$({ENV_MANAGEMENT_URL})/api/"}]
    if f.basic_auth is not None:
        env.append(pod.secret_env("FLOWER_BASIC_AUTH", f.basic_auth))
    if f.oauth is not None:
        o = f.oauth
        env += [{"name": "FLOWER_AUTH_PROVIDER", "value": AUTH_PROVIDERS[o.provider]},
                {"name": "FLOWER_AUTH", "value": o.allowed_emails},
                pod.secret_env("FLOWER_OAUTH2_KEY", o.client_id),
                pod.secret_env("FLOWER_OAUTH2_SECRET", o.client_secret),
                {"name": "FLOWER_OAUTH2_REDIRECT_URI", "value": o.redirect_uri}]
    return env


def _labels(app_name: str, name: str) -> dict[str, str]:
    return lbl.labels(app_name, api.COMPONENT_FLOWER, instance=name, name="flower")


def deployment(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None,
               config_hash: str, owner: dict[str, Any] | None) -> Body:
    app = topology.app
    f = app.flower
    app_name, ns = app.meta.name, app.meta.namespace
    name = names.flower(app_name)
    own = _labels(app_name, name)
    template = pod.merge_templates(app.pod_template)
    env = pod.celery_env(topology, broker_ref, backend_ref, operator_env=flower_env(app))
    if not f.load_app:  # the bootstrap makes a bare app: the image need not hold the app's code
        env = [e for e in env if e["name"] != api.ENV_APP]
    container = pod.celery_container(topology, CONTAINER, f.image, ["celery", "-A", api.BOOTSTRAP_MODULE, "flower"],
                                     env, template, f.resources)
    container["ports"] = [{"name": api.FLOWER_PORT_NAME, "containerPort": api.FLOWER_PORT, "protocol": "TCP"}]
    # /healthcheck answers without authentication (Flower's own, under the URL prefix).
    probe = {"httpGet": {"path": f"{path(f)}healthcheck", "port": api.FLOWER_PORT_NAME}, "timeoutSeconds": 5}
    container["startupProbe"] = {**probe, "periodSeconds": 2, "failureThreshold": 60}
    container["readinessProbe"] = {**probe, "periodSeconds": 10, "failureThreshold": 3}
    container["livenessProbe"] = {**probe, "periodSeconds": 30, "failureThreshold": 3}
    spec = pod.pod_spec(topology, container, template, 30)
    return pod.recreate_deployment(
        lbl.metadata(name, ns, own, owner), lbl.selector(app_name, api.COMPONENT_FLOWER),
        pod.template_metadata(own, template, {api.ANNOTATION_CONFIG_HASH: config_hash}), spec)


def service(app: CeleryApp, owner: dict[str, Any] | None) -> Body:
    name = names.flower(app.meta.name)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": lbl.metadata(name, app.meta.namespace, _labels(app.meta.name, name), owner),
            "spec": {"type": "ClusterIP", "selector": lbl.selector(app.meta.name, api.COMPONENT_FLOWER),
                     "ports": [{"name": api.FLOWER_PORT_NAME, "port": api.FLOWER_PORT,
                                "targetPort": api.FLOWER_PORT_NAME, "protocol": "TCP"}]}}


def ingress(app: CeleryApp, owner: dict[str, Any] | None) -> Body | None:
    ing = app.flower.ingress
    if ing is None:
        return None
    name = names.flower(app.meta.name)
    spec: Body = {"rules": [{"host": ing.host, "http": {"paths": [{
        "path": path(app.flower), "pathType": "Prefix",
        "backend": {"service": {"name": name, "port": {"name": api.FLOWER_PORT_NAME}}}}]}}]}
    if ing.class_name:
        spec = {"ingressClassName": ing.class_name, **spec}
    if ing.tls_secret_name:
        spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret_name}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": lbl.metadata(name, app.meta.namespace, _labels(app.meta.name, name), owner), "spec": spec}


def objects(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None, config_hash: str,
            owner: dict[str, Any] | None) -> list[Body]:
    """Flower's Deployment, Service and Ingress (when asked for)."""
    app = topology.app
    out = [deployment(topology, broker_ref, backend_ref, config_hash, owner), service(app, owner)]
    ing = ingress(app, owner)
    if ing is not None:
        out.append(ing)
    return out
