"""Observe: what the cluster holds for one app, as one `plan.Snapshot` a reconcile plans from.

Custom resources come from kopf's indexes (keyed by namespace and app name), the app's children and
pods from the operator's own informers (selected on the server by the managed-by label), Secrets
from the SecretCache. Two reads no watch serves, each bounded: whether the cluster serves PodMonitor
(API discovery, asked once per `monitoring.RECHECK_SECONDS` for every app), and a managed server's
PersistentVolumeClaims and their Events (listed only while its StatefulSet is not ready: the root
cause of a pod that cannot be scheduled).
"""

from __future__ import annotations

import secrets as tokens
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery_operator import api, endpoints, plan
from celery_operator.controller.monitoring import POD_MONITORS
from celery_operator.controller.secrets import SecretCache
from celery_operator.controller.workqueue import AppKey
from celery_operator.kube.client import KubeClient
from celery_operator.kube.informer import Informer, Packer
from celery_operator.models import CeleryApp
from celery_operator.topology import ObjKey

Body = dict[str, Any]
CR_KINDS = (api.APP, api.EXCHANGE, api.QUEUE, api.POOL, api.SCHEDULE)
WATCHED_CHILDREN = ("Deployment", "StatefulSet", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                    "Lease", "Ingress")
# How kopf's indexes keep each kind's custom resources (the index functions pack, `crs` unpacks).
CR_PACKERS = {kind: Packer() for kind in CR_KINDS}
# Children whose kind may not be served by every cluster: watched once the cluster serves it.
OPTIONAL_CHILDREN = (api.POD_MONITOR,)


class Index(Protocol):
    """What the reconciler needs of a kopf.Index: values per key (an iterable Store)."""

    def get(self, key: AppKey, default: Any = ...) -> Iterable[bytes] | None: ...

    def __iter__(self) -> Any: ...


@dataclass
class ClusterCache:
    indexes: Mapping[str, Index]  # CR kind -> kopf index keyed (namespace, app)
    informers: dict[str, list[Informer]] = field(default_factory=dict)  # kind -> one per namespace (or all)
    secrets: SecretCache | None = None

    def crs(self, key: AppKey) -> dict[ObjKey, Body]:
        out: dict[ObjKey, Body] = {}
        for kind in CR_KINDS:
            for raw in self.indexes[kind].get(key, None) or ():
                body = CR_PACKERS[kind].unpack(raw)
                out[(kind, body["metadata"]["name"])] = body
        return out

    def app_keys(self) -> set[AppKey]:
        """Every app named by a custom resource (existing or not)."""
        keys: set[AppKey] = set()
        for kind in CR_KINDS:
            keys |= set(self.indexes[kind])
        return keys

    def _select(self, kind: str, namespace: str, labels: dict[str, str]) -> list[Body]:
        out: list[Body] = []
        for inf in self.informers.get(kind, []):
            if inf.namespace in (None, namespace):
                out += inf.select(namespace, labels)
        return out

    async def children(self, namespace: str, app: str, wanted_secrets: Iterable[str] = ()) -> dict[ObjKey, Body]:
        """The app's children: by its label, and the Secrets it renders (read through the SecretCache)."""
        mine = {api.LABEL_APP: app, api.LABEL_MANAGED_BY: api.OPERATOR_NAME}
        out = {(kind, o["metadata"]["name"]): o
               for kind in (*WATCHED_CHILDREN, *OPTIONAL_CHILDREN) for o in self._select(kind, namespace, mine)}
        if self.secrets is not None:
            names = {o["metadata"]["name"] for o in self._select("Secret", namespace, mine)} | set(wanted_secrets)
            for name in sorted(names):
                secret = await self.secrets.get(namespace, name)
                if secret is not None and (secret["metadata"].get("labels") or {}).get(api.LABEL_MANAGED_BY) \
                        == api.OPERATOR_NAME:
                    out[("Secret", name)] = secret
        return out

    def child(self, kind: str, namespace: str, name: str) -> Body | None:
        """One cached child by name (None when the cache has none)."""
        for inf in self.informers.get(kind, []):
            if inf.namespace in (None, namespace):
                found = inf.get(namespace, name)
                if found is not None:
                    return found
        return None

    def pods(self, namespace: str, app: str) -> list[Body]:
        return self._select("Pod", namespace, {api.LABEL_APP: app})

    def synced(self) -> bool:
        return all(inf.synced.is_set() for infs in self.informers.values() for inf in infs)


@dataclass
class WrittenStatuses:
    """Statuses this replica wrote, until the watch shows them: a reconcile sees its own last write, so a
    status is never written twice. The executor records; observe overlays."""

    by_object: dict[tuple[str, str, str], tuple[int, Body]] = field(default_factory=dict)

    def record(self, namespace: str, kind: str, name: str, resource_version: int, status: Body) -> None:
        self.by_object[(namespace, kind, name)] = (resource_version, status)

    def overlay(self, namespace: str, bodies: dict[ObjKey, Body]) -> dict[ObjKey, Body]:
        for (kind, name), body in bodies.items():
            mine = self.by_object.get((namespace, kind, name))
            if mine is None:
                continue
            if int(body["metadata"].get("resourceVersion") or 0) < mine[0]:
                body["status"] = mine[1]
            else:
                del self.by_object[(namespace, kind, name)]
        return bodies


def _new_password() -> str:
    return tokens.token_urlsafe(24)


@dataclass
class Observer:
    """Reads one app's Snapshot: from the caches, and the two bounded reads named above."""

    cache: ClusterCache
    client: KubeClient
    written: WrittenStatuses
    watch: Callable[[str], None]  # start watching an optional child kind the cluster now serves

    async def snapshot(self, key: AppKey) -> plan.Snapshot:
        ns, name = key
        bodies = self.written.overlay(ns, self.cache.crs(key))
        now, monotonic = time.time(), time.monotonic()
        app_body = bodies.get((api.APP, name))
        if app_body is None or app_body["metadata"].get("deletionTimestamp"):
            return plan.Snapshot(ns, name, bodies, now=now, monotonic=monotonic)
        refs = endpoints.referenced_secrets(CeleryApp.of(app_body))
        secret_data = await self.cache.secrets.data(ns, refs) if self.cache.secrets is not None else {}
        pod_monitor = await POD_MONITORS.served(self.client)
        if pod_monitor:
            self.watch(api.POD_MONITOR)
        children = await self.cache.children(ns, name, refs)
        return plan.Snapshot(ns, name, bodies, secret_data, pod_monitor, children, self.cache.pods(ns, name),
                             await self._claims(ns, plan.unready_claimed(children)),
                             {role: _new_password() for role in ("broker", "result-backend")}, now, monotonic)

    async def _claims(self, ns: str, statefulsets: list[str]) -> dict[str, plan.ClaimReading]:
        if not statefulsets:
            return {}
        claims = await self.client.list("PersistentVolumeClaim", ns)
        events = await self.client.list("Event", ns, field_selector="involvedObject.kind=PersistentVolumeClaim")
        return {sts: plan.ClaimReading(plan.claims_of(claims, sts), events) for sts in statefulsets}
