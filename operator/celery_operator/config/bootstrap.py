"""The source of the bootstrap module workers and beat load with `celery -A`.

The source is a package data file (`data/celery_operator_app.py.txt`) so it can be read, shipped
in the ConfigMap and run in the user's image, where this package is not installed. Its constants
are filled in from `celery_operator.api` here, so each fact still has one source.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from celery_operator import api

TEMPLATE = "celery_operator_app.py.txt"

_PLACEHOLDERS = {
    "BOOTSTRAP_MODULE": api.BOOTSTRAP_MODULE,
    "CONFIG_JSON_KEY": api.CONFIG_JSON_KEY,
    "CONFIG_MOUNT_PATH": api.CONFIG_MOUNT_PATH,
    "ENV_APP": api.ENV_APP,
    "ENV_BROKER_URL": api.ENV_BROKER_URL,
    "ENV_CONFIG_DIR": api.ENV_CONFIG_DIR,
    "ENV_HEARTBEAT_FILE": api.ENV_HEARTBEAT_FILE,
    "ENV_REMAP_SIGTERM": api.ENV_REMAP_SIGTERM,
    "ENV_RESULT_BACKEND": api.ENV_RESULT_BACKEND,
    "ENV_SOFT_SHUTDOWN_TIMEOUT": api.ENV_SOFT_SHUTDOWN_TIMEOUT,
    "HEARTBEAT_FILE": api.HEARTBEAT_FILE,
}


@cache
def bootstrap_source() -> str:
    """The bootstrap module's Python source, as written into the ConfigMap."""
    text = resources.files("celery_operator").joinpath("data", TEMPLATE).read_text(encoding="utf-8")
    for key, value in _PLACEHOLDERS.items():
        text = text.replace(f"@@{key}@@", value)
    if "@@" in text:
        raise ValueError(f"{TEMPLATE} has a placeholder with no value")
    return text
