"""Whether the cluster serves PodMonitors is asked of the real API server once per period, not once per app."""

from __future__ import annotations

import asyncio

import pytest

from celery_operator.controller.monitoring import PodMonitorSupport
from localenv.controlplane import ControlPlane
from tests.fixtures.kube_async import kube_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_apps_reconciled_at_once_share_one_discovery_request_per_recheck_period(control_plane: ControlPlane) -> None:
    async def run() -> tuple[set[bool], int, int]:
        client = await kube_client(control_plane)
        try:
            support = PodMonitorSupport(recheck_seconds=3600)
            answers = await asyncio.gather(*(support.served(client) for _ in range(16)))  # a resync's workers
            first = client.requests["GET"]
            await asyncio.gather(*(support.served(client) for _ in range(16)))  # within the period: cached
            support.recheck_seconds = 0  # the period passed: one more question, again shared
            await asyncio.gather(*(support.served(client) for _ in range(16)))
            return set(answers), first, client.requests["GET"]
        finally:
            await client.close()

    answers, first, total = asyncio.run(run())
    assert len(answers) == 1  # one answer for every caller
    assert (first, total) == (1, 2)
