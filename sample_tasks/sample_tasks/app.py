"""The Celery app factory and the module-level app ``celery -A sample_tasks.app`` finds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

APP_NAME = "sample_tasks"
TASKS_MODULE = "sample_tasks.tasks"


def create_app(config: Mapping[str, Any] | None = None) -> Celery:
    """Build the app; ``config`` (Celery setting names) overrides the defaults below.

    No broker or backend is set here: unless ``config`` names them, Celery takes them from
    ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` in the environment, as the operator provides.
    """
    app = Celery(APP_NAME)
    app.conf.update(
        imports=[TASKS_MODULE],
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    if config:
        app.conf.update(dict(config))
    return app


app = create_app()
