"""Dashboard queries as Grafana sends them (tests/fixtures/grafana.py), checked without a Prometheus."""

from __future__ import annotations

import json
from typing import Any

from localenv.procs import REPO
from tests.fixtures import grafana

SERIES = [
    {"__name__": "celery_operator_broker_up", "namespace": "demo", "app": "proj"},
    {"__name__": "celery_operator_broker_up", "namespace": "other", "app": "x.y"},
    {"__name__": "celery_queue_length", "namespace": "demo", "app": "proj", "queue_name": "high_queue"},
]


def series(selector: str) -> list[dict[str, str]]:
    """Enough of a series endpoint for these tests: the metric name and namespace=~ matchers."""
    name = selector.split("{")[0]
    out = [s for s in SERIES if not name or s["__name__"] == name]
    if 'namespace=~"(demo)"' in selector:
        out = [s for s in out if s["namespace"] == "demo"]
    return out


def no_query(expr: str) -> list[dict[str, Any]]:
    raise AssertionError(expr)


DASHBOARD: dict[str, Any] = {
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "namespace", "type": "query", "query": {"query": "label_values(celery_operator_broker_up, namespace)"},
         "multi": True, "includeAll": False, "regex": "/^(demo)$/"},
        {"name": "app", "type": "query", "multi": True,
         "query": 'label_values(celery_operator_broker_up{namespace=~"$namespace"}, app)'},
        {"name": "queue", "type": "query", "query": "label_values(celery_queue_length, queue_name)",
         "includeAll": True, "allValue": ".*"},
        {"name": "window", "type": "custom", "query": "5m,1h"},
    ]},
    "panels": [
        {"title": "row", "type": "row", "panels": [
            {"title": "Depth", "targets": [{"expr": 'sum(celery_queue_length{namespace=~"$namespace", app=~"${app}", '
                                                    'queue_name=~"[[queue]]"}[$__rate_interval])'}]}]},
        {"title": "Window", "targets": [{"expr": "rate(x[$window]) and on() $__range_s", "refId": "A"},
                                        {"expr": "hidden", "hide": True}]},
    ],
}


def test_every_panel_query_gets_its_variables_as_grafana_sends_them() -> None:
    got = grafana.resolved_queries(DASHBOARD, no_query, series, scrape_interval_s=15)
    assert [(p.title, p.expr) for p in got] == [
        ("Depth", r'sum(celery_queue_length{namespace=~"(demo)", app=~"(proj)", queue_name=~".*"}[60000ms])'),
        ("Window", "rate(x[5m]) and on() 3600"),
    ]


def test_multi_values_are_regex_escaped_and_joined() -> None:
    values = {"app": ["x.y", "proj"]}
    variables = {"app": {"multi": True}}
    assert grafana.interpolate('a=~"$app"', values, variables, {}) == r'a=~"(x\.y|proj)"'


def test_rate_interval_is_four_scrapes_or_interval_plus_one_scrape() -> None:
    assert grafana.builtins(1, interval_s=15)["__rate_interval"] == "16000ms"
    assert grafana.builtins(30, interval_s=15)["__rate_interval"] == "120000ms"


def test_the_charts_dashboard_has_only_variables_grafana_resolves_and_every_query_uses_them() -> None:
    dashboard = json.loads((REPO / "charts" / "celery-operator" / "dashboards" / "celery-operator.json").read_text())
    got = grafana.resolved_queries(dashboard, no_query, lambda s: [
        {"namespace": "n", "app": "a", "pool": "p", "queue_name": "q", "name": "t"}], scrape_interval_s=1)
    assert got and all("$" not in p.expr and "[[" not in p.expr for p in got), [p.expr for p in got]
