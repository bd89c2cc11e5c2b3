"""The app's beat: a Deployment `<app>-beat` of one pod, and what its scheduler needs to send each run once.

Beat runs `celery beat -S celery_operator_beat:Scheduler` (the scheduler module the ConfigMap ships):
- its state (per entry: last run, latest run decided, skipped runs) is the ConfigMap `<app>-beat-state`,
  which beat patches with compare-and-swap writes, claiming each run before it sends it;
- the Lease `<app>-beat` elects the one beat that sends (client-go's timing);
- the ServiceAccount `<app>-beat` (unless the app's podTemplate names one) is bound by the Role
  `<app>-beat` to exactly that: get/patch on that ConfigMap, get/update on that Lease (rbac.BEAT).
The operator creates the ConfigMap (labels only: its data is beat's) and the Lease (no spec: beat's), so
beat needs no `create` permission, and reads the state back through its ConfigMap informer.

`Recreate` and one replica keep rollouts from overlapping; the Lease covers what they cannot (a deleted
pod's replacement starting while it terminates, a node that stops answering). No liveness probe: beat
has no cheap health signal, and a crashed beat exits (the container restarts).
"""

from __future__ import annotations

from typing import Any

from celery_operator import api, rbac
from celery_operator.models import Body, SecretKeyRef
from celery_operator.render import labels as lbl
from celery_operator.render import names, pod
from celery_operator.topology import Topology

CONTAINER = "beat"
TERMINATION_GRACE_PERIOD_SECONDS = 30
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"


def beat_command() -> list[str]:
    return ["celery", "-A", api.BOOTSTRAP_MODULE, "beat", "--loglevel", "INFO", "--scheduler", api.BEAT_SCHEDULER]


def service_account(topology: Topology) -> str:
    """The ServiceAccount beat runs as: the app's podTemplate's, else the operator's `<app>-beat`."""
    return pod.merge_templates(topology.app.pod_template).service_account_name or names.beat(topology.app.meta.name)


def beat_env(app_name: str) -> list[Body]:
    """Where beat's scheduler finds its state and its Lease, and who it is."""
    return [{"name": api.ENV_BEAT_STATE, "value": names.beat_state(app_name)},
            {"name": api.ENV_BEAT_LEASE, "value": names.beat(app_name)},
            {"name": api.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": api.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def deployment(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None,
               config_hash: str, owner: dict[str, Any] | None) -> Body:
    app = topology.app
    app_name, ns = app.meta.name, app.meta.namespace
    name = names.beat(app_name)
    own = lbl.labels(app_name, api.COMPONENT_BEAT, instance=name)
    template = pod.merge_templates(app.pod_template)
    container = pod.celery_container(topology, CONTAINER, app.image, beat_command(),
                                     pod.celery_env(topology, broker_ref, backend_ref,
                                                    operator_env=beat_env(app_name)), template)
    spec = pod.pod_spec(topology, container, template, TERMINATION_GRACE_PERIOD_SECONDS)
    spec["serviceAccountName"] = service_account(topology)
    spec["automountServiceAccountToken"] = True  # the scheduler talks to the API server
    return pod.recreate_deployment(
        lbl.metadata(name, ns, own, owner), lbl.selector(app_name, api.COMPONENT_BEAT),
        pod.template_metadata(own, template, {api.ANNOTATION_CONFIG_HASH: config_hash, **pod.METRICS_ANNOTATIONS}),
        spec)


def _metadata(topology: Topology, name: str, owner: dict[str, Any] | None) -> Body:
    app = topology.app
    return lbl.metadata(name, app.meta.namespace, lbl.labels(app.meta.name, api.COMPONENT_BEAT, instance=name),
                        owner)


def state_config_map(topology: Topology, owner: dict[str, Any] | None) -> Body:
    """Beat's state: the operator sets only the metadata, beat writes the data (so it survives applies)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(topology, names.beat_state(topology.app.meta.name), owner)}


def lease(topology: Topology, owner: dict[str, Any] | None) -> Body:
    """The Lease electing the beat that sends; its spec is beat's."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": _metadata(topology, names.beat(topology.app.meta.name), owner)}


def role(topology: Topology, owner: dict[str, Any] | None) -> Body:
    """rbac.BEAT, each rule restricted to the one object of its resource."""
    app_name = topology.app.meta.name
    objects = {"configmaps": names.beat_state(app_name), "leases": names.beat(app_name)}
    rules = [{**r.as_dict(), "resourceNames": [objects[res] for res in r.resources]} for r in rbac.BEAT]
    return {"apiVersion": RBAC_API_VERSION, "kind": "Role",
            "metadata": _metadata(topology, names.beat(app_name), owner), "rules": rules}


def role_binding(topology: Topology, owner: dict[str, Any] | None) -> Body:
    name = names.beat(topology.app.meta.name)
    return {"apiVersion": RBAC_API_VERSION, "kind": "RoleBinding", "metadata": _metadata(topology, name, owner),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account(topology),
                          "namespace": topology.app.meta.namespace}]}


def objects(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None, config_hash: str,
            owner: dict[str, Any] | None) -> list[Body]:
    """Everything of the app's beat: its identity and permissions, its state and Lease, its Deployment."""
    out: list[Body] = []
    if service_account(topology) == names.beat(topology.app.meta.name):
        out.append({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": _metadata(topology, names.beat(topology.app.meta.name), owner)})
    out += [role(topology, owner), role_binding(topology, owner), state_config_map(topology, owner),
            lease(topology, owner), deployment(topology, broker_ref, backend_ref, config_hash, owner)]
    return out
