"""A small async REST client for the API server (aiohttp), authenticated like kopf.

Generic over kinds (server-side apply, status patches, lists), so the rest of the operator never
depends on a generated client's version-specific call signatures.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import kopf

from celery_operator import api
from celery_operator.kube import login

Body = dict[str, Any]
log = logging.getLogger(__name__)

# kind -> (api prefix, plural) for everything the operator touches.
_CORE: Final = {"Service": "services", "ConfigMap": "configmaps", "Secret": "secrets", "Event": "events",
                "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Pod": "pods",
                "PersistentVolumeClaim": "persistentvolumeclaims"}
_GROUPED: Final = {"Deployment": ("apps/v1", "deployments"), "StatefulSet": ("apps/v1", "statefulsets"),
                   "ReplicaSet": ("apps/v1", "replicasets"),
                   "Lease": ("coordination.k8s.io/v1", "leases"),
                   "Ingress": ("networking.k8s.io/v1", "ingresses"),
                   "Role": ("rbac.authorization.k8s.io/v1", "roles"),
                   "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
                   api.POD_MONITOR: (api.MONITORING_API_VERSION, api.POD_MONITOR_PLURAL)}


REQUEST_TIMEOUT_SECONDS = 30
POOL_CONNECTIONS = 50  # concurrent requests (watches hold one each)


def _login() -> kopf.ConnectionInfo:
    """In-cluster credentials, else the kubeconfig's (kube.login)."""
    try:
        return login.login()
    except kopf.LoginError as e:
        raise RuntimeError(str(e)) from None


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Body | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body or {}


def path_for(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None,
             api_version: str | None = None) -> str:
    if kind in _CORE:
        base, plural = "/api/v1", _CORE[kind]
    elif kind in _GROUPED:
        gv, plural = _GROUPED[kind]
        base = f"/apis/{gv}"
    elif kind in api.KINDS:
        base, plural = f"/apis/{api.API_VERSION}", api.plural(kind)
    elif api_version:
        raise ValueError(f"unknown kind {kind} ({api_version})")
    else:
        raise ValueError(f"unknown kind {kind}")
    p = base
    if namespace and kind != "Namespace":
        p += f"/namespaces/{namespace}"
    p += f"/{plural}"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


class NotOwner(Exception):
    """A write was refused locally: this replica no longer holds the lease of what it would write."""


@dataclass
class KubeClient:
    """One aiohttp session to the API server, built from kopf's ConnectionInfo.

    `write_guard`, when set, is asked before every write; when it answers False the write is not
    sent (`NotOwner`): a replica that lost its shard's lease writes nothing (kube.shards).
    """

    conn: kopf.ConnectionInfo
    write_guard: Callable[[], bool] | None = None
    identity: str | None = None  # this replica's: in the User-Agent, so audit logs tell replicas apart
    _session: aiohttp.ClientSession | None = None
    requests: Counter[str] = field(default_factory=Counter)  # by verb (benchmarks read it)

    @classmethod
    async def login(cls) -> KubeClient:
        return cls(await asyncio.to_thread(_login))

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # kopf's own decoding of the credentials: inline kubeconfig data, files, tokens.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.conn.as_ssl_context(), limit=POOL_CONNECTIONS),
                headers={**self.conn.as_http_headers(), "User-Agent": self.user_agent},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))
        return self._session

    @property
    def user_agent(self) -> str:
        return f"{api.OPERATOR_NAME}/{self.identity}" if self.identity else api.OPERATOR_NAME

    async def _relogin(self) -> None:
        """After a 401: credentials rotate (projected tokens, exec plugins), so log in again."""
        self.conn = await asyncio.to_thread(_login)
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      headers: dict[str, str] | None = None, guarded: bool = True,
                      timeout_seconds: float | None = None) -> Body:
        self._check_guard(method, path, guarded)
        try:
            return await self._request(method, path, params, body, content_type, headers, timeout_seconds)
        except ApiError as e:
            if e.status != 401:
                raise
        await self._relogin()
        self._check_guard(method, path, guarded)  # logging in again took time: the lease may be gone
        return await self._request(method, path, params, body, content_type, headers, timeout_seconds)

    def _check_guard(self, method: str, path: str, guarded: bool) -> None:
        if method != "GET" and guarded and self.write_guard is not None and not self.write_guard():
            raise NotOwner(f"{method} {path}: not sent, this replica does not hold the lease")

    def _url(self, path: str, params: dict[str, str] | None) -> str:
        return self.conn.server.rstrip("/") + path + ("?" + urlencode(params) if params else "")

    async def _request(self, method: str, path: str, params: dict[str, str] | None, body: Any,
                       content_type: str, extra_headers: dict[str, str] | None,
                       timeout_seconds: float | None) -> Body:
        s = await self.session()
        headers = {"Accept": "application/json", **(extra_headers or {})}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        self.requests[method] += 1
        client_timeout = aiohttp.ClientTimeout(total=timeout_seconds) if timeout_seconds is not None else None
        async with s.request(method, self._url(path, params), data=data, headers=headers,
                             timeout=client_timeout) as r:
            text = await r.text()
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text}
            if r.status >= 400:
                raise ApiError(r.status, str(payload.get("message", text))[:2000], payload)
            return payload if isinstance(payload, dict) else {"items": payload}

    async def stream(self, path: str, *, params: dict[str, str], headers: dict[str, str] | None = None,
                     timeout_seconds: float) -> AsyncIterator[Body]:
        """A watch: one JSON event per line, until the server ends it."""
        s = await self.session()
        self.requests["WATCH"] += 1
        async with s.get(self._url(path, params), headers={"Accept": "application/json", **(headers or {})},
                         timeout=aiohttp.ClientTimeout(total=timeout_seconds, sock_read=timeout_seconds)) as r:
            if r.status == 401:
                await self._relogin()
            if r.status >= 400:
                text = await r.text()
                raise ApiError(r.status, text[:2000])
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)

    # ---- typed conveniences --------------------------------------------------------------
    async def get(self, kind: str, namespace: str | None, name: str) -> Body | None:
        try:
            return await self.request("GET", path_for(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[Body]:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return list((await self.request("GET", path_for(kind, namespace), params=params or None))
                    .get("items") or [])

    async def apply(self, obj: Body, field_manager: str = api.FIELD_MANAGER) -> Body:
        """Server-side apply (force: the operator owns the fields it sets)."""
        md = obj["metadata"]
        return await self.request(
            "PATCH", path_for(obj["kind"], md.get("namespace"), md["name"]),
            params={"fieldManager": field_manager, "force": "true"}, body=obj,
            content_type="application/apply-patch+yaml")

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery: e.g. a CRD installed and established)."""
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            found = await self.request("GET", base)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def create(self, obj: Body) -> Body:
        md = obj["metadata"]
        return await self.request("POST", path_for(obj["kind"], md.get("namespace")), body=obj)

    async def patch(self, kind: str, namespace: str | None, name: str, patch: Body, sub: str | None = None,
                    content_type: str = "application/merge-patch+json", guarded: bool = True) -> Body:
        return await self.request("PATCH", path_for(kind, namespace, name, sub), body=patch,
                                  content_type=content_type, guarded=guarded)

    async def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background") -> bool:
        try:
            await self.request("DELETE", path_for(kind, namespace, name),
                               body={"kind": "DeleteOptions", "apiVersion": "v1",
                                     "propagationPolicy": propagation})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise
