"""The seed Celery app: tasks to exercise celery-operator (add, slow, fail, echo, scheduled).

Run a worker with ``celery -A sample_tasks.app worker``. Broker and result backend are never
hard-coded: the operator's bootstrap module applies its generated config with ``app.conf.update``
and sets ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``, which Celery itself reads.
"""

# Importing the package registers the tasks on every app, so clients (which, unlike a worker, do
# not import the `imports` setting's modules) find them in `app.tasks` too.
from sample_tasks import tasks
from sample_tasks.app import create_app

__all__ = ["create_app", "tasks"]
