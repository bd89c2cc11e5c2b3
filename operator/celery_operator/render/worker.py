"""One worker Deployment per CeleryWorkerPool, named `<app>-<pool>` (see `names.worker`).

Startup and readiness are a file age check, not `celery inspect ping` (which costs a broker round trip
and a Celery app boot per probe): the bootstrap module touches `api.HEARTBEAT_FILE` on `worker_ready`
and on every `heartbeat_sent` (about every 2 s, from the worker's main loop, events on or off).
A `solo` pool runs tasks in that loop, so its heartbeat may stall for a whole task: its allowed
age is stretched to cover the pool's time limit. Liveness is the runtime's probe module
(`celery_operator_probe`): the same age, plus a consumer connection silent for `stuckAfterSeconds` or
free slots idle that long beside ready messages, each judged only while a fresh broker connection works.
Where the pool runs tasks in real threads or processes, the worker answers these probes over HTTP itself
(`api.HEALTH_PORT`; `/readyz` and `/livez`, the same checks): an exec probe costs a container exec and a
Python start each period, which made the probes most of an idle worker pod's CPU. gevent and eventlet
(`api.EXEC_PROBE_POOLS`) keep the exec probes, since a thread there is a greenlet a busy task starves.

Warm shutdown: Celery's own on SIGTERM waits for running tasks with no bound, so a task longer than
the grace period is killed mid-run by SIGKILL. Prefork workers get `api.ENV_SOFT_SHUTDOWN_TIMEOUT`
= the grace period less a margin (`soft_shutdown_timeout`); the bootstrap module makes it Celery's
soft shutdown (Celery 5.5+): tasks get that long to finish, then the rest are cancelled and their
messages requeued (with acks_late: on RabbitMQ when the connection closes, on Redis by kombu's
restore of unacked messages) while the pod still lives. Other pools cannot cancel a running task
(threads, solo) or block in the signal handler (gevent, eventlet): they keep the warm shutdown.
"""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.models import Body, CeleryWorkerPool, SecretKeyRef
from celery_operator.render import labels as lbl
from celery_operator.render import names, pod
from celery_operator.topology import Topology

CONTAINER = "worker"
SOLO_DEFAULT_TASK_SECONDS = 3600
# Seconds kept between the soft shutdown's end and the kubelet's SIGKILL, to cancel, requeue, exit: a
# fifth of the grace period, 3 to 10 s (a loaded node took 2.6 s to cancel one task and exit).
SOFT_SHUTDOWN_MARGIN_MIN_SECONDS = 3
SOFT_SHUTDOWN_MARGIN_MAX_SECONDS = 10


