"""The app's single beat Deployment `<app>-beat`: one replica, Recreate, so two beats never overlap.

Beat keeps its schedule state in the /tmp emptyDir; a restarted beat starts a fresh schedule,
which at worst runs an entry one period late or early once. No liveness probe: beat has no cheap
health signal and a crashed beat exits (the container restarts).
"""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.models import Body, SecretKeyRef
from celery_operator.render import labels as lbl
from celery_operator.render import names, pod
from celery_operator.topology import Topology

CONTAINER = "beat"
SCHEDULE_FILE = f"{pod.TMP_PATH}/celerybeat-schedule"
TERMINATION_GRACE_PERIOD_SECONDS = 30


def beat_command() -> list[str]:
    return ["celery", "-A", api.BOOTSTRAP_MODULE, "beat", "--loglevel", "INFO",
            "--schedule", SCHEDULE_FILE]


def deployment(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None,
               config_hash: str, owner: dict[str, Any] | None) -> Body:
    app = topology.app
    app_name, ns = app.meta.name, app.meta.namespace
    name = names.beat(app_name)
    own = lbl.labels(app_name, api.COMPONENT_BEAT, instance=name)
    template = pod.merge_templates(app.pod_template)
    container = pod.celery_container(topology, CONTAINER, app.image, beat_command(),
                                     pod.celery_env(topology, broker_ref, backend_ref), template)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": lbl.metadata(name, ns, own, owner),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": lbl.selector(app_name, api.COMPONENT_BEAT)},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": pod.template_metadata(own, template,
                                                  {api.ANNOTATION_CONFIG_HASH: config_hash,
                                                   **pod.METRICS_ANNOTATIONS}),
                "spec": pod.pod_spec(topology, container, template, TERMINATION_GRACE_PERIOD_SECONDS),
            },
        },
    }
