"""The seed scenario: the sample topology runs for real, on RabbitMQ and on Redis, in pods on the node, on
two images of the sample app with different Pythons (Debian's DEBIAN_SUITE and DEBIAN_SUITE_NEWER)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.procs import read_versions
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    celery_call,
    get,
    pod_logs,
    pod_names,
    pool_selector,
    sample_client_env,
    start_sample_app,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# Debian's python3 of each release the images are built on: the pods must run it (checked in the pod).
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
IMAGES = {"python-of-" + read_versions()["DEBIAN_SUITE"]: ("sample_tasks", "DEBIAN_SUITE"),
          "python-of-" + read_versions()["DEBIAN_SUITE_NEWER"]: ("sample_tasks_newer", "DEBIAN_SUITE_NEWER")}


@pytest.fixture(params=list(IMAGES))
def sample_image(request: pytest.FixtureRequest, images: Images) -> tuple[str, str]:
    """The sample app's image for this run, and the Python minor its Debian release ships."""
    attr, suite_key = IMAGES[request.param]
    suite = read_versions()[suite_key]
    assert suite in DEBIAN_PYTHON, f"{suite_key}={suite}: add Debian {suite}'s python3 minor to DEBIAN_PYTHON"
    return str(getattr(images, attr)), DEBIAN_PYTHON[suite]


def _start_topology(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory,
                    image: str, broker_url: str, management_url: str, backend_url: str) -> None:
    start_sample_app(control_plane, namespace, operator_factory, image, broker_url, management_url, backend_url)
    for q in ("default", "high-queue", "low-queue"):
        wait_ready(control_plane, namespace, "celeryqueue", q, 60)


def _run_scenario(cluster: Cluster, namespace: str, tmp_path: Path, broker_url: str, backend_url: str,
                  python: str) -> None:
    cp = cluster.control_plane
    env = sample_client_env(cp, namespace, tmp_path, broker_url, backend_url, pools=("default",))
    # The pool's status mirrors its Deployment, whose one pod the kubelet reports ready.
    def one_ready() -> bool:
        status = (get(cp, namespace, "celeryworkerpool", "default") or {}).get("status") or {}
        return status.get("readyReplicas") == status.get("replicas") == 1

    wait_for(one_ready, 120, "the default pool's status: 1 of 1 replicas ready")
    [default] = wait_for(lambda: pod_names(cp, namespace, pool_selector("proj", "default"), ready_only=True), 60,
                         "the default pool's ready pod")
    ran = cp.kubectl("exec", "-n", namespace, default, "--", "python3", "-c",
                     "import platform; print(platform.python_version())").stdout.strip()
    assert ran.rsplit(".", 1)[0] == python, f"the worker runs Python {ran}, its image's Debian ships {python}"

    # The low pool autoscales from zero: a task waiting on low_queue wakes it (a pod to start on a busy node).
    r = celery_call(cluster, env, "add-low", timeout=300)
    assert r["result"] == 3
    wait_for(lambda: any(r["id"] in text for text in pod_logs_of_pool(cp, namespace, "low").values()), 30,
             "a pod of the low pool logged the task")
    assert r["id"] not in pod_logs(cp, namespace, default)

    r = celery_call(cluster, env, "add-default")
    assert r["result"] == 3
    wait_for(lambda: r["id"] in pod_logs(cp, namespace, default), 30, "the default pool's pod logged the task")
    assert not any(r["id"] in text for text in pod_logs_of_pool(cp, namespace, "low").values())


def pod_logs_of_pool(cp: ControlPlane, namespace: str, pool: str) -> dict[str, str]:
    return {p: pod_logs(cp, namespace, p) for p in pod_names(cp, namespace, pool_selector("proj", pool))}


def test_sample_topology_runs_on_rabbitmq(cluster: Cluster, namespace: str, tmp_path: Path,
                                          sample_image: tuple[str, str], operator_factory: OperatorFactory,
                                          broker_vhost: Vhost, backend_db: RedisDb) -> None:
    cp = cluster.control_plane
    image, python = sample_image
    _start_topology(cp, namespace, operator_factory, image, broker_vhost.url, broker_vhost.management_url,
                    backend_db.url)
    # The broker has what the CRs describe.
    server = broker_vhost.server
    from urllib.parse import quote

    vhost = quote(broker_vhost.name, safe="")
    exchanges = {e["name"]: e["type"] for e in server.api("GET", f"/api/exchanges/{vhost}")}
    assert exchanges.get("default") == "direct" and exchanges.get("task") == "direct"
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in server.api("GET", f"/api/bindings/{vhost}")}
    assert {("default", "default", "default"), ("task", "high_queue", "high_task"),
            ("task", "low_queue", "low_task")} <= bindings
    _run_scenario(cluster, namespace, tmp_path, broker_vhost.url, backend_db.url, python)


def test_sample_topology_runs_on_redis(cluster: Cluster, namespace: str, tmp_path: Path,
                                       sample_image: tuple[str, str], operator_factory: OperatorFactory,
                                       backend_db: RedisDb) -> None:
    image, python = sample_image
    _start_topology(cluster.control_plane, namespace, operator_factory, image, backend_db.url, "", backend_db.url)
    _run_scenario(cluster, namespace, tmp_path, backend_db.url, backend_db.url, python)
