"""The operator's one HTTP port: /healthz (liveness), /readyz (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Health:
    """What the probes read. `beat()` is called by the event loop's own ticker: a wedged loop fails liveness."""

    last_beat: float = field(default_factory=time.monotonic)
    ready: bool = False
    role: str = "starting"  # starting | all apps (one replica, no shards) | shards [<held>] of <n> | standby
    stale_after: float = 30.0

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.stale_after


async def start(host: str, port: int, health: Health, exposition: Callable[[], bytes]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        if health.alive():
            return web.json_response({"status": "ok", "role": health.role})
        return web.json_response({"status": "stalled", "role": health.role}, status=503)

    async def readyz(_: web.Request) -> web.Response:
        ok = health.ready and health.alive()
        return web.json_response({"ready": ok, "role": health.role}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
