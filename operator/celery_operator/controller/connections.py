"""Broker and result-backend connection facts: which Secret holds the URL, and reading it.

Managed servers get credentials generated once and kept in a Secret owned by the app; an existing
Secret's values are always reused, so operator restarts never rotate them.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

from celery_operator import api
from celery_operator.kube.client import KubeClient
from celery_operator.models import BrokerSpec, CeleryApp, SecretKeyRef
from celery_operator.render.broker import broker_url_ref, result_backend_url_ref

USERNAME = "celery"


@dataclass
class Endpoint:
    """Where a broker's (or result backend's) URL lives, and its value when it could be read."""

    ref: SecretKeyRef
    url: str | None = None
    management_url: str | None = None
    problem: str | None = None  # why `url` is None
    problem_reason: str = api.Reason.SECRET_NOT_FOUND  # condition reason for `problem`
    managed_credentials: dict[str, str] = field(default_factory=dict)  # managed servers only


def _decode(secret: dict[str, object] | None, key: str) -> str | None:
    data = (secret or {}).get("data") or {}
    assert isinstance(data, dict)
    raw = data.get(key)
    return base64.b64decode(raw).decode() if isinstance(raw, str) else None


async def _read(client: KubeClient, namespace: str, ref: SecretKeyRef) -> tuple[str | None, str | None]:
    secret = await client.get("Secret", namespace, ref.name)
    if secret is None:
        return None, f"Secret {ref.name} not found"
    value = _decode(secret, ref.key)
    if value is None:
        return None, f"Secret {ref.name} has no key {ref.key}"
    return value, None


async def managed_credentials(client: KubeClient, namespace: str, secret_name: str) -> dict[str, str]:
    """The credentials of a managed server: those in its Secret if it exists, else new random ones."""
    existing = await client.get("Secret", namespace, secret_name)
    user, password = _decode(existing, "username"), _decode(existing, "password")
    if password:  # Redis Secrets carry no username
        return {"username": user or USERNAME, "password": password}
    return {"username": USERNAME, "password": secrets.token_urlsafe(24)}


async def resolve(client: KubeClient, app: CeleryApp, spec: BrokerSpec, role: str) -> Endpoint:
    """`role` is "broker" or "result-backend"."""
    ns = app.meta.namespace
    if spec.external is not None:
        ep = Endpoint(ref=spec.external)
        ep.url, ep.problem = await _read(client, ns, spec.external)
        if spec.management_url is not None and ep.url is not None:
            ep.management_url, problem = await _read(client, ns, spec.management_url)
            ep.problem = ep.problem or problem
        return ep
    if spec.rabbitmq_cluster is not None:
        cluster_ref = broker_url_ref(app)
        ep = Endpoint(ref=cluster_ref)
        ep.url, ep.problem = await _read(client, ns, cluster_ref)
        return ep
    assert spec.managed is not None
    ref = broker_url_ref(app) if role == "broker" else result_backend_url_ref(app)
    assert ref is not None
    secret_name = ref.name
    ep = Endpoint(ref=ref)
    ep.managed_credentials = await managed_credentials(client, ns, secret_name)
    existing, _ = await _read(client, ns, ep.ref)
    ep.url = existing  # None until the Secret has been applied once; the next cycle reads it
    if existing is None:
        ep.problem = f"Secret {secret_name} is being created"
        ep.problem_reason = api.Reason.APP_NOT_READY
    return ep
