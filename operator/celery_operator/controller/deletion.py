"""`deletionPolicy: Delete`: remove an exchange or queue from the broker when its CR goes.

Bounded: when the app, its broker Secret or the broker itself is gone, the finalizer is released
(with a Warning Event) instead of blocking the deletion forever.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from celery_operator import api
from celery_operator.brokers import connect
from celery_operator.brokers.base import BrokerError
from celery_operator.controller.connections import resolve
from celery_operator.controller.runtime import Runtime
from celery_operator.models import CeleryApp, CeleryExchange, CeleryQueue

log = logging.getLogger(__name__)
GIVE_UP_AFTER_SECONDS = 60.0


class RetryLater(Exception):
    """The broker did not answer; try again (the handler maps this to kopf.TemporaryError)."""


def _age(body: dict[str, Any]) -> float:
    ts = body["metadata"].get("deletionTimestamp")
    if not ts:
        return 0.0
    t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - t).total_seconds()


async def delete_from_broker(runtime: Runtime, kind: str, body: dict[str, Any]) -> None:
    obj: CeleryQueue | CeleryExchange = CeleryQueue.of(body) if kind == api.QUEUE else CeleryExchange.of(body)
    ns = obj.meta.namespace
    what = f"{'queue' if kind == api.QUEUE else 'exchange'} {obj.name}"
    runtime.trigger(ns, obj.app_name)  # the app's config drops the object at once
    app_body = await runtime.client.get(api.APP, ns, obj.app_name)
    if app_body is None or app_body["metadata"].get("deletionTimestamp"):
        await runtime.recorder.warning(body, api.Reason.RETAINED_ON_BROKER,
                                       f"{what} left on the broker: CeleryApp {obj.app_name} is gone")
        return
    app = CeleryApp.of(app_body)
    endpoint = await resolve(runtime.client, app, app.broker, "broker")
    opts = app.config.get("broker_transport_options")
    transport_options = opts if isinstance(opts, dict) else None
    if endpoint.url is None:
        await runtime.recorder.warning(body, api.Reason.RETAINED_ON_BROKER,
                                       f"{what} left on the broker: {endpoint.problem}")
        return
    url, mgmt = endpoint.url, endpoint.management_url

    def run() -> None:
        with connect(url, management_url=mgmt, transport_options=transport_options) as b:
            if kind == api.QUEUE:
                b.delete_queue(obj.name)
            else:
                b.delete_exchange(obj.name)

    try:
        await asyncio.to_thread(run)
    except BrokerError as e:
        if _age(body) > GIVE_UP_AFTER_SECONDS:
            await runtime.recorder.warning(body, api.Reason.RETAINED_ON_BROKER,
                                           f"{what} left on the broker after {GIVE_UP_AFTER_SECONDS:.0f}s: {e}")
            return
        raise RetryLater(str(e)) from None
    await runtime.recorder.normal(body, api.Reason.DELETED_FROM_BROKER, f"{what} deleted from the broker")
