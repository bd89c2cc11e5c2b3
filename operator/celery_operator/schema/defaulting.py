"""Structural defaulting, as the API server applies it to a custom resource, from the same schema.

Mirrors k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting: for each object, absent
(or null, when not nullable) properties that have a default get a deep copy of it, then every
present value is defaulted recursively, so defaults nest (a defaulted `{}` gets its own defaults).
Nulls in non-nullable properties without a default are dropped, as the server prunes them.
"""

from __future__ import annotations

import copy
from typing import Any

from celery_operator.schema.builders import Schema
from celery_operator.schema.crd import _openapi_schema


def default(value: Any, schema: Schema | None) -> None:
    """Default `value` in place against `schema`."""
    if schema is None:
        return
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties", {})
        for key, prop in props.items():
            if "default" not in prop:
                continue
            if key not in value or (value[key] is None and not prop.get("nullable", False)):
                value[key] = copy.deepcopy(prop["default"])
        for key in list(value):
            sub = props.get(key)
            if sub is not None and value[key] is None and not sub.get("nullable", False):
                del value[key]  # the server prunes these (properties only, not map values)
                continue
            if sub is None:
                extra = schema.get("additionalProperties")
                sub = extra if isinstance(extra, dict) else None
            default(value[key], sub)
    elif isinstance(value, list):
        items = schema.get("items")
        for v in value:
            default(v, items if isinstance(items, dict) else None)


def apply_defaults(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A copy of `body` (a whole object of `kind`) with the CRD's defaults applied."""
    out = copy.deepcopy(body)
    default(out, _openapi_schema(kind))
    return out
