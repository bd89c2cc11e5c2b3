"""Every object the chart renders is valid for the Kubernetes version the project pins.

Built-in kinds (CRDs included) are validated strictly by kubernetes-validate. The only kinds
without a schema there are prometheus-operator's, whose CRDs we do not carry: those get a
structural check of the fields their controllers require.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from localenv.procs import REPO
from tests.fixtures.delivery import Render

PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kubernetes_version() -> str:
    for line in (REPO / "dev" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            major, minor, *_ = line.split("=", 1)[1].split(".")
            return f"{major}.{minor}.0"
    raise AssertionError("KUBERNETES_VERSION missing from dev/versions.env")


def check_prometheus_operator_object(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        for ep in spec["endpoints"]:
            assert isinstance(ep["port"], str)
    else:
        assert spec["groups"]
        for group in spec["groups"]:
            assert group["name"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule)
                assert rule["expr"]


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-namespaces-everything-on": {
        "replicaCount": 2, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True}, "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {}}]},
    },
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "leaderElection": {"enabled": False},
                   "serviceAccount": {"annotations": {"example.com/role": "x"}}},
}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_validates_against_the_pinned_kubernetes_schemas(
        render: Render, name: str) -> None:
    version = kubernetes_version()
    rendered = render(VALUE_SETS[name])
    assert rendered.objects
    errors = []
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            check_prometheus_operator_object(obj)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: no schema ({e})")
    assert not errors


def test_strict_validation_catches_a_misplaced_field() -> None:
    """Guards the test above: kubernetes-validate really rejects unknown fields for this version."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80, "targetport": 8080}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_version(), strict=True)
