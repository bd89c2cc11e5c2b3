"""Labels, owner references and metadata shared by every rendered object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_operator import api
from celery_operator.models import Meta


def labels(app: str, component: str, instance: str, name: str = "celery",
           pool: str | None = None) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus ours (`LABEL_APP`, `LABEL_POOL` for pool children).

    `name` is the software (celery, rabbitmq, redis), `instance` the object's own name, `part-of`
    the CeleryApp.
    """
    out = {
        api.LABEL_NAME: name,
        api.LABEL_INSTANCE: instance,
        api.LABEL_COMPONENT: component,
        api.LABEL_PART_OF: app,
        api.LABEL_MANAGED_BY: api.OPERATOR_NAME,
        api.LABEL_APP: app,
    }
    if pool is not None:
        out[api.LABEL_POOL] = pool
    return out


def has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    """Whether `obj`'s `metadata.labels` carry every key=value of `wanted` (as a `matchLabels` selector
    matches: an empty one matches everything). The one label match of the operator."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def selector(app: str, component: str, pool: str | None = None,
             instance: str | None = None) -> dict[str, str]:
    """The stable subset of `labels` a workload selects its pods by."""
    out = {api.LABEL_APP: app, api.LABEL_COMPONENT: component}
    if pool is not None:
        out[api.LABEL_POOL] = pool
    if instance is not None:
        out[api.LABEL_INSTANCE] = instance
    return out


def owner_reference(kind: str, meta: Meta) -> dict[str, Any]:
    """A controller owner reference to one of our custom resources."""
    return {"apiVersion": api.API_VERSION, "kind": kind, "name": meta.name, "uid": meta.uid,
            "controller": True, "blockOwnerDeletion": True}


def metadata(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any] | None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """`metadata` of a child; `owner` (a full owner reference) becomes its only controller."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
    return meta
