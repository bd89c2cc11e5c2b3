"""The Grafana dashboard: current schema, datasource variable, and only metrics the operator exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from celery_operator import metrics
from tests.unit.promql import metric_names, selectors, unknown_names

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "celery-operator" / "dashboards" / "celery-operator.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Keys Grafana itself writes that the foundation SDK's dashboard schema does not model.
GRAFANA_KEYS_OUTSIDE_SDK_SCHEMA = {"builtIn", "definition"}
# Which dashboard variable filters which label.
VARIABLE_OF_LABEL = {"namespace": "namespace", "app": "app", "pool": "pool", "queue_name": "queue", "name": "task"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def expressions(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p["targets"]]


def variable_queries(d: dict[str, Any]) -> dict[str, str]:
    out = {}
    for v in d["templating"]["list"]:
        q = v.get("query")
        out[v["name"]] = q["query"] if isinstance(q, dict) else q
    return out


def label_values_selector(query: str) -> str:
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m, query
    return m.group(1)


def test_promql_reader_finds_metric_names_only() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, kind) (rate(x_bucket{a="b c", d=~"$app"}[$__rate_interval])))'
            ' / ignoring(kind) group_left(pool) y offset 5m > bool 3 and on(q) sum(z) by (le) or vector(0)')
    assert metric_names(expr) == {"x_bucket", "y", "z"}


def test_unknown_names_understands_histogram_suffixes() -> None:
    names = {"h_bucket", "h_sum", "h_count", "c_total", "c", "g_count"}
    assert unknown_names(names, exported={"h", "c_total", "g_count"}, histograms={"h"}) == {"c"}


def test_is_a_current_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    for key in ("title", "uid", "panels", "templating", "time", "tags"):
        assert dashboard[key], key
    assert {p["type"] for p in dashboard["panels"]} <= {"timeseries", "stat", "row"}


def test_round_trips_through_the_grafana_foundation_sdk_models(dashboard: dict[str, Any]) -> None:
    """Every key survives decoding into the SDK's typed models: catches misspelt or misplaced keys."""
    register_default_plugins()
    decoded = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))

    lost: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            for k, v in a.items():
                if k in GRAFANA_KEYS_OUTSIDE_SDK_SCHEMA:
                    continue
                if not isinstance(b, dict) or k not in b:
                    lost.append(f"{path}/{k}")
                else:
                    walk(v, b[k], f"{path}/{k}")
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                lost.append(path)
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            lost.append(f"{path}: {a!r} became {b!r}")

    walk(dashboard, decoded, "")
    assert lost == []


def test_panel_ids_are_unique_and_grid_positions_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert min(g["h"], g["w"]) > 0, p["title"]
        assert 0 <= g["x"] < g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for p in panels(dashboard):
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE, v["name"]


def test_variables_exist_and_query_label_values(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = variable_queries(dashboard)
    for name in ("namespace", "app", "pool", "queue", "task"):
        assert variables[name]["type"] == "query"
        assert queries[name].startswith("label_values(")
        assert variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"


def test_every_expression_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    names = set()
    for expr in expressions(dashboard):
        names |= metric_names(expr)
    for name, query in variable_queries(dashboard).items():
        if name != "datasource":
            names |= metric_names(label_values_selector(query))
    assert unknown_names(names, metrics.ALL_METRIC_NAMES, metrics.HISTOGRAMS) == set()


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    names = {n for expr in expressions(dashboard) for n in metric_names(expr)}
    wanted = {metrics.QUEUE_LENGTH, metrics.QUEUE_CONSUMERS, metrics.QUEUE_IN_FLIGHT, metrics.POOL_REPLICAS,
              metrics.POOL_MAX_REPLICAS, metrics.SCALE_EVENTS, metrics.BROKER_UP,
              metrics.BROKER_POLL_DURATION + "_bucket", metrics.RECONCILE_TOTAL}
    assert wanted <= names
    assert any("histogram_quantile" in e and metrics.BROKER_POLL_DURATION in e for e in expressions(dashboard))
    assert any('result="error"' in e for e in expressions(dashboard))


def test_dashboard_shows_tasks_and_workers(dashboard: dict[str, Any]) -> None:
    names = {n for expr in expressions(dashboard) for n in metric_names(expr)}
    wanted = {metrics.WORKER_UP, metrics.WORKER_TASKS_ACTIVE, metrics.TASK_RECEIVED, metrics.TASK_SUCCEEDED,
              metrics.TASK_FAILED, metrics.TASK_SENT, metrics.TASK_RETRIED, metrics.TASK_REVOKED,
              metrics.TASK_REJECTED, metrics.TASK_RUNTIME + "_bucket"}
    assert wanted <= names
    assert any("histogram_quantile" in e and metrics.TASK_RUNTIME in e for e in expressions(dashboard))
    # Live workers are compared with what the operator wants, per pool.
    assert any({metrics.WORKER_UP, metrics.POOL_REPLICAS} <= {n for t in p["targets"] for n in metric_names(t["expr"])}
               for p in panels(dashboard))
    assert any("by (name, exception)" in e for e in expressions(dashboard))


def test_selectors_filter_by_every_variable_their_metric_has(dashboard: dict[str, Any]) -> None:
    labels_of = {
        metrics.QUEUE_LENGTH: metrics.QUEUE_LABELS, metrics.QUEUE_CONSUMERS: metrics.QUEUE_LABELS,
        metrics.QUEUE_IN_FLIGHT: metrics.QUEUE_LABELS, metrics.POOL_REPLICAS: metrics.POOL_LABELS,
        metrics.POOL_MAX_REPLICAS: metrics.POOL_LABELS, metrics.SCALE_EVENTS: metrics.POOL_LABELS,
        metrics.BROKER_UP: metrics.APP_LABELS, metrics.BROKER_POLL_DURATION + "_bucket": metrics.APP_LABELS,
        metrics.DEPTH_SOURCE: metrics.APP_LABELS,
        **{m.name + ("_bucket" if m.type == "histogram" else ""): m.labels for m in metrics.WORKER_METRICS},
    }
    checked = 0
    for expr in expressions(dashboard):
        for name, matchers in selectors(expr):
            for label in (lb for lb in labels_of.get(name, ()) if lb in VARIABLE_OF_LABEL):
                assert f'{label}=~"${VARIABLE_OF_LABEL[label]}"' in matchers, (name, expr)
                checked += 1
    assert checked > 20
