"""The app's beat: its Deployment, and the identity, permissions, state and Lease its scheduler uses."""

from __future__ import annotations

from typing import Any

from celery_operator import api, rbac
from celery_operator.models import SecretKeyRef
from celery_operator.render import beat
from celery_operator.topology import Topology
from tests.unit import crs


def render(topo: Topology | None = None) -> dict[str, Any]:
    return beat.deployment(topo or crs.seed(), SecretKeyRef("proj-broker", "url"), None, "h1", None)


def objects(topo: Topology | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    objs = beat.objects(topo or crs.seed(), SecretKeyRef("proj-broker", "url"), None, "h1", None)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def with_service_account(name: str) -> Topology:
    topo = crs.seed()
    app = crs.app(podTemplate={"serviceAccountName": name})
    return Topology.of(app, topo.exchanges, topo.queues, topo.pools, topo.schedules)


def test_beat_is_one_replica_recreated_never_two() -> None:
    dep = render()
    assert dep["metadata"]["name"] == "proj-beat"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["selector"]["matchLabels"] == {api.LABEL_APP: "proj", api.LABEL_COMPONENT: "beat"}
    assert dep["metadata"]["labels"][api.LABEL_COMPONENT] == "beat"
    assert api.LABEL_POOL not in dep["metadata"]["labels"]


def test_beat_runs_the_operators_scheduler_told_where_its_state_and_lease_are() -> None:
    [c] = render()["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["celery", "-A", api.BOOTSTRAP_MODULE, "beat", "--loglevel", "INFO",
                            "--scheduler", f"{api.BEAT_MODULE}:Scheduler"]
    assert "livenessProbe" not in c
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env[api.ENV_BROKER_URL]["valueFrom"] == {"secretKeyRef": {"name": "proj-broker", "key": "url"}}
    assert env[api.ENV_BEAT_STATE]["value"] == "proj-beat-state"
    assert env[api.ENV_BEAT_LEASE]["value"] == "proj-beat"
    assert env[api.ENV_NAMESPACE]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env[api.ENV_POD_NAME]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_users_cannot_point_beat_at_another_state_or_lease() -> None:
    topo = crs.seed()
    app = crs.app(env=[{"name": api.ENV_BEAT_STATE, "value": "elsewhere"},
                       {"name": api.ENV_BEAT_LEASE, "value": "elsewhere"}])
    [c] = render(Topology.of(app, topo.exchanges, topo.queues, topo.pools, topo.schedules))[
        "spec"]["template"]["spec"]["containers"]
    values = [e.get("value") for e in c["env"] if e["name"] in (api.ENV_BEAT_STATE, api.ENV_BEAT_LEASE)]
    assert values == ["proj-beat-state", "proj-beat"]


def test_beat_runs_as_its_own_service_account_with_a_token() -> None:
    spec = render()["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "proj-beat"
    assert spec["automountServiceAccountToken"] is True
    sa = objects()[("ServiceAccount", "proj-beat")]
    assert sa["metadata"]["labels"][api.LABEL_MANAGED_BY] == api.OPERATOR_NAME


def test_a_service_account_of_the_apps_pod_template_is_kept_and_bound_instead() -> None:
    topo = with_service_account("team-identity")
    assert render(topo)["spec"]["template"]["spec"]["serviceAccountName"] == "team-identity"
    objs = objects(topo)
    assert "ServiceAccount" not in {kind for kind, _ in objs}
    assert objs[("RoleBinding", "proj-beat")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "team-identity", "namespace": crs.NS}]


def test_beats_role_grants_exactly_rbac_beat_on_its_own_config_map_and_lease() -> None:
    objs = objects()
    role = objs[("Role", "proj-beat")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
         "resourceNames": ["proj-beat-state"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
         "resourceNames": ["proj-beat"]},
    ]
    assert rbac.flatten(role["rules"]) == rbac.flatten(rbac.BEAT)
    binding = objs[("RoleBinding", "proj-beat")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "proj-beat"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "proj-beat", "namespace": crs.NS}]


def test_the_operator_holds_every_permission_it_grants_beat() -> None:
    assert rbac.flatten(rbac.BEAT) <= rbac.flatten(rbac.NAMESPACED)


def test_beats_state_and_lease_are_created_empty_so_what_beat_writes_is_never_applied_over() -> None:
    objs = objects()
    state = objs[("ConfigMap", "proj-beat-state")]
    assert set(state) == {"apiVersion", "kind", "metadata"}
    assert state["metadata"]["labels"][api.LABEL_MANAGED_BY] == api.OPERATOR_NAME
    assert state["metadata"]["labels"][api.LABEL_APP] == "proj"
    lease = objs[("Lease", "proj-beat")]
    assert set(lease) == {"apiVersion", "kind", "metadata"}
    assert lease["apiVersion"] == "coordination.k8s.io/v1"


def test_beat_pods_roll_on_config_change() -> None:
    annotations = render()["spec"]["template"]["metadata"]["annotations"]
    assert annotations[api.ANNOTATION_CONFIG_HASH] == "h1"


def test_beat_serves_its_sent_count_on_the_metrics_port() -> None:
    dep = render()
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": api.METRICS_PORT_NAME, "containerPort": api.METRICS_PORT, "protocol": "TCP"}]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(api.METRICS_PORT)
    env = {e["name"] for e in c["env"]}
    assert api.ENV_POOL not in env and api.ENV_PROMETHEUS_MULTIPROC_DIR not in env
