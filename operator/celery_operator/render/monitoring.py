"""The app's PodMonitor `<app>-celery` (Prometheus Operator): scrape its worker and beat pods.

Rendered only when the cluster serves the PodMonitor kind (the controller decides). Scrape
targets get `job="celery"` (the pods' `app.kubernetes.io/name`), which celery-mixin's default
selector `job=~".*celery.*"` matches. `honorLabels` keeps the `namespace` label the pods put on
their metrics instead of renaming it `exported_namespace` (the two are equal for these pods).
"""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.models import Body
from celery_operator.render import labels as lbl
from celery_operator.render import names
from celery_operator.topology import Topology

SCRAPED_COMPONENTS = (api.COMPONENT_WORKER, api.COMPONENT_BEAT)


def pod_monitor(topology: Topology, owner: dict[str, Any] | None) -> Body:
    app_name = topology.app.meta.name
    name = names.pod_monitor(app_name)
    return {
        "apiVersion": api.MONITORING_API_VERSION, "kind": api.POD_MONITOR,
        "metadata": lbl.metadata(name, topology.app.meta.namespace,
                                 lbl.labels(app_name, api.COMPONENT_METRICS, instance=name), owner),
        "spec": {
            "jobLabel": api.LABEL_NAME,
            "selector": {
                "matchLabels": {api.LABEL_APP: app_name, api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
                "matchExpressions": [{"key": api.LABEL_COMPONENT, "operator": "In",
                                      "values": list(SCRAPED_COMPONENTS)}],
            },
            "podMetricsEndpoints": [{"port": api.METRICS_PORT_NAME, "path": api.METRICS_PATH,
                                     "honorLabels": True}],
        },
    }
