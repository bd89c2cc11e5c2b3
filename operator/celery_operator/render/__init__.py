"""Pure builders: a Topology in, the Kubernetes objects the operator creates for it out.

`render_all` lists every object of one app, in a fixed order (managed servers, ConfigMap, worker
Deployments, beat's objects, Flower's, and the PodMonitor when asked for); the operator applies these and
`celery-operator render` prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery_operator import api
from celery_operator.config import celery_config, config_hash
from celery_operator.models import Body, CeleryWorkerPool, Meta
from celery_operator.render import beat, broker, configmap, flower, monitoring, names, worker
from celery_operator.render.broker import SecretsContext
from celery_operator.render.labels import owner_reference
from celery_operator.topology import Topology

OwnerOf = Callable[[str, Meta], "dict[str, Any] | None"]  # (kind, meta) -> owner reference
ReplicasOf = Callable[[CeleryWorkerPool], "int | None"]


def initial_replicas(pool: CeleryWorkerPool) -> int:
    """Replicas of a pool before any autoscaling decision."""
    return pool.autoscaling.min_replicas if pool.autoscaling is not None else pool.replicas


def render_all(topology: Topology, secrets: SecretsContext, owner_of: OwnerOf = owner_reference,
               replicas_of: ReplicasOf = initial_replicas,
               broker_transport_options: dict[str, Any] | None = None, pod_monitor: bool = False,
               run_flower: bool = True) -> list[Body]:
    """Every object the operator creates for the app (children of pools owned by their pool);
    `pod_monitor`: with the PodMonitor scraping its pods (only where the cluster serves that kind);
    `run_flower`: False keeps Flower out even when enabled (`flower.problem` said it must not run)."""
    app = topology.app
    app_owner = owner_of(api.APP, app.meta)
    config = celery_config(topology, broker_transport_options)
    digest = config_hash(config)
    broker_ref = broker.broker_url_ref(app)
    backend_ref = broker.result_backend_url_ref(app)
    out = broker.managed_objects(app, secrets, app_owner)
    out.append(configmap.config_map(topology, app_owner, config))
    for pool in topology.effective_pools:
        out.append(worker.deployment(topology, pool, broker_ref, backend_ref, digest,
                                     owner_of(api.POOL, pool.meta), replicas_of(pool)))
    if topology.has_beat:
        out += beat.objects(topology, broker_ref, backend_ref, digest, app_owner)
    if app.flower.enabled and run_flower:
        out += flower.objects(topology, broker_ref, backend_ref, digest, app_owner)
    if pod_monitor:
        out.append(monitoring.pod_monitor(topology, app_owner))
    return out


__all__ = ["OwnerOf", "SecretsContext", "initial_replicas", "names", "owner_reference", "render_all"]
