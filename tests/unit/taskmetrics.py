"""Helpers to run the pods' metrics module in this process: a fresh copy of it, and a Celery app to run."""

from __future__ import annotations

import itertools
import os
from types import ModuleType

from celery import Celery
from celery.exceptions import Reject, Retry
from kombu import Exchange, Queue

from celery_operator import api
from celery_operator.config import module_sources

_counter = itertools.count()
ENV = (api.ENV_METRICS_PORT, api.ENV_POOL, api.ENV_PROMETHEUS_MULTIPROC_DIR)


def load_module(**env: str) -> ModuleType:
    """A fresh copy of the metrics module, imported with exactly `env` of the variables it reads."""
    saved = {k: os.environ.pop(k) for k in ENV if k in os.environ}
    os.environ.update(env)
    try:
        module = ModuleType(f"celery_operator_metrics_{next(_counter)}")
        exec(compile(module_sources()[api.METRICS_FILE], api.METRICS_FILE, "exec"), module.__dict__)
        return module
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def make_app() -> Celery:
    """An app on the in-memory broker with tasks that succeed, fail, retry and reject."""
    app = Celery(f"t{next(_counter)}", broker="memory://", set_as_current=False)
    app.conf.update(task_queues=[
        Queue("adds", Exchange("adds", "direct"), "adds"),
        Queue("events", Exchange("bus", "topic"), "orders.*.created"),
        Queue("all", Exchange("broadcast", "fanout")),
    ], task_default_queue="adds", task_store_eager_result=False)

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.fail", shared=False)
    def fail() -> None:
        raise KeyError("boom")

    @app.task(name="t.retry", shared=False)
    def retry() -> None:
        raise Retry("again")

    @app.task(name="t.reject", shared=False)
    def reject() -> None:
        raise Reject("no", requeue=False)

    return app
