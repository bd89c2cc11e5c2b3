"""Whether apps get a PodMonitor: only where the cluster serves that kind (Prometheus Operator's CRD).

The answer comes from API discovery and is kept for `RECHECK_SECONDS`, so installing Prometheus
Operator after celery-operator gives every app its PodMonitor within that time plus one resync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from celery_operator import api
from celery_operator.kube.client import ApiError, KubeClient

log = logging.getLogger(__name__)

RECHECK_SECONDS = 300.0


@dataclass
class PodMonitorSupport:
    """The answer, asked once per `recheck_seconds`: apps reconciled at once (a resync of every app)
    wait for the one question in flight rather than each asking."""

    recheck_seconds: float = RECHECK_SECONDS
    _served: bool | None = None
    _checked_at: float = 0.0
    _asking: asyncio.Task[bool] | None = None

    async def served(self, client: KubeClient) -> bool:
        if self._served is not None and time.monotonic() - self._checked_at < self.recheck_seconds:
            return self._served
        asking = self._asking
        if asking is None or asking.done() or asking.get_loop() is not asyncio.get_running_loop():
            asking = self._asking = asyncio.ensure_future(self._ask(client))
        return await asyncio.shield(asking)  # a caller cancelled does not cancel the others' answer

    async def _ask(self, client: KubeClient) -> bool:
        try:
            served = await client.serves(api.MONITORING_API_VERSION, api.POD_MONITOR_PLURAL)
        except ApiError as e:  # keep the last answer; ask again next time
            log.warning("cannot tell whether %s is served: %s", api.POD_MONITOR, e)
            return bool(self._served)
        if served != self._served:
            log.info("%s (%s) %s", api.POD_MONITOR, api.MONITORING_API_VERSION,
                     "served: every app gets one" if served else "not served: apps get none")
        self._served, self._checked_at = served, time.monotonic()
        return served


# One cluster per operator process: one answer for every app.
POD_MONITORS = PodMonitorSupport()
