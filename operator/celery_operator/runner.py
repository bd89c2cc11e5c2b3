"""`celery-operator run`: the HTTP port, the shard leases, kopf with our handlers, the controller.

Every replica runs kopf (its watches feed the caches) and works the apps of the shards it holds
(kube.shards); with one shard (the default) that is leader election with hot standbys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

import kopf

from celery_operator import heap, httpserver
from celery_operator.controller.runtime import RESYNC_SECONDS, Runtime
from celery_operator.kube.client import KubeClient
from celery_operator.kube.shards import ShardManager
from celery_operator.metrics import DEFAULT as DEFAULT_METRICS

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    namespaces: list[str] = field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8080
    leader_election: bool = True
    lease_name: str = "celery-operator"
    lease_namespace: str = "default"
    identity: str | None = None
    shards: int = 1
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    resync_seconds: float = RESYNC_SECONDS
    verbose: bool = False


def run(opts: RunOptions) -> int:
    return asyncio.run(_run(opts))


async def _ticker(health: httpserver.Health, stop: asyncio.Event, shards: ShardManager | None) -> None:
    while not stop.is_set():
        health.beat()
        if shards is not None:
            held = sorted(s for s in shards.held if shards.holds(s))
            health.role = f"shards {held} of {shards.shards}" if held else "standby"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _trim_heap(stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), heap.TRIM_SECONDS)
        heap.trim()


async def _run(opts: RunOptions) -> int:
    import celery_operator.handlers  # noqa: F401 - registers the kopf handlers

    heap.limit_arenas()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    health = httpserver.Health()
    metrics = DEFAULT_METRICS
    server = await httpserver.start(opts.host, opts.port, health, metrics.exposition)
    port = server.addresses[0][1] if server.addresses else opts.port
    log.info("serving /healthz, /readyz and /metrics on %s:%s", opts.host, port)
    client = await KubeClient.login()
    identity = opts.identity or f"{socket.gethostname()}-{os.getpid()}"
    client.identity = identity
    shards = None
    if opts.leader_election:
        shards = ShardManager(client, opts.lease_namespace, opts.lease_name, identity, shards=opts.shards,
                              lease_seconds=opts.lease_seconds, renew_deadline_seconds=opts.renew_deadline_seconds,
                              retry_seconds=opts.retry_seconds)
        log.info("sharding: %d shard(s) on leases %s/%s-shard-*, as %s", opts.shards, opts.lease_namespace,
                 opts.lease_name, identity)
    runtime = Runtime(client, metrics, list(opts.namespaces), shards, resync_seconds=opts.resync_seconds)
    ticker = asyncio.create_task(_ticker(health, stop, shards))
    trimmer = asyncio.create_task(_trim_heap(stop))
    health.role = "starting" if shards else "all apps"
    code = 0
    try:
        code = await _operate(opts, stop, health, runtime)
    finally:
        health.ready = False
        stop.set()
        await ticker
        await trimmer
        await runtime.close()
        await client.close()
        await server.cleanup()
    log.info("stopped (exit %s)", code)
    return code


async def _operate(opts: RunOptions, stop: asyncio.Event, health: httpserver.Health, runtime: Runtime) -> int:
    kopf_stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    operator = asyncio.create_task(kopf.operator(
        clusterwide=not opts.namespaces, namespaces=opts.namespaces, standalone=True,
        stop_flag=kopf_stop, ready_flag=ready, memo=kopf.Memo(runtime=runtime)))

    def on_ready(_: object) -> None:
        # kopf installs its own SIGTERM/SIGINT handlers at start; take them back so a signal
        # stops kopf through our path (graceful, leases released).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health.ready = True

    ready.add_done_callback(on_ready)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, operator], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not kopf_stop.done():
        kopf_stop.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(operator), 30)
    except TimeoutError:
        operator.cancel()
    except Exception as e:  # noqa: BLE001
        log.error("kopf stopped with an error: %s", e)
        return 1
    # kopf returns on its own only when it got a signal before it was ready: a clean stop.
    return 0


__all__ = ["RunOptions", "run"]
