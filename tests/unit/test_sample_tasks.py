"""The seed app: its tasks, and that broker and backend come only from configuration."""

from __future__ import annotations

import socket

import pytest
from celery import current_app

from sample_tasks import create_app, tasks
from sample_tasks.tasks import SampleTaskError


def test_tasks_compute_when_called_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tasks are shared: they run in the current app, which is whichever app a test built last (one
    # with a result backend in the environment, say). This test's own app has none.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    previous = current_app._get_current_object()
    create_app().set_current()
    try:
        assert tasks.add(1, 2) == 3
        assert tasks.echo({"a": [1]}) == {"a": [1]}
        assert tasks.slow(0.01) == 0.01
        assert tasks.tracked(0.01) == socket.gethostname()  # no result backend: nothing recorded
        with pytest.raises(SampleTaskError, match="boom"):
            tasks.fail("boom")
    finally:
        previous.set_current()


def test_every_app_the_factory_builds_knows_the_tasks_and_imports_them() -> None:
    app = create_app()
    assert {"sample_tasks.tasks.add", "sample_tasks.tasks.slow", "sample_tasks.tasks.fail",
            "sample_tasks.tasks.echo"} <= set(app.tasks)
    assert "sample_tasks.tasks" in app.conf.imports


def test_no_broker_or_backend_is_hard_coded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    app = create_app()
    assert app.conf.broker_url is None
    assert app.conf.result_backend is None


def test_celery_reads_broker_and_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://u:p@broker:5672/v")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://backend:6379/2")
    app = create_app()
    assert app.conf.broker_url == "amqp://u:p@broker:5672/v"
    assert app.conf.result_backend == "redis://backend:6379/2"


def test_config_given_to_the_factory_overrides_defaults() -> None:
    app = create_app({"task_default_queue": "jobs", "result_serializer": "msgpack"})
    assert app.conf.task_default_queue == "jobs"
    assert app.conf.result_serializer == "msgpack"


def test_a_scheduled_run_reports_the_time_beat_put_in_its_header() -> None:
    from celery_operator import api

    assert tasks.SCHEDULED_TIME_HEADER == api.BEAT_SCHEDULED_TIME_HEADER
    result = tasks.scheduled.apply(("tick",), headers={api.BEAT_SCHEDULED_TIME_HEADER: "2026-01-01T00:00:10Z"})
    assert result.get() == "tick@2026-01-01T00:00:10Z"
