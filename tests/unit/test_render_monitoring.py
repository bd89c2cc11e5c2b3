"""The app's PodMonitor: it selects exactly the app's worker and beat pods and scrapes their metrics port."""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.render import SecretsContext, monitoring, render_all
from celery_operator.topology import Topology
from tests.unit import crs

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
