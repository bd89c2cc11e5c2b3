"""Flower for an app: what runs (Deployment, Service, Ingress), how it authenticates, and when it must not run."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator import api, decide
from celery_operator.config import celery_config
from celery_operator.endpoints import Endpoint, referenced_secrets
from celery_operator.models import SecretKeyRef
from celery_operator.render import flower, names, render_all
from celery_operator.render.broker import SecretsContext
from celery_operator.topology import Topology
from tests.unit import crs

SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")
BASIC = {"enabled": True, "auth": {"basicAuthSecretRef": {"name": "proj-flower-auth", "key": "auth"}}}


def topo(flower_spec: dict[str, Any] | None = BASIC, name: str = crs.APP, **spec: Any) -> Topology:
    seed = crs.seed()
    app_spec = {"defaultQueue": "default", "defaultExchange": "default", "defaultRoutingKey": "default",
                "resultBackend": {"redis": {"image": "redis:7"}}, **spec}
    if flower_spec is not None:
        app_spec["flower"] = flower_spec
    return Topology.of(crs.app(name, **app_spec), seed.exchanges, seed.queues, seed.pools, seed.schedules)


def objects(t: Topology) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render_all(t, SECRETS)}


def container(t: Topology) -> dict[str, Any]:
    [c] = objects(t)[("Deployment", "proj-flower")]["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_flower_is_not_rendered_unless_enabled() -> None:
    assert not [k for k in objects(topo(None)) if "flower" in k[1]]
    assert not [k for k in objects(topo({"enabled": False})) if "flower" in k[1]]


def test_enabled_flower_is_a_deployment_and_service_owned_by_the_app_with_standard_labels() -> None:
    objs = objects(topo())
    dep, svc = objs[("Deployment", "proj-flower")], objs[("Service", "proj-flower")]
    for o in (dep, svc):
        assert o["metadata"]["ownerReferences"][0]["kind"] == api.APP
        labels = o["metadata"]["labels"]
        assert labels[api.LABEL_NAME] == "flower" and labels[api.LABEL_COMPONENT] == api.COMPONENT_FLOWER
        assert labels[api.LABEL_PART_OF] == "proj" and labels[api.LABEL_MANAGED_BY] == api.OPERATOR_NAME
    assert dep["spec"]["replicas"] == 1
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "http", "port": api.FLOWER_PORT, "targetPort": "http", "protocol": "TCP"}]
    assert ("Ingress", "proj-flower") not in objs


def test_flower_runs_the_bootstrap_with_the_workers_config_and_broker_secrets_never_literal() -> None:
    c = container(topo())
    assert c["command"] == ["celery", "-A", api.BOOTSTRAP_MODULE, "flower"]
    assert c["image"] == api.DEFAULT_FLOWER_IMAGE
    env = env_of(c)
    assert env[api.ENV_BROKER_URL] == {"secretKeyRef": {"name": "proj-broker", "key": "url"}}
    assert env[api.ENV_RESULT_BACKEND] == {"secretKeyRef": {"name": "proj-result-backend", "key": "url"}}
    assert api.ENV_APP not in env  # a bare app: the Flower image does not hold the app's code
    assert {"name": "celery-config", "mountPath": api.CONFIG_MOUNT_PATH, "readOnly": True} in c["volumeMounts"]
    assert all("value" not in e or "://" not in e["value"] for e in c["env"] if e["name"] != "FLOWER_BROKER_API")


def test_flower_loads_the_apps_code_when_its_image_has_it() -> None:
    c = container(topo({**BASIC, "image": "registry.local/proj:1", "loadApp": True}))
    assert c["image"] == "registry.local/proj:1"
    assert env_of(c)[api.ENV_APP] == "sample_tasks.app"


def test_basic_auth_comes_from_its_secret_key() -> None:
    assert env_of(container(topo()))["FLOWER_BASIC_AUTH"] == {
        "secretKeyRef": {"name": "proj-flower-auth", "key": "auth"}}


def test_oauth_settings_come_from_secrets_and_name_flowers_login_handler() -> None:
    oauth = {"provider": "github", "allowedEmails": r".*@example\.com", "redirectUri": "https://f.example.com/login",
             "clientIdSecretRef": {"name": "gh", "key": "id"}, "clientSecretSecretRef": {"name": "gh", "key": "secret"}}
    env = env_of(container(topo({"enabled": True, "auth": {"oauth": oauth}})))
    assert env["FLOWER_AUTH_PROVIDER"] == "flower.views.auth.GithubLoginHandler"
    assert env["FLOWER_AUTH"] == r".*@example\.com"
    assert env["FLOWER_OAUTH2_KEY"] == {"secretKeyRef": {"name": "gh", "key": "id"}}
    assert env["FLOWER_OAUTH2_SECRET"] == {"secretKeyRef": {"name": "gh", "key": "secret"}}
    assert "FLOWER_BASIC_AUTH" not in env


def test_rabbitmq_queues_reach_flower_through_the_management_api_url_from_the_broker_secret() -> None:
    env = [e for e in container(topo())["env"]]
    names_ = [e["name"] for e in env]
    mgmt = env[names_.index(flower.ENV_MANAGEMENT_URL)]
    assert mgmt["valueFrom"] == {"secretKeyRef": {"name": "proj-broker", "key": "managementUrl"}}
    # Kubernetes expands $(VAR) only from variables defined before it.
    assert names_.index(flower.ENV_MANAGEMENT_URL) < names_.index("FLOWER_BROKER_API")
    assert env[names_.index("FLOWER_BROKER_API")]["value"] == f"$({flower.ENV_MANAGEMENT_URL})/api/"


def test_a_redis_broker_needs_no_broker_api() -> None:
    env = env_of(container(topo(broker={"redis": {"image": "redis:7"}})))
    assert "FLOWER_BROKER_API" not in env


def test_flower_pods_are_restricted_and_probed_on_the_unauthenticated_healthcheck() -> None:
    dep = objects(topo())[("Deployment", "proj-flower")]
    spec = dep["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthcheck", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": api.FLOWER_PORT, "protocol": "TCP"}]


def test_url_prefix_moves_flower_its_probes_and_its_url_under_the_path() -> None:
    t = topo({**BASIC, "urlPrefix": "/tools/flower/"})
    c = container(t)
    assert env_of(c)["FLOWER_URL_PREFIX"] == "tools/flower"
    assert c["readinessProbe"]["httpGet"]["path"] == "/tools/flower/healthcheck"
    assert flower.url(t.app) == f"http://proj-flower.{crs.NS}.svc:5555/tools/flower/"


def test_resources_are_set_on_flowers_container() -> None:
    res = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert container(topo({**BASIC, "resources": res}))["resources"] == res


def test_ingress_routes_the_host_and_prefix_to_flowers_service_with_tls() -> None:
    t = topo({**BASIC, "urlPrefix": "flower",
              "ingress": {"className": "nginx", "host": "tools.example.com", "tlsSecretName": "tools-tls"}})
    ing = objects(t)[("Ingress", "proj-flower")]
    assert ing["spec"]["ingressClassName"] == "nginx"
    [rule] = ing["spec"]["rules"]
    assert rule["host"] == "tools.example.com"
    assert rule["http"]["paths"] == [{"path": "/flower/", "pathType": "Prefix", "backend": {
        "service": {"name": "proj-flower", "port": {"name": "http"}}}}]
    assert ing["spec"]["tls"] == [{"hosts": ["tools.example.com"], "secretName": "tools-tls"}]


@pytest.mark.parametrize("app_name", ["a", "a" * 63, "x" * 57 + "-b"])
def test_flower_names_are_valid_for_every_app_name_the_schema_admits(app_name: str) -> None:
    name = names.flower(app_name)
    assert len(name) <= 63 and name[0].isalpha() and name[-1].isalnum()
    objs = objects(topo(name=app_name))
    assert ("Service", name) in objs and ("Deployment", name) in objs


def test_task_events_are_on_for_apps_with_flower_only() -> None:
    assert celery_config(topo())["worker_send_task_events"] is True
    assert celery_config(topo())["task_send_sent_event"] is True
    assert "worker_send_task_events" not in celery_config(topo(None))


def test_the_auth_secrets_are_read_and_watched_with_the_apps_other_secrets() -> None:
    assert "proj-flower-auth" in referenced_secrets(topo().app)
    assert "proj-flower-auth" not in referenced_secrets(topo({**BASIC, "enabled": False}).app)


AUTH_SECRET = {"proj-flower-auth": {"auth": "admin:pw"}}


@pytest.mark.parametrize(("spec", "secrets", "reason", "fix"), [
    ({"enabled": True}, {}, api.FlowerReason.AUTH_REQUIRED, "allowUnauthenticated"),
    (BASIC, {}, api.FlowerReason.AUTH_SECRET_NOT_FOUND, "kubectl create secret generic proj-flower-auth"),
    (BASIC, {"proj-flower-auth": None}, api.FlowerReason.AUTH_SECRET_NOT_FOUND, "does not exist"),
    (BASIC, {"proj-flower-auth": {"password": "x"}}, api.FlowerReason.AUTH_SECRET_NOT_FOUND, "has no key 'auth'"),
])
def test_flower_never_runs_open_and_says_the_fix(spec: dict[str, Any], secrets: dict[str, Any], reason: str,
                                                   fix: str) -> None:
    got = flower.problem(topo(spec).app.flower, secrets)
    assert got is not None and got[0] == reason and fix in got[1]


def test_flower_runs_with_its_secret_or_when_explicitly_allowed_open() -> None:
    assert flower.problem(topo().app.flower, AUTH_SECRET) is None
    assert flower.problem(topo({"enabled": True, "allowUnauthenticated": True}).app.flower, {}) is None
    assert flower.problem(topo(None).app.flower, {}) is None


def test_a_refused_flower_is_not_rendered() -> None:
    objs = render_all(topo(), SECRETS, run_flower=False)
    assert not [o for o in objs if "flower" in o["metadata"]["name"]]


def _app_status(t: Topology, **kw: Any) -> decide.Desired:
    app_body = crs.body(api.APP, "proj", {})
    app_body.update(kw.pop("app_body", {}))
    facts = decide.Facts(namespace=crs.NS, app_name="proj", bodies={(api.APP, "proj"): app_body}, topology=t,
                         broker=Endpoint(ref=SecretKeyRef("proj-broker", "url"), url="amqp://b//"), **kw)
    return decide.statuses(facts)[(api.APP, "proj")]


def _flower_condition(d: decide.Desired) -> Any:
    [c] = [c for c in d.conditions if c.type == api.FLOWER_READY]
    return c


def test_app_status_says_flower_is_off_when_not_enabled() -> None:
    d = _app_status(topo(None))
    assert d.fields["flower"] == {"state": "Off"}
    assert _flower_condition(d).status is False


def test_app_status_carries_flowers_url_and_readiness() -> None:
    dep = {"status": {"readyReplicas": 1}}
    d = _app_status(topo(), children={("Deployment", "proj-flower"): dep})
    assert d.fields["flower"] == {"state": "Ready", "readyReplicas": 1,
                                  "url": f"http://proj-flower.{crs.NS}.svc:5555/"}
    assert _flower_condition(d).status is True
    starting = _app_status(topo(), children={("Deployment", "proj-flower"): {"status": {}}})
    assert starting.fields["flower"]["state"] == "Starting"
    assert _flower_condition(starting).reason == api.FlowerReason.PROGRESSING


def test_a_refused_flower_is_blocked_with_a_condition_and_one_warning_event() -> None:
    problem = flower.problem(topo().app.flower, {})
    assert problem is not None
    d = _app_status(topo(), flower_problem=problem)
    assert d.fields["flower"] == {"state": "Blocked"}
    cond = _flower_condition(d)
    assert (cond.status, cond.reason) == (False, api.FlowerReason.AUTH_SECRET_NOT_FOUND)
    assert [(e.type, e.reason) for e in d.events] == [("Warning", api.FlowerReason.AUTH_SECRET_NOT_FOUND)]
    # Once the condition says it, the same problem posts no second Event.
    said = {"status": {"conditions": [{"type": api.FLOWER_READY, "status": "False", "reason": cond.reason,
                                       "message": cond.message}]}}
    assert _app_status(topo(), flower_problem=problem, app_body=said).events == ()
    # The app itself (its workers) stays Ready.
    assert next(c for c in d.conditions if c.type == api.READY).status is True


def test_flower_without_authentication_says_so_when_allowed() -> None:
    t = topo({"enabled": True, "allowUnauthenticated": True})
    d = _app_status(t, children={("Deployment", "proj-flower"): {"status": {"readyReplicas": 1}}})
    assert _flower_condition(d).reason == api.FlowerReason.UNAUTHENTICATED
    assert "WITHOUT authentication" in _flower_condition(d).message
