"""A small async REST client for the API server (aiohttp), authenticated like kopf.

Generic over kinds (server-side apply, status patches, lists), so the rest of the operator never
depends on a generated client's version-specific call signatures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import kopf

from celery_operator import api

Body = dict[str, Any]

# kind -> (api prefix, plural) for everything the operator touches.
_CORE: Final = {"Service": "services", "ConfigMap": "configmaps", "Secret": "secrets", "Event": "events",
                "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Pod": "pods"}
_GROUPED: Final = {"Deployment": ("apps/v1", "deployments"), "StatefulSet": ("apps/v1", "statefulsets"),
                   "ReplicaSet": ("apps/v1", "replicasets"),
                   "Lease": ("coordination.k8s.io/v1", "leases")}


def _to_file(data: str | bytes) -> str:
    """ssl wants files for client certs: keep inline kubeconfig data in a private temp file."""
    fd, path = tempfile.mkstemp(prefix="celery-operator-")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


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


@dataclass
class KubeClient:
    """One aiohttp session to the API server, built from kopf's ConnectionInfo."""

    conn: kopf.ConnectionInfo
    _session: aiohttp.ClientSession | None = None

    @classmethod
    async def login(cls) -> KubeClient:
        settings = kopf.OperatorSettings()
        try:
            conn = kopf.login_with_service_account(settings=settings)
        except Exception:  # noqa: BLE001 - not in a cluster: fall back to the kubeconfig
            conn = None
        if conn is not None:
            # In a pod, the API server is where the kubelet says (kopf assumes kubernetes.default.svc).
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
            if host and port:
                host = f"[{host}]" if ":" in host else host
                conn = dataclasses.replace(conn, server=f"https://{host}:{port}")
        if conn is None:
            conn = kopf.login_with_kubeconfig(settings=settings)
        if conn is None:
            raise RuntimeError("no Kubernetes credentials: neither in-cluster nor a kubeconfig")
        return cls(conn)

    def _ssl(self) -> ssl.SSLContext | bool:
        c = self.conn
        if c.insecure:
            return False
        ctx = ssl.create_default_context(cafile=c.ca_path) if c.ca_path else ssl.create_default_context()
        if c.ca_data:
            ctx.load_verify_locations(cadata=c.ca_data.decode() if isinstance(c.ca_data, bytes) else c.ca_data)
        cert, key = c.certificate_path, c.private_key_path
        if c.certificate_data and c.private_key_data:
            cert, key = _to_file(c.certificate_data), _to_file(c.private_key_data)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        return ctx

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": api.OPERATOR_NAME}
        token = self.conn.token
        # Projected service-account tokens rotate: re-read the file on every request (it is tiny).
        sa_token = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
        if self.conn.scheme == "Bearer" and sa_token.exists():
            token = sa_token.read_text().strip()
        if token:
            h["Authorization"] = f"{self.conn.scheme or 'Bearer'} {token}"
        return h

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=20),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Body:
        s = await self.session()
        url = self.conn.server.rstrip("/") + path + ("?" + urlencode(params) if params else "")
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with s.request(method, url, data=data, headers=headers) as r:
            text = await r.text()
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text}
            if r.status >= 400:
                raise ApiError(r.status, str(payload.get("message", text))[:2000], payload)
            return payload if isinstance(payload, dict) else {"items": payload}

    # ---- typed conveniences --------------------------------------------------------------
    async def get(self, kind: str, namespace: str | None, name: str) -> Body | None:
        try:
            return await self.request("GET", path_for(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[Body]:
        params = {"labelSelector": label_selector} if label_selector else None
        return list((await self.request("GET", path_for(kind, namespace), params=params)).get("items", []))

    async def apply(self, obj: Body, field_manager: str = api.FIELD_MANAGER) -> Body:
        """Server-side apply (force: the operator owns the fields it sets)."""
        md = obj["metadata"]
        return await self.request(
            "PATCH", path_for(obj["kind"], md.get("namespace"), md["name"]),
            params={"fieldManager": field_manager, "force": "true"}, body=obj,
            content_type="application/apply-patch+yaml")

    async def create(self, obj: Body) -> Body:
        md = obj["metadata"]
        return await self.request("POST", path_for(obj["kind"], md.get("namespace")), body=obj)

    async def patch(self, kind: str, namespace: str | None, name: str, patch: Body, sub: str | None = None,
                    content_type: str = "application/merge-patch+json") -> Body:
        return await self.request("PATCH", path_for(kind, namespace, name, sub), body=patch,
                                  content_type=content_type)

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
