"""The Helm chart: lint, values schema, RBAC modes, the operator pod, CRDs and monitoring objects."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api, rbac
from tests.fixtures.delivery import CHART, NAMESPACE, HelmError, Render

EVERYTHING_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "replicaCount": 2,
}

# The chart is generated from celery_operator.rbac; these tests check the templates bind it as intended
# (the e2e tests run the operator under this RBAC, which is what proves it sufficient).
NAMESPACED_RULES = rbac.flatten(rbac.NAMESPACED)
CLUSTER_READ_RULES = rbac.flatten(rbac.CLUSTER_READ)
LEASE_RULES = rbac.flatten(rbac.LEASE)
flatten = rbac.flatten


def operator_container(rendered: Any) -> dict[str, Any]:
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def test_chart_lints_clean_in_strict_mode(helm: str) -> None:
    for extra in ([], ["--set", "watchNamespaces={a,b}", "--set", "serviceMonitor.enabled=true"]):
        out = subprocess.run([helm, "lint", "--strict", str(CHART), *extra], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[WARNING]" not in out.stdout


def test_values_schema_rejects_a_non_integer_replica_count(helm: str) -> None:
    out = subprocess.run([helm, "template", "x", str(CHART), "--set", "replicaCount=abc"],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "replicaCount" in out.stderr


@pytest.mark.parametrize(("values", "field"), [
    ({"replicas": 2}, "replicas"),  # a typo of replicaCount must not pass silently
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    ({"crds": {"keep": "yes"}}, "keep"),
    ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
])
def test_values_schema_rejects_wrong_values(render: Render, values: dict[str, Any], field: str) -> None:
    with pytest.raises(HelmError, match=field):
        render(values)


def test_values_schema_accepts_the_defaults_and_every_option(render: Render) -> None:
    render()
    render({**EVERYTHING_ON, "watchNamespaces": ["a"], "image": {"digest": "sha256:" + "a" * 64}})


def test_every_object_carries_the_app_kubernetes_io_labels(render: Render) -> None:
    for values in ({}, {**EVERYTHING_ON, "watchNamespaces": ["team-a"]}):
        for obj in render(values).objects:
            labels = obj["metadata"].get("labels", {})
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert labels.get(api.LABEL_NAME) == "celery-operator", where
            assert labels.get(api.LABEL_INSTANCE) == "celery-operator", where
            assert labels.get(api.LABEL_MANAGED_BY) == "Helm", where
            assert labels.get(api.LABEL_PART_OF) == "celery-operator", where
            assert labels.get(api.LABEL_VERSION), where


def test_namespaced_objects_land_in_the_release_namespace(render: Render) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for obj in render(EVERYTHING_ON).objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_operator_pod_meets_the_restricted_pod_security_standard(render: Render) -> None:
    rendered = render()
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] in (65532, 10001)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = operator_container(rendered)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    for vol in pod.get("volumes", []):
        assert "hostPath" not in vol


def test_operator_container_has_resources_and_probes_on_one_http_port(render: Render) -> None:
    c = operator_container(render())
    assert set(c["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["image"] == "ghcr.io/celery-operator/celery-operator:" + yaml.safe_load(
        (CHART / "Chart.yaml").read_text())["appVersion"]


def test_image_digest_replaces_the_tag(render: Render) -> None:
    digest = "sha256:" + "b" * 64
    c = operator_container(render({"image": {"digest": digest, "tag": "9.9.9"}}))
    assert c["image"] == f"ghcr.io/celery-operator/celery-operator@{digest}"


def test_operator_runs_with_leader_election_and_its_pod_identity(render: Render) -> None:
    c = operator_container(render())
    assert c["args"][0] == "--all-namespaces"
    assert "--leader-election" in c["args"]
    assert "--lease-name=celery-operator" in c["args"]
    assert f"--lease-namespace={NAMESPACE}" in c["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    lease_rules = flatten(render().one("Role", "celery-operator-leader-election")["rules"])
    assert lease_rules == LEASE_RULES


def test_leader_election_off_drops_the_lease_role(render: Render) -> None:
    rendered = render({"leaderElection": {"enabled": False}})
    assert "--no-leader-election" in operator_container(rendered)["args"]
    assert not [r for r in rendered.of_kind("Role") if r["metadata"]["name"].endswith("leader-election")]


def test_several_replicas_without_leader_election_are_refused(render: Render) -> None:
    with pytest.raises(HelmError, match="leaderElection"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})


def test_all_namespaces_mode_binds_one_cluster_role_with_exactly_the_operator_permissions(
        render: Render) -> None:
    rendered = render()
    role = rendered.one("ClusterRole")
    assert flatten(role["rules"]) == NAMESPACED_RULES | CLUSTER_READ_RULES
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "celery-operator", "namespace": NAMESPACE}]
    assert "kopf.dev" not in {g for g, _, _ in flatten(role["rules"])}
    assert not any("*" in (g, r, v) for g, r, v in flatten(role["rules"]))


def test_namespaced_mode_grants_per_namespace_roles_and_only_cluster_reads(render: Render) -> None:
    rendered = render({"watchNamespaces": ["team-a", "team-b"]})
    assert flatten(rendered.one("ClusterRole")["rules"]) == CLUSTER_READ_RULES
    roles = {r["metadata"]["namespace"]: r for r in rendered.of_kind("Role")
             if not r["metadata"]["name"].endswith("leader-election")}
    assert set(roles) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert flatten(role["rules"]) == NAMESPACED_RULES
        (binding,) = [b for b in rendered.of_kind("RoleBinding") if b["metadata"]["namespace"] == ns]
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    args = operator_container(rendered)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]


def test_rbac_extra_rules_are_appended(render: Render) -> None:
    extra = {"apiGroups": ["rabbitmq.com"], "resources": ["rabbitmqclusters"], "verbs": ["get"]}
    rules = flatten(render({"rbac": {"extraRules": [extra]}}).one("ClusterRole")["rules"])
    assert ("rabbitmq.com", "rabbitmqclusters", "get") in rules


def test_crds_are_templated_from_the_crds_directory_and_kept(render: Render) -> None:
    crds = render().of_kind("CustomResourceDefinition")
    sources = sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert sources, "no CRD copies in the chart: run dev/gen-manifests.sh"
    expected = {f"{plural}.{api.GROUP}" for plural, _, _ in api.KINDS.values()}
    assert {c["metadata"]["name"] for c in crds} == expected
    for crd in crds:
        annotations = crd["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
        assert annotations["kustomize.toolkit.fluxcd.io/prune"] == "disabled"
        source = next(d for p in sources for d in yaml.safe_load_all(p.read_text())
                      if d and d["metadata"]["name"] == crd["metadata"]["name"])
        assert crd["spec"] == source["spec"]


def test_crds_keep_false_lets_helm_delete_them(render: Render) -> None:
    for crd in render({"crds": {"keep": False}}).of_kind("CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_disabled_renders_none(render: Render) -> None:
    assert not render({"crds": {"enabled": False}}).of_kind("CustomResourceDefinition")


def test_monitoring_objects_tolerate_missing_source_files(render: Render, chart_copy: Path) -> None:
    for d in ("dashboards", "rules"):
        for f in (chart_copy / d).glob("*") if (chart_copy / d).exists() else []:
            f.unlink()
    rendered = render(EVERYTHING_ON, chart=chart_copy)
    assert "PrometheusRule" not in rendered.kinds()
    assert not [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("dashboards")]
    assert "ServiceMonitor" in rendered.kinds()


@pytest.mark.parametrize("as_object", [False, True], ids=["rule-file", "prometheusrule-object"])
def test_prometheus_rule_and_dashboard_come_from_their_source_files(
        render: Render, chart_copy: Path, as_object: bool) -> None:
    groups = [{"name": "celery-operator", "rules": [
        {"alert": "CeleryOperatorDown", "expr": "absent(up{job=\"celery-operator\"} == 1)", "for": "5m",
         "labels": {"severity": "critical"}, "annotations": {"summary": "celery-operator is down"}}]}]
    rules: dict[str, Any] = {"groups": groups}
    if as_object:
        rules = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                 "metadata": {"name": "x"}, "spec": {"groups": groups}}
    dashboard = {"title": "celery-operator", "panels": [{"id": 1, "type": "timeseries"}], "uid": "celery-op"}
    (chart_copy / "rules").mkdir(exist_ok=True)
    (chart_copy / "dashboards").mkdir(exist_ok=True)
    (chart_copy / "rules" / "celery-operator.rules.yaml").write_text(yaml.safe_dump(rules))
    (chart_copy / "dashboards" / "celery-operator.json").write_text(json.dumps(dashboard, indent=2))
    rendered = render(EVERYTHING_ON, chart=chart_copy)
    assert rendered.one("PrometheusRule")["spec"]["groups"] == groups
    cm = rendered.one("ConfigMap", "celery-operator-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["celery-operator.json"]) == dashboard


def test_the_real_rules_and_dashboard_render_when_enabled(render: Render) -> None:
    rules_file = CHART / "rules" / "celery-operator.rules.yaml"
    dashboard_file = CHART / "dashboards" / "celery-operator.json"
    rendered = render(EVERYTHING_ON)
    source = yaml.safe_load(rules_file.read_text())
    expected = source["groups"] if "groups" in source else source["spec"]["groups"]
    assert rendered.one("PrometheusRule")["spec"]["groups"] == expected
    cm = rendered.one("ConfigMap", "celery-operator-dashboards")
    assert json.loads(cm["data"]["celery-operator.json"]) == json.loads(dashboard_file.read_text())


def test_service_monitor_scrapes_the_metrics_service_port(render: Render) -> None:
    rendered = render(EVERYTHING_ON)
    svc = rendered.one("Service")
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 8080, "http")
    sm = rendered.one("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # Series keep the namespace of the app they describe, not the operator's own.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= svc["metadata"]["labels"].items()
    # Queue metrics reach Prometheus under the workers' job (celery-mixin filters celery_queue_length on it):
    # Prometheus Operator takes `job` from the Service label the ServiceMonitor's jobLabel names.
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "celery"
    assert svc["spec"]["selector"].items() <= rendered.one("Deployment")["spec"]["template"]["metadata"][
        "labels"].items()


def test_optional_objects_are_off_by_default(render: Render) -> None:
    kinds = render().kinds()
    assert kinds.isdisjoint({"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "NetworkPolicy"})


def test_scheduling_and_pull_secret_values_reach_the_pod(render: Render) -> None:
    values = {
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}]}}},
        "imagePullSecrets": [{"name": "regcred"}],
    }
    pod = render(values).one("Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_every_value_is_documented_by_a_comment_starting_with_its_name() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        path = [(d, k) for d, k in path if d < indent] + [(indent, key)]
        name = ".".join(k for _, k in path)
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith(f"# -- {name}:"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith(f"# -- {name}:"):
            undocumented.append(name)
    assert not undocumented


def test_packaged_chart_carries_the_crds_and_no_dev_files(helm: str, tmp_path: Path) -> None:
    subprocess.run([helm, "package", str(CHART), "-d", str(tmp_path)], check=True, capture_output=True)
    (pkg,) = tmp_path.glob("celery-operator-*.tgz")
    with tarfile.open(pkg) as tar:
        names = set(tar.getnames())
    crds = {n for n in names if n.startswith("celery-operator/files/crds/") and n.endswith(".yaml")}
    assert len(crds) == len(api.KINDS)
    assert "celery-operator/values.schema.json" in names
    assert not {n for n in names if n.endswith((".checkov.yaml", ".gitkeep"))}


@pytest.mark.parametrize("values", [
    {},
    {"watchNamespaces": ["team-a", "team-b"], "verbose": True},
    {"leaderElection": {"enabled": False, "leaseName": "x"}},
], ids=["defaults", "namespaced-verbose", "no-leader-election"])
def test_operator_args_are_accepted_by_the_operator_cli(render: Render, values: dict[str, Any]) -> None:
    from celery_operator.cli import _parser

    c = operator_container(render(values))
    parsed = _parser().parse_args(["run", *c["args"]])
    assert parsed.port == c["ports"][0]["containerPort"]
    assert parsed.namespace == values.get("watchNamespaces", [])
    assert parsed.all_namespaces is not bool(values.get("watchNamespaces"))
    assert parsed.leader_election is values.get("leaderElection", {}).get("enabled", True)
    if parsed.leader_election:
        assert (parsed.lease_name, parsed.lease_namespace) == ("celery-operator", NAMESPACE)
    assert parsed.verbose is values.get("verbose", False)
