"""kopf handlers: thin; they route events to the controller runtime."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from celery_operator import api
from celery_operator.controller.deletion import RetryLater, delete_from_broker
from celery_operator.controller.runtime import Runtime


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    memo.runtime = await Runtime.create(memo.metrics)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.close()


@kopf.on.event(api.GROUP, api.VERSION, api.plural(api.APP))
async def app_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    md = body.metadata
    if event["type"] == "DELETED":
        memo.runtime.stop_app(md.namespace, md.name)
    else:
        memo.runtime.ensure(md.namespace, md.name)


def _child_handler(kind: str) -> None:
    @kopf.on.event(api.GROUP, api.VERSION, api.plural(kind), id=f"{kind}-event")
    async def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        app = (body.spec.get("appRef") or {}).get("name")
        if not app:
            return
        if not memo.runtime.trigger(body.metadata.namespace, app) and event["type"] != "DELETED":
            await memo.runtime.orphan(kind, dict(body))


for _kind in (api.EXCHANGE, api.QUEUE, api.POOL, api.SCHEDULE):
    _child_handler(_kind)


@kopf.on.event("apps", "v1", "deployments", labels={api.LABEL_MANAGED_BY: api.OPERATOR_NAME})
async def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    app = body.metadata.labels.get(api.LABEL_APP)
    if app:
        memo.runtime.trigger(body.metadata.namespace, app)


@kopf.on.event("", "v1", "configmaps", labels={api.LABEL_MANAGED_BY: api.OPERATOR_NAME})
async def configmap_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    app = body.metadata.labels.get(api.LABEL_APP)
    if app:
        memo.runtime.trigger(body.metadata.namespace, app)


def _deletes_on_broker(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("deletionPolicy") == "Delete")


def _delete_handler(kind: str) -> None:
    @kopf.on.delete(api.GROUP, api.VERSION, api.plural(kind), when=_deletes_on_broker, id=f"{kind}-delete")
    async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        try:
            await delete_from_broker(memo.runtime, kind, dict(body))
        except RetryLater as e:
            raise kopf.TemporaryError(str(e), delay=5) from None


for _kind in (api.EXCHANGE, api.QUEUE):
    _delete_handler(_kind)
