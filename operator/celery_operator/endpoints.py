"""PURE: where an app's broker and result backend are, from the Secrets that hold their URLs.

External brokers name a Secret; managed ones get a Secret the operator renders, with credentials
generated once (by the caller's `new_password`) and reused from the existing Secret after that,
so operator restarts never rotate them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from celery_operator import api
from celery_operator.models import BrokerSpec, CeleryApp, SecretKeyRef
from celery_operator.render.broker import SecretsContext, broker_url_ref, result_backend_url_ref

USERNAME = "celery"
Secrets = Mapping[str, Mapping[str, str] | None]  # Secret name -> decoded data (None: absent)


@dataclass
class Endpoint:
    """Where a broker's (or result backend's) URL lives, and its value when it could be read."""

    ref: SecretKeyRef
    url: str | None = None
    management_url: str | None = None
    problem: str | None = None  # why `url` is None
    problem_reason: str = api.Reason.SECRET_NOT_FOUND  # condition reason for `problem`
    managed_credentials: dict[str, str] = field(default_factory=dict)  # managed servers only
    managed: bool = False


def decode(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's `data` (base64) as text."""
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (data or {}).items()}


def referenced_secrets(app: CeleryApp) -> list[str]:
    """Names of every Secret the app's endpoints read."""
    out: list[str] = []
    for spec, role in ((app.broker, "broker"), (app.result_backend, "result-backend")):
        if spec is None:
            continue
        if spec.external is not None:
            out.append(spec.external.name)
            if spec.management_url is not None:
                out.append(spec.management_url.name)
        else:
            ref = broker_url_ref(app) if role == "broker" else result_backend_url_ref(app)
            if ref is not None:
                out.append(ref.name)
    if app.flower.enabled:  # Flower's authentication: checked before Flower runs
        out += [ref.name for ref in app.flower.secret_refs()]
    return sorted(set(out))


def _read(secrets: Secrets, ref: SecretKeyRef) -> tuple[str | None, str | None]:
    data = secrets.get(ref.name)
    if data is None:
        return None, f"Secret {ref.name} not found"
    if ref.key not in data:
        return None, f"Secret {ref.name} has no key {ref.key}"
    return data[ref.key], None


def resolve(app: CeleryApp, spec: BrokerSpec, role: str, secrets: Secrets,
            new_password: Callable[[], str]) -> Endpoint:
    """`role` is "broker" or "result-backend"."""
    if spec.external is not None:
        ep = Endpoint(ref=spec.external)
        ep.url, ep.problem = _read(secrets, spec.external)
        if spec.management_url is not None and ep.url is not None:
            ep.management_url, problem = _read(secrets, spec.management_url)
            ep.problem = ep.problem or problem
        return ep
    if spec.rabbitmq_cluster is not None:
        cluster_ref = broker_url_ref(app)
        ep = Endpoint(ref=cluster_ref)
        ep.url, ep.problem = _read(secrets, cluster_ref)
        return ep
    ref = broker_url_ref(app) if role == "broker" else result_backend_url_ref(app)
    assert ref is not None
    ep = Endpoint(ref=ref, managed=True)
    existing = secrets.get(ref.name) or {}
    password = existing.get("password")
    ep.managed_credentials = {"username": existing.get("username") or USERNAME,
                              "password": password or new_password()}
    ep.url = existing.get(ref.key)  # None until the Secret has been applied once
    if ep.url is None:
        ep.problem = f"Secret {ref.name} is being created"
        ep.problem_reason = api.Reason.APP_NOT_READY
    return ep


def secrets_context(broker: Endpoint, backend: Endpoint | None) -> SecretsContext:
    return SecretsContext(
        broker_password=broker.managed_credentials.get("password"),
        broker_username=broker.managed_credentials.get("username") or USERNAME,
        result_backend_password=backend.managed_credentials.get("password") if backend else None)
