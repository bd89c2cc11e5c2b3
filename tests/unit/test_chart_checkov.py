"""checkov finds nothing left unexplained in the chart: every skipped check carries its reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.delivery import CHART

EVERYTHING_ON = {
    "watchNamespaces": ["team-a", "team-b"], "replicaCount": 2, "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True}, "dashboards": {"enabled": True},
    "podDisruptionBudget": {"enabled": True}, "networkPolicy": {"enabled": True},
}


def run_checkov(checkov: str, helm: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PATH": f"{Path(helm).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([checkov, "--skip-download", "-o", "json", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize("values", [None, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_checkov_passes_the_chart_with_every_skip_explained(
        checkov: str, helm: str, tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = ["-d", str(CHART), "--framework", "helm"]
    if values is not None:
        vf = tmp_path / "values.yaml"
        vf.write_text(yaml.safe_dump(values))
        args += ["--var-file", str(vf)]
    report = run_checkov(checkov, helm, args)
    summary = report["summary"]
    # A chart checkov failed to render scans nothing and "passes": insist it scanned the objects.
    assert summary["resource_count"] >= 7, summary
    assert summary["parsing_errors"] == 0
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed
    for skipped in report["results"]["skipped_checks"]:
        assert (skipped["check_result"].get("suppress_comment") or "").strip(), skipped["check_id"]


def test_chart_wide_checkov_skips_each_carry_a_comment() -> None:
    lines = (CHART / ".checkov.yaml").read_text().splitlines()
    skips = yaml.safe_load("\n".join(lines))["skip-check"]
    assert skips
    for check in skips:
        i = lines.index(f"  - {check}") - 1
        while i >= 0 and lines[i].strip().startswith("#") and not lines[i].strip().startswith(f"# {check} "):
            i -= 1
        assert i >= 0, f"{check} has no reason above it"
        assert lines[i].strip().startswith(f"# {check} "), f"{check} has no reason above it"
