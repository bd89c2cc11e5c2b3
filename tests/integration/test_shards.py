"""Shard leases on a real API server: fair split, takeover within the lease, no acting past the deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from celery_operator.kube.client import KubeClient
from celery_operator.kube.shards import ShardManager, current_shard
from localenv.controlplane import ControlPlane
from tests.fixtures.kube_async import kube_client, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
LEASE, RENEW, RETRY = 3, 2.0, 0.3


def _manager(client: KubeClient, ns: str, identity: str, shards: int) -> ShardManager:
    return ShardManager(client, ns, "op", identity, shards=shards, lease_seconds=LEASE,
                        renew_deadline_seconds=RENEW, retry_seconds=RETRY)


def test_replicas_split_the_shards_and_a_survivor_takes_a_dead_ones_within_the_lease(
        control_plane: ControlPlane, namespace: str) -> None:
    async def run() -> tuple[list[int], float]:
        clients = [await kube_client(control_plane) for _ in range(2)]
        a, b = (_manager(c, namespace, n, shards=4) for c, n in zip(clients, ("a", "b"), strict=True))
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.create_task(a.run(stop_a))
        tb = asyncio.create_task(b.run(stop_b))
        try:
            await until(lambda: len(a.held) == 2 and len(b.held) == 2, 30)
            split = sorted([len(a.held), len(b.held)])
            # `a` dies without releasing anything (no graceful stop): `b` waits for the leases to expire.
            ta.cancel()
            a.held.clear()
            died = time.monotonic()
            await until(lambda: len(b.held) == 4, 30)
            takeover = time.monotonic() - died
        finally:
            stop_b.set()
            await tb
            for c in clients:
                await c.close()
        return split, takeover

    split, takeover = asyncio.run(run())
    assert split == [2, 2]
    assert takeover <= LEASE + 2 * RETRY + 1, takeover


def test_a_replica_past_its_renew_deadline_refuses_to_write(control_plane: ControlPlane, namespace: str) -> None:
    async def run() -> tuple[bool, bool, bool]:
        client = await kube_client(control_plane)
        m = _manager(client, namespace, "solo", shards=1)
        stop = asyncio.Event()
        task = asyncio.create_task(m.run(stop))
        try:
            await until(lambda: m.holds(0), 10)
            for_no_app = m.guard()  # a write made outside any app's shard
            current_shard.set(0)
            while_held = m.guard()
            m.held[0] = time.monotonic() - RENEW - 0.1  # as if renewals had stalled (a paused process)
            after_deadline = m.guard()
        finally:
            stop.set()
            await task
            await client.close()
        return for_no_app, while_held, after_deadline

    assert asyncio.run(run()) == (False, True, False)


def test_a_graceful_stop_releases_the_lease_for_an_immediate_takeover(control_plane: ControlPlane,
                                                                       namespace: str) -> None:
    async def run() -> float:
        clients = [await kube_client(control_plane) for _ in range(2)]
        a, b = (_manager(c, namespace, n, shards=1) for c, n in zip(clients, ("a", "b"), strict=True))
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.create_task(a.run(stop_a))
        await until(lambda: a.holds(0), 10)
        tb = asyncio.create_task(b.run(stop_b))
        await asyncio.sleep(1)
        assert not b.held
        stop_a.set()
        await ta
        t0 = time.monotonic()
        await until(lambda: b.holds(0), 10)
        took = time.monotonic() - t0
        stop_b.set()
        await tb
        for c in clients:
            await c.close()
        return took

    assert asyncio.run(run()) < LEASE
