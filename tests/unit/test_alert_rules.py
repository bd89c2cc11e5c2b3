"""The Prometheus alert rules: promtool accepts them and their unit tests pass; every alert is tested."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api, metrics
from tests.unit.promql import metric_names, unknown_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "celery-operator" / "rules" / "celery-operator.rules.yaml"
PROMTOOL_TESTS = REPO / "tests" / "promtool"
EXPECTED_ALERTS = {
    "CeleryQueueBacklogHigh", "CeleryWorkerPoolSaturated", "CeleryQueueNoConsumers", "CeleryBrokerDown",
    "CeleryOperatorReconcileErrors", "CeleryTaskFailureRatioHigh", "CeleryWorkersDown", "CeleryBeatEntryOverdue",
    "CeleryTaskQuarantined",
}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool_tests() -> list[Path]:
    return sorted(PROMTOOL_TESTS.glob("*.yaml"))


def test_promtool_check_rules_passes(promtool: str) -> None:
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in run.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    files = promtool_tests()
    assert files
    run = subprocess.run([promtool, "test", "rules", *map(str, files)], capture_output=True, text=True,
                         timeout=120, cwd=PROMTOOL_TESTS)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_expected_alerts_exist_with_severity_and_actionable_annotations(rules: list[dict[str, Any]]) -> None:
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["for"], r["alert"]
        assert set(r["annotations"]) == {"summary", "description"}, r["alert"]
        assert "kubectl" in r["annotations"]["description"] or "spec." in r["annotations"]["description"]


def test_rules_name_only_exported_metrics(rules: list[dict[str, Any]]) -> None:
    names = {n for r in rules for n in metric_names(r["expr"])}
    assert names
    assert unknown_names(names, metrics.ALL_METRIC_NAMES, metrics.HISTOGRAMS) == set()


def test_every_alert_has_a_firing_and_a_silent_promtool_case(rules: list[dict[str, Any]]) -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in promtool_tests():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_kubectl_hint_in_reconcile_errors_spells_each_kinds_plural() -> None:
    # The description renders `kubectl get {{ $labels.kind | toLower }}s`.
    for kind in api.KINDS:
        assert kind.lower() + "s" == api.plural(kind)
