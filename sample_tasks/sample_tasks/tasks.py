"""The sample tasks. ``shared_task`` binds them to every app ``create_app`` builds."""

from __future__ import annotations

import socket
import time
from typing import Any

from celery import Task, shared_task

RUNS_KEY = "sample-tasks:runs:{}"


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
