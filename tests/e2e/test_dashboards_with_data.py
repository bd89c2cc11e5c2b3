"""The chart's dashboard with data: every panel query, sent as Grafana sends it, returns series from a real
Prometheus after a producer ran.

Prometheus scrapes what a cluster with Prometheus Operator would: the worker and beat pods through the
PodMonitor the operator writes (job from its jobLabel, `celery`), and the operator through the chart's
ServiceMonitor, reproduced as Prometheus Operator configures it: job from the metrics Service's label the
ServiceMonitor's jobLabel names (`serviceMonitor.job` in values.yaml), honor_labels, the target's namespace,
service and endpoint labels. The dashboard's variables are resolved from that Prometheus
(tests/fixtures/grafana.py), with "All" selected, and every query is evaluated at the moment the producer's
tasks had all finished.

celery-mixin's dashboards and alerts are not checked here: they live only in celery-exporter's repository,
which no package registry this project installs from serves (its PyPI namesake is another project).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api
from localenv.cluster import Cluster
from localenv.procs import REPO
from localenv.prometheus import Prometheus
from tests.e2e.test_task_metrics import pod_monitor_crd, scrape_config_of  # noqa: F401 (a fixture)
from tests.fixtures import grafana
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    celery_call,
    get,
    pool_selector,
    sample_client_env,
    start_sample_app,
    wait_for,
    wait_pods_ready,
)
from tests.fixtures.prometheus import PrometheusFactory
from tests.fixtures.servers import OPERATOR_NAMESPACE, Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHART = REPO / "charts" / "celery-operator"
DASHBOARD = CHART / "dashboards" / "celery-operator.json"
SCRAPE_INTERVAL_S = 1.0


def service_monitor_job() -> str:
    """The job the chart's ServiceMonitor gives the operator's metrics (its jobLabel's Service label)."""
    return str(yaml.safe_load((CHART / "values.yaml").read_text())["serviceMonitor"]["job"])


def operator_scrape_config(port: int) -> dict[str, Any]:
    # Prometheus Operator's scrape job name, and `job` set by relabelling from the Service's label.
    return {"job_name": f"serviceMonitor/{OPERATOR_NAMESPACE}/celery-operator/0", "honor_labels": True,
            "relabel_configs": [{"target_label": "job", "replacement": service_monitor_job()}],
            "metrics_path": "/metrics",
            "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                "labels": {"namespace": OPERATOR_NAMESPACE, "service": "celery-operator-metrics",
                                           "endpoint": "metrics"}}]}


def at(prom: Prometheus, moment: float) -> tuple[grafana.Query, grafana.Series]:
    def query(expr: str) -> list[dict[str, Any]]:
        data = prom.api("query", query=expr, time=str(moment))
        return list(data["result"]) if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def series(selector: str) -> list[dict[str, str]]:
        return list(prom.api("series", **{"match[]": selector, "start": str(moment - 3600), "end": str(moment)}))

    return query, series


def empty_panels(prom: Prometheus, dashboard: dict[str, Any], moment: float) -> list[str]:
    query, series = at(prom, moment)
    out = []
    for p in grafana.resolved_queries(dashboard, query, series, SCRAPE_INTERVAL_S):
        result = query(p.expr)
        if not result or all(math.isnan(float(r["value"][1])) for r in result):
            out.append(f"{p.title}: {p.expr}")
    return out


def test_every_query_of_the_charts_dashboard_returns_data_after_a_producer_ran(
        cluster: Cluster, namespace: str, tmp_path: Path, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost, backend_db: RedisDb, pod_monitor_crd: None,  # noqa: F811
        prometheus_factory: PrometheusFactory) -> None:
    cp, ns = cluster.control_plane, namespace
    op = start_sample_app(cp, ns, operator_factory, images.sample_tasks, broker_vhost.url,
                          broker_vhost.management_url, backend_db.url)
    env = sample_client_env(cp, ns, tmp_path, broker_vhost.url, backend_db.url)
    # The low pool scales up from zero for a task on low_queue: a scale event, and a pod of every pool.
    celery_call(cluster, env, "add-low")
    wait_pods_ready(cp, ns, pool_selector("proj", "low"), 1, 60)

    pod_monitor = wait_for(lambda: get(cp, ns, api.POD_MONITOR_PLURAL, "proj-celery"), 60, "the PodMonitor")
    prom = prometheus_factory([], scrape_configs=[scrape_config_of(pod_monitor, cp), operator_scrape_config(op.port)])
    prom.wait_for(f'up{{job="celery", namespace="{ns}"}} == 1', timeout=60)
    # Scrapes of everything before the work, so rate() has a before.
    wait_for(lambda: prom.query("min(count_over_time(up[10s])) >= 3"), 30, "three scrapes of every target")

    # The revoke first: its call waits out its 10 s for replies, and every panel's rate window (16 s) must
    # still hold the tasks that end after it.
    celery_call(cluster, env, "revoked")
    produced = celery_call(cluster, env, "tasks:100:10")
    assert produced["states"] == {"SUCCESS": 100, "FAILURE": 10}
    # A change to the app is reconciled: the operator's reconcile panels have a recent one.
    cp.kubectl("annotate", "--overwrite", "celeryapp", "proj", "-n", ns, f"example.com/touched={time.time()}")
    wait_for(lambda: prom.query("sum(increase(celery_operator_reconcile_duration_seconds_count[5s])) > 0"), 30,
             "a reconcile of the annotated app")
    # Every target scraped after the last result: the moment the queries are evaluated at.
    done = time.time()
    wait_for(lambda: prom.query(f"min(timestamp(up)) > {done + 1}"), 30, "a scrape of every target after the work")
    moment = done + 2

    dashboard = json.loads(DASHBOARD.read_text())
    panels = grafana.queries(dashboard)
    assert len(panels) >= 30
    # The queue metrics come under the job the worker metrics have (celery-mixin selects both by job).
    query, _ = at(prom, moment)
    assert {r["metric"]["job"] for r in query(f'celery_queue_length{{namespace="{ns}"}}')} == {
        r["metric"]["job"] for r in query(f'celery_worker_up{{namespace="{ns}"}}')} == {"celery"}
    empty = empty_panels(prom, dashboard, moment)
    assert empty == [], "panels without data:\n" + "\n".join(empty)
