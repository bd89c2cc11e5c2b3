"""`celery-operator render`: every object the operator would create for CR files, with no cluster.

Uses the operator's own code path (schema defaulting as the API server applies it, the Topology,
`render_all`), so a GitOps preview shows what the running operator will apply. Credentials of
managed servers are generated at run time and never known offline: they print as a placeholder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from celery_operator import api, schema
from celery_operator.models import (
    CeleryApp,
    CeleryBeatSchedule,
    CeleryExchange,
    CeleryQueue,
    CeleryWorkerPool,
)
from celery_operator.render import producer, render_all
from celery_operator.render.broker import SecretsContext
from celery_operator.topology import Topology

PLACEHOLDER_PASSWORD = "<generated-by-the-operator>"
_MODELS: dict[str, Any] = {api.EXCHANGE: CeleryExchange, api.QUEUE: CeleryQueue, api.POOL: CeleryWorkerPool,
                           api.SCHEDULE: CeleryBeatSchedule}


def _documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for p in paths:
        files += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml")) if p.is_dir() else [p]
    docs: list[dict[str, Any]] = []
    for f in files:
        docs += [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
    return docs


def render_documents(docs: list[dict[str, Any]], namespace: str = "default",
                     pod_monitor: bool = False) -> list[dict[str, Any]]:
    """`pod_monitor`: as on a cluster that serves Prometheus Operator's PodMonitor kind."""
    ours = [d for d in docs if d.get("apiVersion") == api.API_VERSION and d.get("kind") in api.KINDS]
    for i, d in enumerate(ours):
        md = d.setdefault("metadata", {})
        md.setdefault("namespace", namespace)
        md.setdefault("uid", f"offline-{i}")
        ours[i] = schema.apply_defaults(d["kind"], d)
    out: list[dict[str, Any]] = []
    for app_body in (d for d in ours if d["kind"] == api.APP):
        app = CeleryApp.of(app_body)
        parts = {k: [m.of(d) for d in ours if d["kind"] == k] for k, m in _MODELS.items()}
        topo = Topology.of(app, parts[api.EXCHANGE], parts[api.QUEUE], parts[api.POOL], parts[api.SCHEDULE])
        secrets = SecretsContext(broker_password=PLACEHOLDER_PASSWORD, result_backend_password=PLACEHOLDER_PASSWORD)
        opts = app.config.get("broker_transport_options")
        out += render_all(topo, secrets, broker_transport_options=opts if isinstance(opts, dict) else None,
                          pod_monitor=pod_monitor)
    return out


def render_files(paths: Iterable[Path], namespace: str = "default", pod_monitor: bool = False) -> str:
    return yaml.safe_dump_all(render_documents(_documents(paths), namespace, pod_monitor), sort_keys=False)


def producer_patch_files(paths: Iterable[Path], container: str, app_name: str | None = None,
                         namespace: str = "default") -> str:
    """The producer patch (`render.producer.producer_patch`) for the CeleryApp in the files."""
    apps = [schema.apply_defaults(api.APP, {**d, "metadata": {"namespace": namespace, **d.get("metadata", {})}})
            for d in _documents(paths) if d.get("apiVersion") == api.API_VERSION and d.get("kind") == api.APP]
    found = [a for a in apps if app_name is None or a["metadata"]["name"] == app_name]
    if len(found) != 1:
        names = ", ".join(a["metadata"]["name"] for a in apps) or "none"
        raise SystemExit(f"need exactly one CeleryApp{f' named {app_name}' if app_name else ''}; found: {names}")
    return yaml.safe_dump(producer.producer_patch(CeleryApp.of(found[0]), container), sort_keys=False)
