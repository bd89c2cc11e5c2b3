"""The Secrets the operator reads (broker URLs, managed credentials), cached by resourceVersion.

A metadata-only watch of the watched namespaces' Secrets says which changed; a Secret's content is
read (one GET) only the first time it is needed and after it changed. Apps that read a Secret are
reconciled when it changes (a rotated password reaches the operator at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery_operator.endpoints import decode
from celery_operator.kube.client import KubeClient
from celery_operator.kube.informer import Informer, NamespacedName

Body = dict[str, Any]


@dataclass
class SecretCache:
    client: KubeClient
    informers: list[Informer] = field(default_factory=list)
    on_change: Callable[[NamespacedName], None] | None = None  # (namespace, name) of a Secret that changed
    _content: dict[NamespacedName, tuple[str, Body]] = field(default_factory=dict)  # key -> (resourceVersion, object)

    def observe(self, kind: str, new: Body | None, old: Body | None) -> None:
        obj = new or old
        assert obj is not None
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if new is None:
            self._content.pop(key, None)
        if self.on_change is not None and (old is None or new is None or old["metadata"].get("resourceVersion")
                                           != new["metadata"].get("resourceVersion")):
            self.on_change(key)

    def _meta(self, namespace: str, name: str) -> Body | None:
        for inf in self.informers:
            found = inf.get(namespace, name)
            if found is not None:
                return found
        return None

    async def get(self, namespace: str, name: str) -> Body | None:
        """The Secret (None when absent), read from the API server only when it changed. A Secret the
        watch has not shown (yet) is read too: "absent" is only believed from the server itself, since
        a managed Secret believed absent would get new credentials."""
        meta = self._meta(namespace, name)
        cached = self._content.get((namespace, name))
        if meta is not None and cached is not None and cached[0] == str(meta["metadata"].get("resourceVersion")):
            return cached[1]
        obj = await self.client.get("Secret", namespace, name)
        if obj is not None:
            self._content[(namespace, name)] = (str(obj["metadata"].get("resourceVersion")), obj)
        else:
            self._content.pop((namespace, name), None)
        return obj

    async def data(self, namespace: str, names: list[str]) -> dict[str, dict[str, str] | None]:
        out: dict[str, dict[str, str] | None] = {}
        for n in names:
            obj = await self.get(namespace, n)
            out[n] = decode(obj.get("data")) if obj is not None else None
        return out
