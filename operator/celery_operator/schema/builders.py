"""Small helpers that build structural OpenAPI v3 schema nodes, each with a description.

Every helper takes the description first: `kubectl explain` shows it, and the reference docs are
generated from it. Strings and lists that CEL rules look at carry maxLength/maxItems so the API
server's cost estimate stays within its budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

# Kubernetes' resource.Quantity syntax (as in the core CRDs' generated schemas).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
    r"|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# metadata.name of CeleryApps and CeleryWorkerPools: a DNS-1035 label, since it is a label value on
# their children (and starts the names of Services, which must begin with a letter).
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX = 63


@dataclass(frozen=True)
class Rule:
    """One CEL `x-kubernetes-validations` entry. `message` must name the field and say the fix."""

    cel: str
    message: str
    field_path: str | None = None
    reason: str | None = None  # FieldValueInvalid | FieldValueForbidden | FieldValueRequired | ...

    def render(self) -> Schema:
        out: Schema = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _finish(s: Schema, default: Any = None, rules: Iterable[Rule] = ()) -> Schema:
    if default is not None:
        s["default"] = default
    rendered = [r.render() for r in rules]
    if rendered:
        s["x-kubernetes-validations"] = rendered
    return s


def string(desc: str, *, pattern: str | None = None, enum: Iterable[str] | None = None,
           default: str | None = None, min_length: int | None = None, max_length: int | None = None,
           fmt: str | None = None, rules: Iterable[Rule] = ()) -> Schema:
    s: Schema = {"type": "string", "description": desc}
    if enum is not None:
        s["enum"] = list(enum)
    if pattern is not None:
        s["pattern"] = pattern
    if min_length is not None:
        s["minLength"] = min_length
    if max_length is not None:
        s["maxLength"] = max_length
    if fmt is not None:
        s["format"] = fmt
    return _finish(s, default, rules)


def integer(desc: str, *, minimum: int | None = None, maximum: int | None = None,
            default: int | None = None, fmt: str = "int32", rules: Iterable[Rule] = ()) -> Schema:
    s: Schema = {"type": "integer", "format": fmt, "description": desc}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    return _finish(s, default, rules)


def number(desc: str, *, minimum: float | None = None, exclusive_minimum: bool = False,
           maximum: float | None = None, default: float | None = None) -> Schema:
    s: Schema = {"type": "number", "description": desc}
    if minimum is not None:
        s["minimum"] = minimum
        if exclusive_minimum:
            s["exclusiveMinimum"] = True
    if maximum is not None:
        s["maximum"] = maximum
    return _finish(s, default)


def boolean(desc: str, *, default: bool | None = None) -> Schema:
    return _finish({"type": "boolean", "description": desc}, default)


def obj(desc: str, props: Mapping[str, Schema], *, required: Iterable[str] = (),
        rules: Iterable[Rule] = (), default: Mapping[str, Any] | None = None) -> Schema:
    s: Schema = {"type": "object", "description": desc, "properties": dict(props)}
    req = list(required)
    missing = set(req) - set(props)
    if missing:
        raise ValueError(f"required names unknown properties: {sorted(missing)}")
    if req:
        s["required"] = req
    return _finish(s, dict(default) if default is not None else None, rules)


def array(desc: str, items: Schema, *, max_items: int, min_items: int | None = None,
          list_type: str | None = None, map_keys: Iterable[str] | None = None,
          rules: Iterable[Rule] = ()) -> Schema:
    s: Schema = {"type": "array", "description": desc, "items": items, "maxItems": max_items}
    if min_items is not None:
        s["minItems"] = min_items
    if list_type is not None:
        s["x-kubernetes-list-type"] = list_type
    if map_keys is not None:
        s["x-kubernetes-list-map-keys"] = list(map_keys)
    return _finish(s, None, rules)


def string_map(desc: str, *, max_properties: int = 128, value_max_length: int | None = None,
               rules: Iterable[Rule] = ()) -> Schema:
    """A map of string to string (labels, annotations, nodeSelector)."""
    value: Schema = {"type": "string"}
    if value_max_length is not None:
        value["maxLength"] = value_max_length
    s: Schema = {"type": "object", "description": desc, "maxProperties": max_properties,
                 "additionalProperties": value}
    return _finish(s, None, rules)


def quantity_map(desc: str) -> Schema:
    """A map of resource name to quantity, as in ResourceRequirements.limits/requests."""
    return {
        "type": "object",
        "description": desc,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        },
    }


def free_object(desc: str) -> Schema:
    """An object whose fields the API server keeps as given (Kubernetes types we pass through)."""
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


def any_value(desc: str) -> Schema:
    """Any JSON value (string, number, bool, list, object), kept as given. Invisible to CEL rules."""
    return {"description": desc, "x-kubernetes-preserve-unknown-fields": True}
