"""The Prometheus harness against a real server scraping a real registry's exposition."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import signals
from prometheus_client import CollectorRegistry, generate_latest

from celery_operator import api
from celery_operator.metrics import OperatorMetrics
from localenv.procs import ServerError
from localenv.prometheus import MetricsTarget
from tests.fixtures.prometheus import PrometheusFactory
from tests.unit.taskmetrics import load_module, make_app

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "celery-operator"
RULES = CHART / "rules" / "celery-operator.rules.yaml"
DASHBOARD = CHART / "dashboards" / "celery-operator.json"


def test_prometheus_scrapes_the_operator_metrics_exposition(
    prometheus_factory: PrometheusFactory, metrics_target: Callable[[Callable[[], bytes]], MetricsTarget]
) -> None:
    m = OperatorMetrics()
    m.observe_queue("ns", "proj", "low_queue", ready=42, in_flight=3, consumers=1)
    m.set_pool_replicas("ns", "proj", "low", desired=4, current=2, ready=2)
    target = metrics_target(m.exposition)

    prom = prometheus_factory([target.address])

    result = prom.wait_for('celery_queue_length{namespace="ns",app="proj",queue_name="low_queue"}')
    assert [float(r["value"][1]) for r in result] == [42.0]
    assert result[0]["metric"]["instance"] == target.address
    desired = prom.wait_for('celery_operator_pool_replicas{pool="low",kind="desired"}')
    assert float(desired[0]["value"][1]) == 4.0

    # A later change shows up on the next 1 s scrape.
    m.observe_queue("ns", "proj", "low_queue", ready=7, in_flight=0, consumers=1)
    prom.wait_for('celery_queue_length{queue_name="low_queue"} == 7', timeout=20)
    assert target.scrapes >= 2


def test_query_reports_promql_errors(
    prometheus_factory: PrometheusFactory, metrics_target: Callable[[Callable[[], bytes]], MetricsTarget]
) -> None:
    prom = prometheus_factory([metrics_target(OperatorMetrics().exposition).address])
    [answer] = prom.query("1 + 1")
    assert answer["value"][1] == "2"
    with pytest.raises(ServerError, match="bad_data"):
        prom.query("sum(")


def test_dashboard_queries_and_alert_rules_work_on_the_operators_real_metrics(
    prometheus_factory: PrometheusFactory, metrics_target: Callable[[Callable[[], bytes]], MetricsTarget]
) -> None:
    m = OperatorMetrics()
    m.observe_queue("ns", "proj", "low_queue", ready=42, in_flight=3, consumers=0)
    m.set_depth_source("ns", "proj", "management")
    m.set_pool_replicas("ns", "proj", "low", desired=4, current=2, ready=2)
    m.set_pool_bounds("ns", "proj", "low", (0, 4))
    m.count_scale_event("ns", "proj", "low", "up")
    m.set_broker_up("ns", "proj", False)
    m.observe_poll("ns", "proj", 0.2)
    m.observe_reconcile("CeleryApp", 0.3)

    def failing_operator() -> bytes:  # a reconcile error between every two scrapes
        m.count_reconcile("CeleryApp", "error")
        return m.exposition()

    target = metrics_target(failing_operator)
    # One worker of the low pool (4 desired), as the pods' metrics module exports it: between every
    # two scrapes it receives, publishes and runs a task that succeeds and one that fails, retries,
    # rejects, and has one revoked.
    module = load_module(**{api.ENV_POOL: "low"})
    app = make_app()
    registry = CollectorRegistry()
    tm = module.install(app, {"namespace": "ns", "app": "proj"}, registry)
    registry.register(module.WorkerCollector(tm.labels))

    def received(name: str) -> SimpleNamespace:  # what task_received and task_revoked read of a Request
        return SimpleNamespace(name=name, delivery_info={"exchange": "", "routing_key": "adds"})

    def busy_worker() -> bytes:
        for name, args in (("t.add", (1, 2)), ("t.fail", ()), ("t.retry", ()), ("t.reject", ())):
            signals.task_received.send(sender=None, request=received(name=name))
            app.tasks[name].apply_async(args)
            app.tasks[name].apply(args, exchange="", routing_key="adds")
        signals.task_revoked.send(sender=app.tasks["t.add"], request=received(name="t.add"))
        return generate_latest(registry)

    worker = metrics_target(busy_worker)
    try:
        prom = prometheus_factory([target.address, worker.address], rule_files=[RULES])
        prom.wait_for("count_over_time(celery_queue_length[1m]) >= 3")
        prom.wait_for("count_over_time(celery_task_received_total[1m]) >= 3")
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                expr = t["expr"].replace("$__rate_interval", "1m")
                for var in ("namespace", "app", "pool", "queue", "task"):
                    expr = expr.replace(f"${var}", ".*")
                assert prom.query(expr), (panel["title"], expr)

        # Every rule evaluates cleanly; the conditions that hold are pending (their `for` has not passed).
        deadline = time.monotonic() + 30
        while True:
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            pending = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
            if len(pending) == 6 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
        assert pending == {"CeleryQueueNoConsumers", "CeleryWorkerPoolSaturated", "CeleryBrokerDown",
                           "CeleryOperatorReconcileErrors", "CeleryTaskFailureRatioHigh", "CeleryWorkersDown"}
    finally:
        tm.disconnect()
