"""The sample tasks. ``shared_task`` binds them to every app ``create_app`` builds."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task


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


@shared_task(name="sample_tasks.tasks.fail")
def fail(message: str) -> None:
    """Always raise, to produce failed tasks (alert tests)."""
    raise SampleTaskError(message)


@shared_task(name="sample_tasks.tasks.echo")
def echo(value: Any) -> Any:
    return value