def soft_shutdown_timeout(pool: CeleryWorkerPool) -> int | None:
    """Seconds running tasks get after SIGTERM: the grace period less a fifth of it (3 to 10 s).
    None for pools without a soft shutdown (only prefork can cancel a running task)."""
    if pool.pool != "prefork":
        return None
    grace = pool.termination_grace_period_seconds
    margin = max(SOFT_SHUTDOWN_MARGIN_MIN_SECONDS, min(SOFT_SHUTDOWN_MARGIN_MAX_SECONDS, grace // 5))
    return max(0, grace - margin)


def heartbeat_max_age(pool: CeleryWorkerPool) -> int:
    if pool.pool != "solo":
        return api.HEARTBEAT_MAX_AGE_SECONDS
    longest = pool.time_limit_seconds or pool.soft_time_limit_seconds or SOLO_DEFAULT_TASK_SECONDS
    return max(api.HEARTBEAT_MAX_AGE_SECONDS, longest + api.HEARTBEAT_MAX_AGE_SECONDS)


def heartbeat_check(max_age_seconds: int, path: str = api.HEARTBEAT_FILE) -> list[str]:
    """Exec probe command: exits non-zero when the heartbeat file is missing or too old."""
    script = (f"import os,sys,time; "
              f"sys.exit(time.time() - os.path.getmtime({path!r}) > {max_age_seconds})")
    return ["python3", "-c", script]


def liveness_check(pool: CeleryWorkerPool) -> list[str]:
    """Exec liveness probe: the runtime's probe module (no Celery app boot; a broker connection only when the
    worker's own state looks stuck), restarting a worker that stopped consuming while its broker answers."""
    return ["python3", "-m", api.PROBE_MODULE, "--stuck-after", str(pool.stuck_after_seconds),
            "--max-age", str(heartbeat_max_age(pool))]


def http_probes(pool: CeleryWorkerPool) -> bool:
    """Whether the pool's workers answer their probes over HTTP (else: exec probes)."""
    return pool.pool not in api.EXEC_PROBE_POOLS


def probes(pool: CeleryWorkerPool) -> dict[str, Body]:
    """The worker container's startup, liveness and readiness probes. Startup and readiness: the heartbeat
    file's age; liveness: the stuck-worker probe. Over HTTP, startup asks every 2 s (a pod is Ready about
    when its worker is, and a probe costs next to nothing), within the same 300 s."""
    max_age = heartbeat_max_age(pool)
    if http_probes(pool):
        def get(path: str) -> Body:
            return {"httpGet": {"path": path, "port": api.HEALTH_PORT_NAME}}
        ready = get(f"{api.READY_PATH}?maxAge={max_age}")
        live = get(f"{api.LIVE_PATH}?stuckAfter={pool.stuck_after_seconds}&maxAge={max_age}")
        startup = {**ready, "periodSeconds": 2, "failureThreshold": 150}
    else:
        ready = {"exec": {"command": heartbeat_check(max_age)}}
        live = {"exec": {"command": liveness_check(pool)}}
        startup = {**ready, "periodSeconds": 10, "failureThreshold": 30}
    return {"startupProbe": {**startup, "timeoutSeconds": 10},
            # The fresh broker connection's connect and read timeouts (3 s each) fit in the probe's.
            "livenessProbe": {**live, "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 3},
            "readinessProbe": {**ready, "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 2}}


def metrics_env(pool: CeleryWorkerPool) -> list[Body]:
    """The `pool` label of the pod's task metrics; with prefork, prometheus_client's multiprocess
    directory (children write their values there, the main process serves their sum)."""
    env = [{"name": api.ENV_POOL, "value": pool.meta.name},
           {"name": api.ENV_MAX_WORKER_DEATHS, "value": str(pool.max_worker_deaths)}]  # poison tasks
    if pool.pool == "prefork":
        env.append({"name": api.ENV_PROMETHEUS_MULTIPROC_DIR, "value": api.METRICS_MULTIPROC_DIR})
    return env


def node_name(pool: str, hostname: str) -> str:
    """A worker's Celery node name (`-n`): `<pool>@<hostname>`; in a pod the hostname is the pod's, so
    Celery's remote control replies (keyed by node name) map to pods."""
    return f"{pool}@{hostname}"


def worker_command(topology: Topology, pool: CeleryWorkerPool) -> list[str]:
    cmd = ["celery", "-A", api.BOOTSTRAP_MODULE, "worker",
           "-Q", ",".join(topology.pool_queues(pool)),
           "-n", node_name(pool.meta.name, "%h"),
           "--pool", pool.pool,
           "--concurrency", str(pool.concurrency),
           "--prefetch-multiplier", str(pool.prefetch_multiplier),
           "--loglevel", "INFO",
           "--without-gossip", "--without-mingle"]
    optional = [
        ("--max-tasks-per-child", pool.max_tasks_per_child),
        ("--max-memory-per-child", pool.max_memory_per_child_kib),
        ("--time-limit", pool.time_limit_seconds),
        ("--soft-time-limit", pool.soft_time_limit_seconds),
    ]
    for flag, value in optional:
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(pool.extra_args)


def deployment(topology: Topology, pool: CeleryWorkerPool, broker_ref: SecretKeyRef,
               backend_ref: SecretKeyRef | None, config_hash: str, owner: dict[str, Any] | None,
               replicas: int | None) -> Body:
    """The pool's worker Deployment. `replicas=None` leaves `spec.replicas` unset (not owned)."""
    app = topology.app
    app_name, ns = app.meta.name, app.meta.namespace
    name = names.worker(app_name, pool.meta.name)
    own = lbl.labels(app_name, api.COMPONENT_WORKER, instance=name, pool=pool.meta.name)
    template = pod.merge_templates(app.pod_template, pool.pod_template)
    operator_env = metrics_env(pool)
    if http_probes(pool):
        operator_env.append({"name": api.ENV_HEALTH_PORT, "value": str(api.HEALTH_PORT)})
    soft = soft_shutdown_timeout(pool)
    if soft is not None:
        operator_env.append({"name": api.ENV_SOFT_SHUTDOWN_TIMEOUT, "value": str(soft)})
    env = pod.celery_env(topology, broker_ref, backend_ref, pool.env, operator_env)
    container = pod.celery_container(
        topology, CONTAINER, pool.image or app.image, worker_command(topology, pool), env, template,
        pool.resources)
    if http_probes(pool):
        container["ports"] = [*container["ports"], {"name": api.HEALTH_PORT_NAME, "containerPort": api.HEALTH_PORT,
                                                    "protocol": "TCP"}]
    container.update(probes(pool))
    spec: Body = {
        "selector": {"matchLabels": lbl.selector(app_name, api.COMPONENT_WORKER, pool=pool.meta.name)},
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": pod.template_metadata(own, template, {api.ANNOTATION_CONFIG_HASH: config_hash,
                                                              **pod.METRICS_ANNOTATIONS}),
            "spec": pod.pod_spec(topology, container, template, pool.termination_grace_period_seconds),
        },
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": lbl.metadata(name, ns, own, owner), "spec": spec}
