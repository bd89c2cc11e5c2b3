"""The I/O of closing the RabbitMQ connections restarted worker containers left open (see `stale.py`).

Called by the poller after a poll that reached the broker. It reads no pods: the reconciler, which reads
them on every pod change, leaves the restarts it saw in the app's state. Between worker restarts it does
nothing; on a restart not looked at yet it lists the vhost's connections (one management request) and
closes the dead ones, with a Normal Event on the pool per pod. A failure is logged and the restart
looked at again on the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from celery_operator import api, stale
from celery_operator.brokers import BrokerError
from celery_operator.brokers.rabbitmq import RabbitMQBroker
from celery_operator.brokers.urls import broker_kind
from celery_operator.controller.observe import ClusterCache
from celery_operator.controller.state import AppState
from celery_operator.controller.workqueue import AppKey
from celery_operator.kube.events import Recorder

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 20.0  # the listing, and each close


@dataclass
class StaleConnections:
    cache: ClusterCache
    recorder: Recorder
    # Per app, pod -> the container start whose earlier connections were closed (its own: no one else writes it).
    seen: dict[AppKey, dict[str, float]] = field(default_factory=dict)

    def forget(self, key: AppKey) -> None:
        self.seen.pop(key, None)

    async def close(self, key: AppKey, state: AppState) -> None:
        broker = state.broker
        if broker is None or broker.url is None or broker_kind(broker.url) != "rabbitmq":
            return
        found = state.reconciled.worker_restarts
        alive = {r.pod for r in found}
        seen = self.seen[key] = {pod: t for pod, t in self.seen.get(key, {}).items() if pod in alive}
        todo = stale.pending(found, seen)
        if not todo:
            return
        rabbitmq = RabbitMQBroker(broker.url, broker.management_url)
        try:
            listed = await asyncio.wait_for(asyncio.to_thread(rabbitmq.connections), TIMEOUT_SECONDS)
        except (BrokerError, TimeoutError) as e:
            log.warning("%s/%s: the connections of restarted workers not checked (next poll): %s", *key,
                        e or "no answer in time")
            return
        failed: set[str] = set()
        closed: dict[str, list[str]] = {}
        for c in stale.closes(todo, listed):
            try:
                await asyncio.wait_for(asyncio.to_thread(rabbitmq.close_connection, c.connection, c.reason),
                                       TIMEOUT_SECONDS)
            except (BrokerError, TimeoutError) as e:
                log.warning("%s/%s: connection %s of pod %s not closed (next poll): %s", *key, c.connection,
                            c.restart.pod, e or "no answer in time")
                failed.add(c.restart.pod)
                continue
            closed.setdefault(c.restart.pod, []).append(c.connection)
        crs = self.cache.crs(key)
        for r in todo:
            if r.pod in failed:
                continue
            seen[r.pod] = r.started_at
            names = closed.get(r.pod)
            if not names:
                continue
            log.info("%s/%s: closed %d connection(s) of pod %s's earlier worker container: %s", *key, len(names),
                     r.pod, ", ".join(names))
            body = crs.get((api.POOL, r.pool))
            if body is not None:
                await self.recorder.emit(
                    body, "Normal", api.Reason.STALE_CONNECTIONS_CLOSED,
                    f"pod {r.pod}'s worker container restarted ({r.restarts} restarts, the last one ended: "
                    f"{r.last_death}); "
                    f"RabbitMQ still held {len(names)} connection(s) of the earlier one open, with its "
                    f"unacknowledged messages and its control queue: closed them ({', '.join(names)})",
                    dedupe=False)
