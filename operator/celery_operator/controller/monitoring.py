"""Whether apps get a PodMonitor: only where the cluster serves that kind (Prometheus Operator's CRD).

The answer comes from API discovery and is kept for `RECHECK_SECONDS`, so installing Prometheus
Operator after celery-operator gives every app its PodMonitor within that time plus one resync.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery_operator import api
from celery_operator.kube.client import ApiError, KubeClient

log = logging.getLogger(__name__)

RECHECK_SECONDS = 300.0


@dataclass
class PodMonitorSupport:
    recheck_seconds: float = RECHECK_SECONDS
    _served: bool | None = None
    _checked_at: float = 0.0

    async def served(self, client: KubeClient) -> bool:
        if self._served is None or time.monotonic() - self._checked_at >= self.recheck_seconds:
            try:
                served = await client.serves(api.MONITORING_API_VERSION, api.POD_MONITOR_PLURAL)
            except ApiError as e:  # keep the last answer; ask again next time
                log.warning("cannot tell whether %s is served: %s", api.POD_MONITOR, e)
                return bool(self._served)
            if served != self._served:
                log.info("%s (%s) %s", api.POD_MONITOR, api.MONITORING_API_VERSION,
                         "served: every app gets one" if served else "not served: apps get none")
            self._served, self._checked_at = served, time.monotonic()
        return self._served


# One cluster per operator process: one answer for every app.
POD_MONITORS = PodMonitorSupport()
