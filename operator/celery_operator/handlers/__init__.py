"""kopf handlers: thin. Indexes hold the custom resources, events route changes to the runtime.

No handler here writes to an object (no on.create/update/delete: those write kopf's annotations and
finalizers); the reconciler owns every write, deletion from the broker included.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from celery_operator import api
from celery_operator.controller.observe import CR_PACKERS
from celery_operator.controller.runtime import app_key
from celery_operator.kube import login as kube_login

Body = dict[str, Any]


def _indexed(kind: str, body: kopf.Body) -> dict[tuple[str, str], bytes]:
    """Indexed by (namespace, app), kept as compact JSON (memory: thousands of objects)."""
    key = app_key(kind, dict(body))
    return {} if key is None else {key: CR_PACKERS[kind].pack(dict(body))}


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf logs in as the operator's own client does (kube.login), not with its defaults."""
    return kube_login.login()


@kopf.index(api.GROUP, api.VERSION, api.plural(api.APP))
def celery_apps(body: kopf.Body, **_: Any) -> dict[tuple[str, str], bytes]:
    return _indexed(api.APP, body)


@kopf.index(api.GROUP, api.VERSION, api.plural(api.EXCHANGE))
def celery_exchanges(body: kopf.Body, **_: Any) -> dict[tuple[str, str], bytes]:
    return _indexed(api.EXCHANGE, body)


@kopf.index(api.GROUP, api.VERSION, api.plural(api.QUEUE))
def celery_queues(body: kopf.Body, **_: Any) -> dict[tuple[str, str], bytes]:
    return _indexed(api.QUEUE, body)


@kopf.index(api.GROUP, api.VERSION, api.plural(api.POOL))
def celery_worker_pools(body: kopf.Body, **_: Any) -> dict[tuple[str, str], bytes]:
    return _indexed(api.POOL, body)


@kopf.index(api.GROUP, api.VERSION, api.plural(api.SCHEDULE))
def celery_beat_schedules(body: kopf.Body, **_: Any) -> dict[tuple[str, str], bytes]:
    return _indexed(api.SCHEDULE, body)


INDEXES = {api.APP: "celery_apps", api.EXCHANGE: "celery_exchanges", api.QUEUE: "celery_queues",
           api.POOL: "celery_worker_pools", api.SCHEDULE: "celery_beat_schedules"}


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """kopf passes the (still empty, then live) indexes to startup handlers by the index functions' names."""
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    await memo.runtime.start({kind: kwargs[index] for kind, index in INDEXES.items()})


@kopf.on.cleanup()
async def stop(*, memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.close()


def _event_handler(kind: str) -> None:
    @kopf.on.event(api.GROUP, api.VERSION, api.plural(kind), id=f"{kind}-event")
    async def on_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.notify(kind, str(event.get("type") or ""), dict(body))


for _kind in (api.APP, api.EXCHANGE, api.QUEUE, api.POOL, api.SCHEDULE):
    _event_handler(_kind)
