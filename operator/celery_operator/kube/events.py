"""Kubernetes Events about our objects (core/v1, what `kubectl describe` shows)."""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any

from celery_operator import api
from celery_operator.kube.client import ApiError, KubeClient
from celery_operator.render import names

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Recorder:
    """Posts Events; repeats of the same (object, reason, message) are not re-posted (no spam)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._last: dict[str, tuple[str, str]] = {}

    async def emit(self, obj: dict[str, Any], type_: str, reason: str, message: str, *,
                   dedupe: bool = True) -> None:
        md = obj.get("metadata", {})
        uid = md.get("uid", "")
        if dedupe and self._last.get(uid) == (reason, message):
            return
        self._last[uid] = (reason, message)
        ns = md.get("namespace") or "default"
        ev = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": names.event(md.get("name", "x"), uuid.uuid4().hex[:12]), "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "name": md.get("name"), "namespace": ns, "uid": uid,
                               "resourceVersion": md.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": api.OPERATOR_NAME},
            "reportingComponent": api.OPERATOR_NAME, "reportingInstance": api.OPERATOR_NAME,
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
        }
        try:
            await self.client.create(ev)
        except ApiError as e:  # an Event is best effort: never fail a reconcile for it
            log.warning("could not post event %s on %s/%s: %s", reason, ns, md.get("name"), e)

    async def normal(self, obj: dict[str, Any], reason: str, message: str) -> None:
        await self.emit(obj, "Normal", reason, message)

    async def warning(self, obj: dict[str, Any], reason: str, message: str) -> None:
        await self.emit(obj, "Warning", reason, message)

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)
