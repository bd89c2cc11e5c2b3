"""PURE: whether a live object still is what the operator rendered for it.

The operator applies a child only when this says it differs, so an unchanged child costs no
write, and a hand edit or a deleted child (seen through the watch) is restored on the next cycle.
`differs(desired, live)` asks: does `live` hold every field `desired` sets, with the same value?
Fields the API server or other controllers add (defaults, status, managedFields, annotations of
their own) do not count. Values the server rewrites in a canonical form (resource quantities such
as `500m`/`0.5`, `1Gi`/`1024Mi`) compare by meaning. An empty map or list the server drops equals
an absent one.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
           "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
           "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
           "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
# Fields whose values are Kubernetes quantities: resources.requests/limits, a claim's storage.
_QUANTITY_PATH = re.compile(r"\.(requests|limits|capacity)\.[^.\[]+$|\.storage$")


def quantity(value: object) -> Decimal | None:
    """The value of a Kubernetes quantity (`500m`, `1Gi`, `2`), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation:
        return None


def _empty(v: object) -> bool:
    return v is None or v == {} or v == []


def differs(desired: Any, live: Any, path: str = "") -> str | None:
    """The path of the first field of `desired` that `live` does not hold, or None when it holds all."""
    if isinstance(desired, dict):
        if live is None and all(_empty(v) for v in desired.values()):
            return None
        if not isinstance(live, dict):
            return path or "."
        for k, v in desired.items():
            if k not in live:
                if _empty(v):
                    continue
                return f"{path}.{k}"
            found = differs(v, live[k], f"{path}.{k}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if live is None and not desired:
            return None
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            found = differs(d, v, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if desired == live:
        return None
    if _QUANTITY_PATH.search(path):
        a, b = quantity(desired), quantity(live)
        if a is not None and a == b:
            return None
    return path or "."
