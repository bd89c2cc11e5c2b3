"""The app's PodMonitor: it selects exactly the app's worker and beat pods and scrapes their metrics port."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from celery_operator import api
from celery_operator.render import SecretsContext, monitoring, render_all
from celery_operator.topology import Topology
from localenv.procs import REPO
from tests.unit import crs

POD_MONITOR_CRD = REPO / "dev" / "addons" / "monitoring.coreos.com_podmonitors.yaml"
SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and the In operator)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def pod_labels(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in objs if o["kind"] == "Deployment"}


def test_pod_monitor_selects_the_apps_workers_and_beat_not_its_brokers_or_other_apps() -> None:
    objs = render_all(crs.seed(), SECRETS, pod_monitor=True)
    pm = objs[-1]
    other_app = render_all(Topology.of(crs.app("other"), queues=[crs.queue("celery", app_name="other")],
                                       pools=[crs.pool("w", ["celery"], app_name="other")]), SECRETS)
    selected = {name for name, labels in pod_labels(objs).items() if selects(pm["spec"]["selector"], labels)}
    assert selected == {"proj-default", "proj-high", "proj-low", "proj-beat"}
    brokers = [o["spec"]["template"]["metadata"]["labels"] for o in objs if o["kind"] == "StatefulSet"]
    assert brokers and not any(selects(pm["spec"]["selector"], labels) for labels in brokers)
    assert not any(selects(pm["spec"]["selector"], labels) for labels in pod_labels(other_app).values())


def test_pod_monitor_scrapes_the_named_metrics_port_every_selected_container_has() -> None:
    objs = render_all(crs.seed(), SECRETS, pod_monitor=True)
    [endpoint] = objs[-1]["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": api.METRICS_PORT_NAME, "path": api.METRICS_PATH, "honorLabels": True}
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert {"name": endpoint["port"], "containerPort": api.METRICS_PORT, "protocol": "TCP"} in c["ports"]


def test_scrape_job_is_named_celery_so_celery_mixin_selectors_match() -> None:
    objs = render_all(crs.seed(), SECRETS, pod_monitor=True)
    job_label = objs[-1]["spec"]["jobLabel"]
    assert {labels[job_label] for labels in pod_labels(objs).values()} == {"celery"}


def test_pod_monitor_is_a_namespaced_monitoring_coreos_com_v1_object_with_our_labels() -> None:
    pm = monitoring.pod_monitor(crs.seed(), None)
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert pm["metadata"]["namespace"] == crs.NS
    assert pm["metadata"]["name"] == "proj-celery"
    assert pm["metadata"]["labels"][api.LABEL_APP] == "proj"
    assert pm["metadata"]["labels"][api.LABEL_MANAGED_BY] == api.OPERATOR_NAME
    # What prometheus-operator requires of a PodMonitor (its CRD is not carried here).
    assert pm["spec"]["selector"]["matchLabels"]
    assert all(isinstance(ep["port"], str) for ep in pm["spec"]["podMetricsEndpoints"])
    assert "namespaceSelector" not in pm["spec"]  # its own namespace: where the pods are


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema as the API server applies it to server-side apply: unknown fields are errors."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    return out


@pytest.fixture(scope="module")
def pod_monitor_schema() -> dict[str, Any]:
    crd = yaml.safe_load(POD_MONITOR_CRD.read_text())
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (api.MONITORING_GROUP, api.POD_MONITOR)
    assert crd["spec"]["names"]["plural"] == api.POD_MONITOR_PLURAL
    [v1] = [v for v in crd["spec"]["versions"] if f"{api.MONITORING_GROUP}/{v['name']}" == api.MONITORING_API_VERSION]
    return strict(v1["schema"]["openAPIV3Schema"])


def test_pod_monitor_validates_against_prometheus_operators_own_crd(pod_monitor_schema: dict[str, Any]) -> None:
    pm = render_all(crs.seed(), SECRETS, pod_monitor=True)[-1]
    jsonschema.validate(pm, pod_monitor_schema)
    # The check has teeth: a field in the wrong place is rejected.
    misplaced = {**pm, "spec": {**pm["spec"], "honorLabels": True}}
    with pytest.raises(jsonschema.ValidationError, match="honorLabels"):
        jsonschema.validate(misplaced, pod_monitor_schema)
