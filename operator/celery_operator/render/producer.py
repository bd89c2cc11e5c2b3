"""What a producer needs to route tasks exactly like the app's workers.

A producer is any process that sends tasks (a web Deployment, a cron job) in an image that has
Celery and the app's module (`spec.app`). It gets the generated config the same way workers do:
the app's ConfigMap mounted at `api.CONFIG_MOUNT_PATH`, on `PYTHONPATH`, and the bootstrap
module's environment (broker and result-backend URLs from their Secrets, the app to load). Its code
then does `from celery_operator_app import app` and sends tasks by name: the generated
`task_routes`, queues and exchanges route them as the CeleryQueues' `tasks` say.

`producer_patch` is that wiring as a strategic-merge patch of a Deployment (`celery-operator
producer-patch` prints it; `kubectl patch deployment NAME --patch-file`, or a Kustomize patch).
"""

from __future__ import annotations

from celery_operator import api
from celery_operator.models import Body, CeleryApp
from celery_operator.render import broker, pod


def env(app: CeleryApp) -> list[Body]:
    """The bootstrap module's environment; PYTHONPATH makes `import celery_operator_app` work (an
    image that sets its own PYTHONPATH should append it: `/etc/celery-operator:<its own>`)."""
    out = [pod.secret_env(api.ENV_BROKER_URL, broker.broker_url_ref(app))]
    backend = broker.result_backend_url_ref(app)
    if backend is not None:
        out.append(pod.secret_env(api.ENV_RESULT_BACKEND, backend))
    return [*out, {"name": api.ENV_APP, "value": app.app}, {"name": "PYTHONPATH", "value": api.CONFIG_MOUNT_PATH}]


def producer_patch(app: CeleryApp, container: str) -> Body:
    """A strategic-merge patch that wires one container of a Deployment as a producer of `app`."""
    return {"spec": {"template": {"spec": {
        "volumes": [pod.config_volume(app.meta.name)],
        "containers": [{"name": container, "env": env(app), "volumeMounts": [pod.config_mount()]}],
    }}}}
