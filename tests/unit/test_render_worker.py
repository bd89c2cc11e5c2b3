"""The worker Deployment of a pool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from celery_operator.config import celery_config, config_json, module_sources
from celery_operator.models import SecretKeyRef
from celery_operator.render import pod, worker
from celery_operator.render.labels import owner_reference
from celery_operator.topology import Topology
from tests.unit import crs

BROKER = SecretKeyRef("proj-broker", "url")
BACKEND = SecretKeyRef("proj-result-backend", "url")


def render(topology: Topology | None = None, pool_name: str = "high", replicas: int | None = 3,
           **kwargs: Any) -> dict[str, Any]:
    topo = topology or crs.seed()
    pool = next(p for p in topo.pools if p.meta.name == pool_name)
    return worker.deployment(topo, pool, BROKER, kwargs.get("backend", BACKEND), "abc123",
                             kwargs.get("owner"), replicas)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    [c] = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


def test_deployment_is_named_after_app_and_pool_with_labels_and_selector() -> None:
    dep = render()
    assert dep["kind"] == "Deployment"
    assert dep["metadata"]["name"] == "proj-high"
    assert dep["metadata"]["namespace"] == crs.NS
    assert dep["metadata"]["labels"] == {
        api.LABEL_NAME: "celery", api.LABEL_INSTANCE: "proj-high", api.LABEL_COMPONENT: "worker",
        api.LABEL_PART_OF: "proj", api.LABEL_MANAGED_BY: "celery-operator",
        api.LABEL_APP: "proj", api.LABEL_POOL: "high"}
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {api.LABEL_APP: "proj", api.LABEL_POOL: "high", api.LABEL_COMPONENT: "worker"}
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["replicas"] == 3


def test_replicas_none_leaves_the_field_unset() -> None:
    assert "replicas" not in render(replicas=None)["spec"]


def test_owner_given_becomes_the_controller_reference() -> None:
    topo = crs.seed()
    owner = owner_reference(api.POOL, topo.pools[1].meta)
    assert render(topo, owner=owner)["metadata"]["ownerReferences"] == [{
        "apiVersion": api.API_VERSION, "kind": api.POOL, "name": "high", "uid": crs.UID_PREFIX + "high",
        "controller": True, "blockOwnerDeletion": True}]
    assert "ownerReferences" not in render()["metadata"]


@pytest.mark.parametrize(
    ("spec", "tail"),
    [
        ({}, []),
        ({"maxTasksPerChild": 100, "maxMemoryPerChildKiB": 200000, "timeLimitSeconds": 60,
          "softTimeLimitSeconds": 50, "extraArgs": ["--without-heartbeat"]},
         ["--max-tasks-per-child", "100", "--max-memory-per-child", "200000", "--time-limit", "60",
          "--soft-time-limit", "50", "--without-heartbeat"]),
    ],
)
def test_command_consumes_the_pools_queues_with_its_settings(spec: dict[str, Any], tail: list[str]) -> None:
    topo = Topology.of(crs.app(), queues=[crs.queue("a"), crs.queue("b")],
                       pools=[crs.pool("p", ["a", "b", "ghost"], pool="threads", concurrency=8,
                                       prefetchMultiplier=4, **spec)])
    assert container(render(topo, "p"))["command"] == [
        "celery", "-A", api.BOOTSTRAP_MODULE, "worker", "-Q", "a,b", "-n", "p@%h", "--pool", "threads",
        "--concurrency", "8", "--prefetch-multiplier", "4", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", *tail]


def test_urls_come_from_secrets_never_literal() -> None:
    env = env_of(render())
    assert env[api.ENV_BROKER_URL] == {"secretKeyRef": {"name": "proj-broker", "key": "url"}}
    assert env[api.ENV_RESULT_BACKEND] == {"secretKeyRef": {"name": "proj-result-backend", "key": "url"}}
    assert env[api.ENV_APP] == "sample_tasks.app"
    assert env["PYTHONPATH"] == api.CONFIG_MOUNT_PATH
    assert api.ENV_RESULT_BACKEND not in env_of(render(backend=None))


@pytest.mark.parametrize(("grace", "timeout"), [(60, 50), (600, 590), (3600, 3590), (20, 16), (5, 2), (1, 0)])
def test_prefork_workers_get_a_soft_shutdown_that_ends_before_the_grace_period(grace: int, timeout: int) -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["celery"], terminationGracePeriodSeconds=grace,
                                                  env=[{"name": api.ENV_SOFT_SHUTDOWN_TIMEOUT, "value": "9999"}])])
    assert env_of(render(topo, "p"))[api.ENV_SOFT_SHUTDOWN_TIMEOUT] == str(timeout)


@pytest.mark.parametrize("pool", ["threads", "solo", "gevent", "eventlet"])
def test_pools_that_cannot_cancel_a_running_task_keep_celerys_warm_shutdown(pool: str) -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["celery"], pool=pool, concurrency=1)])
    assert api.ENV_SOFT_SHUTDOWN_TIMEOUT not in env_of(render(topo, "p"))


def test_pool_env_wins_over_app_env_and_user_cannot_replace_operator_env() -> None:
    topo = Topology.of(
        crs.app(env=[{"name": "A", "value": "app"}, {"name": "B", "value": "app"},
                     {"name": "PYTHONPATH", "value": "/src"},
                     {"name": api.ENV_BROKER_URL, "value": "amqp://literal"}],
                envFrom=[{"secretRef": {"name": "extra"}}]),
        pools=[crs.pool("p", ["celery"], env=[{"name": "B", "value": "pool"}, {"name": "C", "value": "pool"}])])
    dep = render(topo, "p")
    names = [e["name"] for e in container(dep)["env"]]
    assert len(names) == len(set(names))
    env = env_of(dep)
    assert (env["A"], env["B"], env["C"]) == ("app", "pool", "pool")
    assert env["PYTHONPATH"] == f"{api.CONFIG_MOUNT_PATH}:/src"
    assert env[api.ENV_BROKER_URL] == {"secretKeyRef": {"name": "proj-broker", "key": "url"}}
    assert container(dep)["envFrom"] == [{"secretRef": {"name": "extra"}}]


def test_worker_serves_metrics_on_the_named_port_with_scrape_annotations() -> None:
    dep = render()
    assert container(dep)["ports"][0] == {"name": "metrics", "containerPort": api.METRICS_PORT, "protocol": "TCP"}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(api.METRICS_PORT)
    assert annotations["prometheus.io/path"] == api.METRICS_PATH


@pytest.mark.parametrize(("pool_kind", "multiprocess"),
                         [("prefork", True), ("threads", False), ("solo", False), ("gevent", False)])
def test_worker_env_names_its_pool_and_gives_prefork_a_multiprocess_metrics_dir(
        pool_kind: str, multiprocess: bool) -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["celery"], pool=pool_kind,
                                                  **({"concurrency": 1} if pool_kind == "solo" else {}))])
    env = env_of(render(topo, "p"))
    assert env[api.ENV_POOL] == "p"
    assert env.get(api.ENV_PROMETHEUS_MULTIPROC_DIR) == (api.METRICS_MULTIPROC_DIR if multiprocess else None)
    assert api.METRICS_MULTIPROC_DIR.startswith(pod.TMP_PATH + "/")  # the writable emptyDir


def test_users_cannot_replace_the_metrics_env() -> None:
    topo = Topology.of(
        crs.app(env=[{"name": api.ENV_POOL, "value": "app"}, {"name": api.ENV_PROMETHEUS_MULTIPROC_DIR,
                                                               "value": "/elsewhere"}]),
        pools=[crs.pool("p", ["celery"], pool="threads", env=[{"name": api.ENV_POOL, "value": "pool"}])])
    dep = render(topo, "p")
    env = env_of(dep)
    assert env[api.ENV_POOL] == "p"
    assert api.ENV_PROMETHEUS_MULTIPROC_DIR not in env
    assert [e["name"] for e in container(dep)["env"]].count(api.ENV_POOL) == 1


def test_config_is_mounted_read_only_and_tmp_is_writable() -> None:
    dep = render()
    spec = dep["spec"]["template"]["spec"]
    assert {"name": "celery-config", "configMap": {"name": "proj-celery-config"}} in spec["volumes"]
    assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
    mounts = {m["mountPath"]: m for m in container(dep)["volumeMounts"]}
    assert mounts[api.CONFIG_MOUNT_PATH]["readOnly"] is True
    assert "/tmp" in mounts


def test_config_hash_annotation_rolls_pods() -> None:
    annotations = render()["spec"]["template"]["metadata"]["annotations"]
    assert annotations[api.ANNOTATION_CONFIG_HASH] == "abc123"


def test_restricted_security_by_default() -> None:
    dep = render()
    pod_sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(dep)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


def test_pod_templates_merge_app_then_pool() -> None:
    topo = Topology.of(
        crs.app(podTemplate={"labels": {"team": "a", "tier": "app"}, "annotations": {"x": "1"},
                             "nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "app"}],
                             "securityContext": {"runAsUser": 2000}, "serviceAccountName": "app-sa",
                             "containerSecurityContext": {"readOnlyRootFilesystem": False}}),
        pools=[crs.pool("p", ["celery"], podTemplate={
            "labels": {"tier": "pool", api.LABEL_POOL: "hijack"}, "nodeSelector": {"zone": "z1"},
            "tolerations": [{"key": "pool"}], "priorityClassName": "high",
            "annotations": {api.ANNOTATION_CONFIG_HASH: "user"}})])
    dep = render(topo, "p")
    tmpl = dep["spec"]["template"]
    spec = tmpl["spec"]
    assert tmpl["metadata"]["labels"]["team"] == "a"
    assert tmpl["metadata"]["labels"]["tier"] == "pool"
    assert tmpl["metadata"]["labels"][api.LABEL_POOL] == "p"
    assert tmpl["metadata"]["annotations"] == {"x": "1", api.ANNOTATION_CONFIG_HASH: "abc123",
                                               **pod.METRICS_ANNOTATIONS}
    assert spec["nodeSelector"] == {"disk": "ssd", "zone": "z1"}
    assert spec["tolerations"] == [{"key": "pool"}]
    assert spec["priorityClassName"] == "high"
    assert spec["serviceAccountName"] == "app-sa"
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsUser"] == 2000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container(dep)["securityContext"]["readOnlyRootFilesystem"] is False
    assert container(dep)["securityContext"]["allowPrivilegeEscalation"] is False


def test_image_resources_and_grace_period_come_from_the_pool() -> None:
    topo = Topology.of(crs.app(imagePullPolicy="Always"), pools=[crs.pool(
        "p", ["celery"], image="registry.local/other:2", terminationGracePeriodSeconds=600,
        resources={"requests": {"cpu": "100m"}})])
    dep = render(topo, "p")
    c = container(dep)
    assert (c["image"], c["imagePullPolicy"], c["resources"]) == (
        "registry.local/other:2", "Always", {"requests": {"cpu": "100m"}})
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600
    assert container(render())["image"] == "registry.local/proj:1"


@pytest.mark.parametrize("pool_kind", ["prefork", "threads", "solo"])
def test_pools_with_real_threads_answer_their_probes_over_http_on_the_health_port(pool_kind: str) -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["celery"], pool=pool_kind, stuckAfterSeconds=45)])
    c = container(render(topo, "p"))
    assert {"name": api.HEALTH_PORT_NAME, "containerPort": api.HEALTH_PORT, "protocol": "TCP"} in c["ports"]
    assert {"name": api.ENV_HEALTH_PORT, "value": str(api.HEALTH_PORT)} in c["env"]
    max_age = worker.heartbeat_max_age(topo.pools[0])
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": f"{api.READY_PATH}?maxAge={max_age}", "port": api.HEALTH_PORT_NAME}
    assert c["livenessProbe"]["httpGet"] == {"path": f"{api.LIVE_PATH}?stuckAfter=45&maxAge={max_age}",
                                             "port": api.HEALTH_PORT_NAME}
    assert c["livenessProbe"]["timeoutSeconds"] > 3 * 3  # the fresh broker connection's connect and read timeouts
    # Cheap now: startup asks often, within the same bound as the exec probe's 30 x 10 s.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] < 10
    assert startup["periodSeconds"] * startup["failureThreshold"] == 300


@pytest.mark.parametrize("pool_kind", api.EXEC_PROBE_POOLS)
def test_green_pools_keep_exec_probes_that_check_the_heartbeat_file_not_the_broker(pool_kind: str) -> None:
    topo = Topology.of(crs.app(), pools=[crs.pool("p", ["celery"], pool=pool_kind)])
    c = container(render(topo, "p"))
    assert api.HEALTH_PORT_NAME not in {p["name"] for p in c["ports"]}
    assert api.ENV_HEALTH_PORT not in {e["name"] for e in c["env"]}
    for probe in ("startupProbe", "readinessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[0] == "python3"
        assert api.HEARTBEAT_FILE in command[-1]
        assert "inspect" not in " ".join(command)
    assert c["livenessProbe"]["exec"]["command"] == worker.liveness_check(topo.pools[0])
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 300


@pytest.mark.parametrize(("spec", "stuck_after", "max_age"), [
    ({}, api.DEFAULT_STUCK_AFTER_SECONDS, api.HEARTBEAT_MAX_AGE_SECONDS),
    ({"stuckAfterSeconds": 45, "pool": "solo", "timeLimitSeconds": 600}, 45, 600 + api.HEARTBEAT_MAX_AGE_SECONDS),
])
def test_the_exec_liveness_probe_runs_the_stuck_worker_probe_with_the_pools_bound(
        spec: dict[str, Any], stuck_after: int, max_age: int) -> None:
    assert worker.liveness_check(crs.pool("p", ["celery"], **spec)) == [
        "python3", "-m", api.PROBE_MODULE, "--stuck-after", str(stuck_after), "--max-age", str(max_age)]


@pytest.mark.parametrize(
    ("pool", "limit", "max_age"),
    [("prefork", None, api.HEARTBEAT_MAX_AGE_SECONDS), ("solo", 600, 600 + api.HEARTBEAT_MAX_AGE_SECONDS),
     ("solo", None, 3600 + api.HEARTBEAT_MAX_AGE_SECONDS)],
)
def test_solo_pools_tolerate_a_stalled_heartbeat_for_a_whole_task(pool: str, limit: int | None,
                                                                  max_age: int) -> None:
    spec = {"timeLimitSeconds": limit} if limit else {}
    assert worker.heartbeat_max_age(crs.pool("p", ["celery"], pool=pool, **spec)) == max_age


@pytest.mark.parametrize(("age", "alive"), [(None, False), (5, True), (500, False)])
def test_heartbeat_probe_command_fails_on_missing_or_stale_file(tmp_path: Path, age: int | None,
                                                              alive: bool) -> None:
    path = tmp_path / "hb"
    if age is not None:
        path.touch()
        os.utime(path, (time.time() - age, time.time() - age))
    command = worker.heartbeat_check(120, str(path))
    assert (subprocess.run(command, check=False).returncode == 0) is alive


def test_rendered_command_runs_a_real_worker_that_keeps_the_heartbeat_fresh(tmp_path: Path) -> None:
    """The exact rendered command against an in-memory broker: flags valid, heartbeat touched."""
    topo = Topology.of(crs.seed().app, exchanges=crs.seed().exchanges, queues=crs.seed().queues,
                       pools=[crs.pool("solo", ["default", "high_queue"], pool="solo", concurrency=1,
                                       maxTasksPerChild=10, timeLimitSeconds=30, softTimeLimitSeconds=20)])
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / api.CONFIG_JSON_KEY).write_text(config_json(celery_config(topo)))
    for key, source in module_sources().items():
        (config_dir / key).write_text(source)
    heartbeat = tmp_path / "heartbeat"
    command = container(render(topo, "solo"))["command"]
    sample_tasks_root = Path(__file__).resolve().parents[2] / "sample_tasks"
    env = {**os.environ, "PYTHONPATH": f"{config_dir}:{sample_tasks_root}",
           api.ENV_CONFIG_DIR: str(config_dir), api.ENV_HEARTBEAT_FILE: str(heartbeat),
           api.ENV_APP: "sample_tasks.app", api.ENV_BROKER_URL: "memory://", api.ENV_METRICS_PORT: "0"}
    celery_bin = str(Path(sys.executable).with_name("celery"))
    proc = subprocess.Popen([celery_bin, *command[1:]], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not heartbeat.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert heartbeat.exists(), proc.stdout.read().decode() if proc.poll() is not None and proc.stdout else ""
        first = heartbeat.stat().st_mtime
        deadline = time.monotonic() + 15
        while heartbeat.stat().st_mtime == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert heartbeat.stat().st_mtime > first
    finally:
        proc.terminate()
        proc.wait(timeout=30)
