"""The sources of the modules workers and beat load: the bootstrap (`celery -A`), its metrics, beat's
scheduler (`celery beat -S`) and the schedule module beat shares with the operator.

The first three are package data files (`data/*.py.txt`) so they can be read, shipped in the ConfigMap
and run in the user's image, where this package is not installed. Their constants are filled in
from `celery_operator.api` and `celery_operator.metrics` here, so each fact still has one source.
The schedule module is `celery_operator/schedule.py` itself, shipped verbatim (it imports nothing
but the standard library), so beat and the operator run the same code.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from celery_operator import api, metrics, schedule

# ConfigMap key (the module's file name) -> template.
TEMPLATES = {
    api.BOOTSTRAP_FILE: "celery_operator_app.py.txt",
    api.METRICS_FILE: "celery_operator_metrics.py.txt",
    api.BEAT_FILE: "celery_operator_beat.py.txt",
}
# ConfigMap key -> a module of this package shipped as it is.
VERBATIM = {api.SCHEDULE_FILE: "schedule.py"}


def _worker_metrics() -> str:
    """The metrics module's table: role -> (name, type, help, label names), as a Python literal."""
    rows = (f"    {m.role!r}: ({m.name!r}, {m.type!r},\n        {m.help!r},\n        {m.labels!r}),"
            for m in metrics.WORKER_METRICS)
    return "{\n" + "\n".join(rows) + "\n}"


_PLACEHOLDERS = {
    "BEAT_SCHEDULER": api.BEAT_SCHEDULER,
    "BOOTSTRAP_MODULE": api.BOOTSTRAP_MODULE,
    "CONFIG_BEAT_ENTRIES_KEY": api.CONFIG_BEAT_ENTRIES_KEY,
    "CONFIG_JSON_KEY": api.CONFIG_JSON_KEY,
    "CONFIG_METRICS_LABELS_KEY": api.CONFIG_METRICS_LABELS_KEY,
    "CONFIG_MOUNT_PATH": api.CONFIG_MOUNT_PATH,
    "ENV_APP": api.ENV_APP,
    "ENV_BEAT_LEASE": api.ENV_BEAT_LEASE,
    "ENV_BEAT_STATE": api.ENV_BEAT_STATE,
    "ENV_BROKER_URL": api.ENV_BROKER_URL,
    "ENV_CONFIG_DIR": api.ENV_CONFIG_DIR,
    "ENV_HEARTBEAT_FILE": api.ENV_HEARTBEAT_FILE,
    "ENV_REMAP_SIGTERM": api.ENV_REMAP_SIGTERM,
    "ENV_METRICS_PORT": api.ENV_METRICS_PORT,
    "ENV_NAMESPACE": api.ENV_NAMESPACE,
    "ENV_POD_NAME": api.ENV_POD_NAME,
    "ENV_POOL": api.ENV_POOL,
    "ENV_PROMETHEUS_MULTIPROC_DIR": api.ENV_PROMETHEUS_MULTIPROC_DIR,
    "ENV_RESULT_BACKEND": api.ENV_RESULT_BACKEND,
    "ENV_SERVICE_ACCOUNT_DIR": api.ENV_SERVICE_ACCOUNT_DIR,
    "ENV_SOFT_SHUTDOWN_TIMEOUT": api.ENV_SOFT_SHUTDOWN_TIMEOUT,
    "HEARTBEAT_FILE": api.HEARTBEAT_FILE,
    "LEASE_SECONDS": str(api.BEAT_LEASE_SECONDS),
    "METRICS_MODULE": api.METRICS_MODULE,
    "METRICS_PORT": str(api.METRICS_PORT),
    "RENEW_DEADLINE_SECONDS": str(api.BEAT_RENEW_DEADLINE_SECONDS),
    "RETRY_SECONDS": str(api.BEAT_RETRY_SECONDS),
    "SCHEDULED_TIME_HEADER": api.BEAT_SCHEDULED_TIME_HEADER,
    "SCHEDULE_MODULE": api.SCHEDULE_MODULE,
    "SERVICE_ACCOUNT_DIR": api.SERVICE_ACCOUNT_DIR,
    "STATE_KEY": schedule.STATE_KEY,
    "TASK_RUNTIME_BUCKETS": repr(metrics.TASK_RUNTIME_BUCKETS),
    "WORKER_METRICS": _worker_metrics(),
}


def _fill(template: str) -> str:
    text = resources.files("celery_operator").joinpath("data", template).read_text(encoding="utf-8")
    for key, value in _PLACEHOLDERS.items():
        text = text.replace(f"@@{key}@@", value)
    if "@@" in text:
        raise ValueError(f"{template} has a placeholder with no value")
    return text


@cache
def module_sources() -> dict[str, str]:
    """ConfigMap key -> Python source of every module the ConfigMap ships (the bootstrap first)."""
    package = resources.files("celery_operator")
    return {**{key: _fill(template) for key, template in TEMPLATES.items()},
            **{key: package.joinpath(path).read_text(encoding="utf-8") for key, path in VERBATIM.items()}}


def bootstrap_source() -> str:
    """The bootstrap module's Python source, as written into the ConfigMap."""
    return module_sources()[api.BOOTSTRAP_FILE]
