"""The pod parts workers and beat share: env, volumes, security defaults, user overrides.

Security follows the `restricted` Pod Security Standard by default (non-root uid 1000, no
privilege escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root filesystem
with an emptyDir at /tmp). A user's podTemplate (the app's, then the pool's) is merged on top:
labels, annotations, nodeSelector and both security contexts key by key; lists (tolerations,
imagePullSecrets) and other values replace what came before when set.

`PYTHONPATH` is set to the config mount (where the bootstrap module lives), which hides an image's
own `ENV PYTHONPATH`: an image that needs one should also name it in the CeleryApp's env, whose
value is appended.

Both containers serve task metrics on the named port `metrics` (the bootstrap's metrics module),
and their pods carry the `prometheus.io/*` annotations annotation-driven scrape configs look for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery_operator import api
from celery_operator.models import Body, PodTemplate, SecretKeyRef
from celery_operator.render import names
from celery_operator.topology import Topology

CONFIG_VOLUME = "celery-config"
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"

DEFAULT_POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}

# Env the operator sets and users cannot override (their entries of these names are dropped).
OPERATOR_ENV = (api.ENV_BROKER_URL, api.ENV_RESULT_BACKEND, api.ENV_APP, api.ENV_SOFT_SHUTDOWN_TIMEOUT,
                api.ENV_POOL, api.ENV_PROMETHEUS_MULTIPROC_DIR, api.ENV_BEAT_STATE, api.ENV_BEAT_LEASE,
                api.ENV_NAMESPACE, api.ENV_POD_NAME)
METRICS_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(api.METRICS_PORT),
                       "prometheus.io/path": api.METRICS_PATH}


def merge_templates(*templates: PodTemplate) -> PodTemplate:
    """Later templates override earlier ones (maps key-wise, lists and scalars when set)."""
    out = PodTemplate(security_context=dict(DEFAULT_POD_SECURITY_CONTEXT),
                      container_security_context=dict(DEFAULT_CONTAINER_SECURITY_CONTEXT))
    for t in templates:
        out = dataclasses.replace(
            out,
            labels={**out.labels, **t.labels},
            annotations={**out.annotations, **t.annotations},
            node_selector={**out.node_selector, **t.node_selector},
            tolerations=list(t.tolerations) or out.tolerations,
            affinity=t.affinity if t.affinity is not None else out.affinity,
            service_account_name=t.service_account_name or out.service_account_name,
            priority_class_name=t.priority_class_name or out.priority_class_name,
            security_context={**(out.security_context or {}), **(t.security_context or {})},
            container_security_context={**(out.container_security_context or {}),
                                        **(t.container_security_context or {})},
            image_pull_secrets=list(t.image_pull_secrets) or out.image_pull_secrets,
        )
    return out


def secret_env(name: str, ref: SecretKeyRef) -> Body:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def merge_env(*lists: list[Body]) -> list[Body]:
    """Env lists merged by name: a later entry replaces an earlier one in its place."""
    out: dict[str, Body] = {}
    for env in lists:
        for e in env:
            out[e["name"]] = e
    return list(out.values())


def celery_env(topology: Topology, broker_ref: SecretKeyRef, backend_ref: SecretKeyRef | None,
               pool_env: list[Body] | None = None, operator_env: list[Body] | None = None) -> list[Body]:
    """Operator env (URLs from Secrets, never literal; then `operator_env`), then the app's env,
    then the pool's."""
    fixed = [secret_env(api.ENV_BROKER_URL, broker_ref)]
    if backend_ref is not None:
        fixed.append(secret_env(api.ENV_RESULT_BACKEND, backend_ref))
    fixed.append({"name": api.ENV_APP, "value": topology.app.app})
    fixed += operator_env or []
    defaults = [{"name": "HOME", "value": TMP_PATH}]
    user = [e for e in merge_env(topology.app.env, pool_env or []) if e["name"] not in OPERATOR_ENV]
    pythonpath = api.CONFIG_MOUNT_PATH
    for e in user:
        if e["name"] == "PYTHONPATH" and "value" in e:
            pythonpath = f"{api.CONFIG_MOUNT_PATH}:{e['value']}" if e["value"] else pythonpath
    user = [e for e in user if e["name"] != "PYTHONPATH"]
    return fixed + merge_env(defaults, [{"name": "PYTHONPATH", "value": pythonpath}], user)


def config_volume(app_name: str) -> Body:
    """The app's generated config and bootstrap module (workers, beat and producers mount it)."""
    return {"name": CONFIG_VOLUME, "configMap": {"name": names.config_map(app_name)}}


def config_mount() -> Body:
    return {"name": CONFIG_VOLUME, "mountPath": api.CONFIG_MOUNT_PATH, "readOnly": True}


def volumes(app_name: str) -> list[Body]:
    return [config_volume(app_name), {"name": TMP_VOLUME, "emptyDir": {}}]


def volume_mounts() -> list[Body]:
    return [config_mount(), {"name": TMP_VOLUME, "mountPath": TMP_PATH}]


def celery_container(topology: Topology, name: str, image: str, command: list[str], env: list[Body],
                     template: PodTemplate, resources: Body | None = None) -> Body:
    """A container running `celery -A <bootstrap>` with the config mounted."""
    app = topology.app
    c: Body = {"name": name, "image": image, "command": command, "env": env,
               "ports": [{"name": api.METRICS_PORT_NAME, "containerPort": api.METRICS_PORT, "protocol": "TCP"}]}
    if app.image_pull_policy:
        c["imagePullPolicy"] = app.image_pull_policy
    if app.env_from:
        c["envFrom"] = list(app.env_from)
    if resources:
        c["resources"] = dict(resources)
    c["volumeMounts"] = volume_mounts()
    c["securityContext"] = dict(template.container_security_context or {})
    return c


def pod_spec(topology: Topology, container: Body, template: PodTemplate,
             termination_grace_period_seconds: int | None = None) -> Body:
    """Pod spec around one celery container, with the user's template applied.

    The pod shares one process namespace, so the pause process is PID 1 and Celery is not: a SIGTERM that
    comes while Celery is still importing (a pod deleted or scaled away as it starts) ends it at once. As
    PID 1 the kernel drops a signal it has no handler for yet, and the container ran (and consumed tasks)
    until its grace period ended in a SIGKILL."""
    spec: Body = {"containers": [container], "volumes": volumes(topology.app.meta.name),
                  "shareProcessNamespace": True,
                  "enableServiceLinks": False,
                  "automountServiceAccountToken": template.service_account_name is not None,
                  "securityContext": dict(template.security_context or {})}
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    if termination_grace_period_seconds is not None:
        spec["terminationGracePeriodSeconds"] = termination_grace_period_seconds
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = list(template.tolerations)
    if template.affinity is not None:
        spec["affinity"] = template.affinity
    if template.priority_class_name:
        spec["priorityClassName"] = template.priority_class_name
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = list(template.image_pull_secrets)
    return spec


def recreate_deployment(metadata: Body, selector: dict[str, str], template_metadata: Body, spec: Body) -> Body:
    """A Deployment of one pod that is replaced, never doubled (beat, Flower): the old pod is gone before the new
    one starts."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "revisionHistoryLimit": 3,
            "template": {"metadata": template_metadata, "spec": spec},
        },
    }


def template_metadata(own_labels: dict[str, str], template: PodTemplate,
                      annotations: dict[str, str]) -> Body:
    """Pod template metadata: the user's labels/annotations, ours winning on the same key."""
    meta: Body = {"labels": {**template.labels, **own_labels}}
    merged = {**template.annotations, **annotations}
    if merged:
        meta["annotations"] = merged
    return meta
