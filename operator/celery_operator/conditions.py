"""Pure helpers for `status.conditions` (Kubernetes API conventions)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from celery_operator import api


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(old: list[dict[str, Any]] | None, new: list[Condition], generation: int,
          now: str | None = None) -> list[dict[str, Any]]:
    """The new condition list; lastTransitionTime changes only when a condition's status changes."""
    previous = {c.get("type"): c for c in old or []}
    stamp = now or now_iso()
    out = []
    for c in new:
        status = "True" if c.status else "False"
        prev = previous.get(c.type)
        ltt = prev["lastTransitionTime"] if prev and prev.get("status") == status and \
            prev.get("lastTransitionTime") else stamp
        out.append({"type": c.type, "status": status, "reason": c.reason, "message": c.message[:1024],
                    "observedGeneration": generation, "lastTransitionTime": ltt})
    return out


def ready(reason: str = api.Reason.RECONCILED, message: str = "") -> list[Condition]:
    return [Condition(api.READY, True, reason, message), Condition(api.PROGRESSING, False, reason, message),
            Condition(api.DEGRADED, False, reason, message)]


def not_ready(reason: str, message: str, *, progressing: bool = False, degraded: bool = True) -> list[Condition]:
    return [Condition(api.READY, False, reason, message),
            Condition(api.PROGRESSING, progressing, reason, message),
            Condition(api.DEGRADED, degraded, reason, message)]


def same(a: list[dict[str, Any]] | None, b: list[dict[str, Any]]) -> bool:
    """Equal ignoring lastTransitionTime (used to skip no-op status writes)."""
    def key(cs: list[dict[str, Any]] | None) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
                       c.get("observedGeneration")) for c in cs or [])
    return key(a) == key(b)
