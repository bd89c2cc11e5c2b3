"""The sources of the modules workers and beat load: the bootstrap (`celery -A`), its metrics, beat's
scheduler (`celery beat -S`) and the schedule module beat shares with the operator.

They are the files of `celery_operator/runtime/`, under the names the ConfigMap gives them and the pods
import them by, shipped verbatim: the ConfigMap carries exactly their source, and they run in the
user's image, where this package is not installed (see runtime/__init__.py for how they are checked).
`runtime/celery_operator_schedule.py` is a symlink to `celery_operator/schedule.py`, which the operator
imports, so beat and the operator run the same code. The names they share with the operator
(environment variables, config keys, ports, the metric table) are written in them; a unit test
checks each against `celery_operator.api` and `celery_operator.metrics`, so each fact still has one value.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from celery_operator import api

# ConfigMap keys (the modules' file names in runtime/), the bootstrap first.
RUNTIME_FILES = (api.BOOTSTRAP_FILE, api.METRICS_FILE, api.BEAT_FILE, api.SCHEDULE_FILE, api.POISON_FILE,
                 api.POISON_RULES_FILE, api.PROBE_FILE)


@cache
def module_sources() -> dict[str, str]:
    """ConfigMap key -> Python source of every module the ConfigMap ships (the bootstrap first)."""
    runtime = resources.files("celery_operator").joinpath("runtime")
    return {key: runtime.joinpath(key).read_text(encoding="utf-8") for key in RUNTIME_FILES}


def bootstrap_source() -> str:
    """The bootstrap module's Python source, as written into the ConfigMap."""
    return module_sources()[api.BOOTSTRAP_FILE]
