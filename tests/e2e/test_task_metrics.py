"""Task metrics end to end: a real Prometheus scrapes the worker pods the operator runs.

The local cluster serves Prometheus Operator's PodMonitor (the real CRD, an add-on: dev/addons/), so the
operator creates the app's PodMonitor; Prometheus (on the host, which reaches pod IPs) scrapes the
pods that PodMonitor selects, on the port it names, as Prometheus Operator would configure it.
100 adds and 10 failures must come back exactly, by task and pool.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from localenv import addons
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.prometheus import Prometheus
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    get,
    pod_names,
    pool_selector,
    secret,
    wait_for,
    wait_pods_ready,
    wait_ready,
)
from tests.fixtures.prometheus import PrometheusFactory
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADD, FAIL = "sample_tasks.tasks.add", "sample_tasks.tasks.fail"


@pytest.fixture
def pod_monitor_crd(control_plane: ControlPlane) -> None:
    """The cluster serves PodMonitors. The local cluster has the CRD from the start (an add-on: installing it
    under running tests would change what every test's operator renders); a cluster started by an older
    checkout (LOCALENV_REUSE) gets it here, and keeps it."""
    if not addons.crd_established(control_plane, addons.POD_MONITOR_CRD_NAME):
        addons.apply_pod_monitor_crd(control_plane)
        wait_for(lambda: addons.crd_established(control_plane, addons.POD_MONITOR_CRD_NAME), 60,
                 f"{addons.POD_MONITOR_CRD_NAME} Established")


def topology(image: str) -> list[dict[str, Any]]:
    def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}

    app_ref = {"appRef": {"name": "proj"}}
    return [
        doc(api.APP, "proj", {
            "image": image, "app": "sample_tasks.app", "defaultQueue": "adds",
            "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                    "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}},
            "resultBackend": {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}}),
        doc(api.QUEUE, "adds", {**app_ref, "tasks": [ADD]}),
        doc(api.QUEUE, "fails", {**app_ref, "tasks": [FAIL]}),
        doc(api.POOL, "adders", {**app_ref, "queues": ["adds"], "replicas": 2, "concurrency": 2}),
        doc(api.POOL, "failers", {**app_ref, "queues": ["fails"], "replicas": 1, "concurrency": 2}),
    ]


def selector_text(selector: dict[str, Any]) -> str:
    """A label selector's kubectl form (matchLabels and the In operator)."""
    parts = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        parts.append(f"{e['key']} in ({','.join(e['values'])})")
    return ",".join(parts)


def scrape_config_of(pod_monitor: dict[str, Any], cp: ControlPlane) -> dict[str, Any]:
    """The scrape job of a PodMonitor, for the pods it selects now: each pod's IP and the port its
    endpoint names, job from `jobLabel`, honor_labels, the target labels Prometheus Operator adds.

    Debian's Prometheus has no Kubernetes service discovery, so the targets are listed once, here;
    a pod that goes stops answering, and Prometheus marks the series of a failed scrape stale."""
    md, spec = pod_monitor["metadata"], pod_monitor["spec"]
    [endpoint] = spec["podMetricsEndpoints"]
    pods = json.loads(cp.kubectl("get", "pods", "-n", md["namespace"], "-l", selector_text(spec["selector"]),
                                 "-o", "json").stdout)["items"]
    groups, jobs = [], set()
    for pod in pods:
        [port] = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
                  if p.get("name") == endpoint["port"]]
        jobs.add(pod["metadata"]["labels"][spec["jobLabel"]])
        groups.append({"targets": [f"{pod['status']['podIP']}:{port}"],
                       "labels": {"namespace": md["namespace"], "pod": pod["metadata"]["name"]}})
    [job] = jobs
    return {"job_name": job, "honor_labels": endpoint["honorLabels"], "metrics_path": endpoint["path"],
            "scrape_interval": "1s", "scrape_timeout": "1s", "static_configs": groups}


def by(prom: Prometheus, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in prom.query(promql)}


def scraped_after(prom: Prometheus, namespace: str, moment: float, pods: int) -> bool:
    """Each of the `pods` targets has been scraped, successfully, since `moment` (a Unix time)."""
    last = by(prom, f'timestamp(up{{namespace="{namespace}"}} == 1)', "pod")
    return len(last) == pods and min(last.values()) > moment


