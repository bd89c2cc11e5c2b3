"""`celery-operator run`: the HTTP port, leader election, then kopf with our handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import kopf

from celery_operator import httpserver
from celery_operator.kube.client import KubeClient
from celery_operator.kube.leader import LeaderElector
from celery_operator.metrics import DEFAULT as DEFAULT_METRICS
from celery_operator.metrics import OperatorMetrics as Metrics

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
    verbose: bool = False


def run(opts: RunOptions) -> int:
    return asyncio.run(_run(opts))


async def _ticker(health: httpserver.Health, stop: asyncio.Event) -> None:
    while not stop.is_set():
        health.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def _run(opts: RunOptions) -> int:
    import celery_operator.handlers  # noqa: F401 - registers the kopf handlers

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    health = httpserver.Health()
    metrics = DEFAULT_METRICS
    runner = await httpserver.start(opts.host, opts.port, health, metrics.exposition)
    port = runner.addresses[0][1] if runner.addresses else opts.port
    log.info("serving /healthz, /readyz and /metrics on %s:%s", opts.host, port)
    ticker = asyncio.create_task(_ticker(health, stop))
    client = await KubeClient.login()
    elector: LeaderElector | None = None
    code = 0
    try:
        if opts.leader_election:
            identity = opts.identity or f"{socket.gethostname()}-{os.getpid()}"
            elector = LeaderElector(client, opts.lease_namespace, opts.lease_name, identity)
            health.role, health.ready = "follower", True
            if not await elector.acquire(stop):
                return 0
        health.role = "leader"
        code = await _operate(opts, stop, elector, health, metrics)
    finally:
        health.ready = False
        if elector is not None:
            await elector.release()
        stop.set()
        await ticker
        await client.close()
        await runner.cleanup()
    log.info("stopped (exit %s)", code)
    return code


async def _operate(opts: RunOptions, stop: asyncio.Event, elector: LeaderElector | None,
                   health: httpserver.Health, metrics: Metrics) -> int:
    kopf_stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    clusterwide = not opts.namespaces
    operator = asyncio.create_task(kopf.operator(
        clusterwide=clusterwide, namespaces=opts.namespaces, standalone=True,
        stop_flag=kopf_stop, ready_flag=ready, memo=kopf.Memo(metrics=metrics)))
    waiters: list[asyncio.Future[Any]] = [asyncio.create_task(stop.wait()), operator]
    keeper = None
    if elector is not None:
        keeper = asyncio.create_task(elector.keep(stop))
        waiters.append(keeper)
    def on_ready(_: object) -> None:
        # kopf installs its own SIGTERM/SIGINT handlers at start; take them back so a signal
        # stops kopf through our path (graceful, lease released).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health.ready = True

    ready.add_done_callback(on_ready)
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    lost = keeper is not None and keeper in done and not stop.is_set()
    if not kopf_stop.done():
        kopf_stop.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(operator), 30)
    except TimeoutError:
        operator.cancel()
    except Exception as e:  # noqa: BLE001
        log.error("kopf stopped with an error: %s", e)
        return 1
    finally:
        if keeper is not None and not keeper.done():
            stop.set()
            await keeper
    if lost:
        log.error("exiting: leadership lost")
        return 1
    # kopf returns on its own only when it got a signal before it was ready: a clean stop.
    return 0
