"""The sample tasks. ``shared_task`` binds them to every app ``create_app`` builds."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Task, shared_task
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)

RUNS_KEY = "sample-tasks:runs:{}"
# The message header celery-operator's beat puts the scheduled time of each run in (RFC 3339, UTC).
SCHEDULED_TIME_HEADER = "celery_operator_scheduled_time"


class SampleTaskError(RuntimeError):
    """What ``fail`` raises: a distinct type, so tests and alerts can tell it from real bugs."""


@shared_task(name="sample_tasks.tasks.add")
def add(x: float, y: float) -> float:
    return x + y


@shared_task(name="sample_tasks.tasks.slow")
def slow(seconds: float) -> float:
    """Sleep, to keep a worker busy (autoscaling and in-flight tests)."""
    time.sleep(seconds)
    return seconds


@shared_task(bind=True, name="sample_tasks.tasks.tracked")
def tracked(self: Task, seconds: float) -> str:
    """Like ``slow``, and records each run in the result backend's Redis when it has one: the list
    ``RUNS_KEY`` of the task id gets ``start:<hostname>`` then, if the run is not cut, ``end:<hostname>``,
    so tests and benchmarks count runs that were interrupted (a start without its end) and reruns."""
    client = getattr(self.backend, "client", None)
    key, host = RUNS_KEY.format(self.request.id), socket.gethostname()
    if client is not None:
        client.rpush(key, f"start:{host}")
    time.sleep(seconds)
    if client is not None:
        client.rpush(key, f"end:{host}")
    return host


@shared_task(name="sample_tasks.tasks.fail")
def fail(message: str) -> None:
    """Always raise, to produce failed tasks (alert tests)."""
    raise SampleTaskError(message)


@shared_task(name="sample_tasks.tasks.echo")
def echo(value: Any) -> Any:
    return value


@shared_task(bind=True, name="sample_tasks.tasks.scheduled")
def scheduled(self: Any, entry: str) -> str:
    """Log and return which run of a beat entry this is (its scheduled time, from beat's header), so
    runs can be counted per scheduled time."""
    request = self.request
    when = request.get(SCHEDULED_TIME_HEADER) or (getattr(request, "headers", None) or {}).get(SCHEDULED_TIME_HEADER)
    logger.info("scheduled run of %s at %s", entry, when)
    return f"{entry}@{when}"


# Poison tasks (celery-operator's maxWorkerDeaths): each kills the worker process running it until the pool
# sets FIXED_ENV to "1" (a pool env var: changing it rolls the pods), standing for the fix a user ships.
FIXED_ENV = "SAMPLE_TASKS_POISON_FIXED"


def _fixed() -> bool:
    return os.environ.get(FIXED_ENV) == "1"


@shared_task(name="sample_tasks.tasks.hog")
def hog(mebibytes: int) -> str:
    """Allocate `mebibytes` MiB and touch every page: past the container's memory limit the kernel's OOM
    killer ends the process (with prefork, the child; the container, when it is the only process)."""
    if _fixed():
        return "fixed"
    chunks = []
    for _ in range(mebibytes):
        chunks.append(bytearray(1024 * 1024))  # zero-filled: every page is written
    return f"allocated {len(chunks)} MiB"


@shared_task(name="sample_tasks.tasks.crash")
def crash(code: int = 1) -> str:
    """Leave the interpreter at once (`os._exit`): no exception, no cleanup, as a crash in a C extension."""
    if _fixed():
        return "fixed"
    os._exit(code)