def test_prometheus_counts_every_task_of_the_worker_pods_by_task_and_pool(
        cluster: Cluster, namespace: str, tmp_path: Path, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost, backend_db: RedisDb, pod_monitor_crd: None,
        prometheus_factory: PrometheusFactory) -> None:
    cp = cluster.control_plane
    secret(cp, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    secret(cp, namespace, "backend", url=backend_db.url)
    operator_factory("--namespace", namespace, "--no-leader-election")
    apply(cp, namespace, topology(images.sample_tasks))
    wait_ready(cp, namespace, "celeryapp", "proj", 90)
    wait_pods_ready(cp, namespace, pool_selector("proj", "adders"), 2, 180)
    wait_pods_ready(cp, namespace, pool_selector("proj", "failers"), 1, 180)

    # The operator made the app's PodMonitor (the CRD exists), valid under the real schema.
    pod_monitor = wait_for(lambda: get(cp, namespace, api.POD_MONITOR_PLURAL, "proj-celery"), 60, "the PodMonitor")
    prom = prometheus_factory([], scrape_configs=[scrape_config_of(pod_monitor, cp)])

    ns = f'namespace="{namespace}"'
    want_up = {("adders",): 2, ("failers",): 1}
    # Each pod is scraped in its own turn: await the last before reading them together.
    wait_for(lambda: by(prom, f"sum by (pool) (celery_worker_up{{{ns}}})", "pool") == want_up, 90,
             f"Prometheus to see workers up by pool: {want_up}")
    # One series per pod: Prometheus' instance and pod labels tell them apart; job is what celery-mixin selects.
    series = prom.query(f"celery_worker_up{{{ns}}}")
    assert {r["metric"]["pod"] for r in series} == set(pod_names(cp, namespace, f"{api.LABEL_APP}=proj"))
    assert {r["metric"]["job"] for r in series} == {"celery"}
    assert {r["metric"]["app"] for r in series} == {"proj"}

    cm = wait_for(lambda: get(cp, namespace, "configmap", "proj-celery-config"), 30, "ConfigMap")
    env = celery_client_env(tmp_path, cm, broker_vhost.url, backend_db.url)
    produced = celery_call(cluster, env, "tasks:100:10")
    assert produced["states"] == {"SUCCESS": 100, "FAILURE": 10}
    done = time.time()

    succeeded = f"sum by (name, pool) (celery_task_succeeded_total{{{ns}}})"
    failed = f"sum by (name, pool, exception) (celery_task_failed_total{{{ns}}} > 0)"
    want_succeeded = {(ADD, "adders"): 100, (FAIL, "failers"): 0}
    want_failed = {(FAIL, "failers", "SampleTaskError"): 10}
    wait_for(lambda: by(prom, succeeded, "name", "pool") == want_succeeded
             and by(prom, failed, "name", "pool", "exception") == want_failed, 60,
             f"Prometheus to have {want_succeeded} and {want_failed}")
    # Exactly those, still, once every pod has been scraped again after all results were in.
    wait_for(lambda: scraped_after(prom, namespace, done + 1, pods=3), 30, "a scrape of every pod after the run")
    assert by(prom, succeeded, "name", "pool") == want_succeeded
    assert by(prom, failed, "name", "pool", "exception") == want_failed
    assert by(prom, f"sum by (name, pool) (celery_task_received_total{{{ns}}})", "name", "pool") == {
        (ADD, "adders"): 100, (FAIL, "failers"): 10}
    assert by(prom, f"sum by (name, pool) (celery_task_runtime_count{{{ns}}})", "name", "pool") == {
        (ADD, "adders"): 100, (FAIL, "failers"): 10}
    assert by(prom, f"sum(celery_task_runtime_count{{{ns}}})") == {(): 110}
    assert by(prom, f'sum(celery_task_runtime_bucket{{{ns}, le="+Inf"}})') == {(): 110}
    assert by(prom, f"sum by (queue_name) (celery_task_received_total{{{ns}}})", "queue_name") == {
        ("adds",): 100, ("fails",): 10}
    # What celery-mixin's dashboards select (README): its default job selector, its worker count, its
    # variables' labels (namespace and job from celery_worker_up, queue_name and name from received).
    mixin = f'job=~".*celery.*", {ns}'
    assert by(prom, f"count(celery_worker_up{{{mixin}}} == 1)") == {(): 3}
    assert set(by(prom, f'celery_task_received_total{{{mixin}, queue_name!~"None"}}', "queue_name", "name")) == {
        ("adds", ADD), ("fails", FAIL)}
    assert by(prom, f"sum by (exception) (celery_task_failed_total{{{mixin}}}) > 0", "exception") == {
        ("SampleTaskError",): 10}

    # A pod that goes takes its celery_worker_up with it.
    cp.kubectl("patch", "celeryworkerpool", "adders", "-n", namespace, "--type=merge",
               "-p", json.dumps({"spec": {"replicas": 1}}))
    prom.wait_for(f'sum(celery_worker_up{{{ns}, pool="adders"}}) == 1', timeout=120)
    wait_for(lambda: len(pod_names(cp, namespace, pool_selector("proj", "adders"))) == 1, 120, "one adders pod")
    assert by(prom, f"sum by (pool) (celery_worker_up{{{ns}}})", "pool") == {("adders",): 1, ("failers",): 1}
