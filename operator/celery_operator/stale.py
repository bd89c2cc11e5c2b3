"""PURE: the RabbitMQ connections a restarted worker container left open, which the operator closes.

A worker whose connection died without a FIN (cut in its pod's network, a node that froze) is restarted
(its own heartbeat check, or its liveness probe), but RabbitMQ keeps the dead connection "running" until
its own heartbeat timeout (two missed heartbeats; Celery asks for 120 s, so minutes). Until then it
holds what the dead worker held: its prefetched messages, unacknowledged, out of every other worker's
reach, and the worker's exclusive remote-control queue (`<node>.celery.pidbox`), named after the pod,
so the restarted container, whose node name is the same, exits on RESOURCE_LOCKED at every start.

Only one worker container runs in a pod at a time, and its connections come from the pod's IP. So a
connection from a worker pod's IP opened before that pod's latest worker container started belongs to
an earlier container: it is dead, and closing it returns its messages to their queues (RabbitMQ
requeues what a closed connection left unacknowledged) and frees the pidbox queue. Each restart is
looked at once (one management request for all the app's pods); nothing is read between restarts.

The two clocks compared are the kubelet's (`startedAt`, whole seconds, rounded down) and RabbitMQ's
(`connected_at`, milliseconds): a container connects a second or more after it starts (Python and
Celery import first), so within that margin clocks kept by NTP never mistake a live connection for a
dead one. Nothing here does I/O; the poller reads the connections and closes them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_operator import api
from celery_operator.render.worker import CONTAINER

Body = dict[str, Any]


@dataclass(frozen=True)
class Restart:
    """A worker pod whose worker container has started again: from when its connections are its own."""

    pod: str
    pool: str
    ip: str
    started_at: float  # epoch seconds: the latest worker container's start
    restarts: int
    last_death: str  # how the container before it ended: "OOMKilled", "Error, exit code 1", ...

    @property
    def key(self) -> tuple[str, float]:
        return self.pod, self.started_at


@dataclass(frozen=True)
class Close:
    """One dead connection to close, and whose it was."""

    connection: str  # RabbitMQ's connection name ("10.244.0.7:41234 -> 10.244.0.3:5672")
    restart: Restart

    @property
    def reason(self) -> str:
        """What RabbitMQ logs and tells the connection (the management API's X-Reason)."""
        return (f"celery-operator: opened by an earlier worker container of pod {self.restart.pod}, "
                f"which has restarted; closed to return its unacknowledged messages")


def _epoch(timestamp: object) -> float | None:
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _latest_start(status: Mapping[str, Any]) -> float | None:
    """When the container that is running (or, crash-looping, last ran) started."""
    state = status.get("state") or {}
    for kind in ("running", "terminated"):
        if kind in state:
            return _epoch((state[kind] or {}).get("startedAt"))
    return _epoch(((status.get("lastState") or {}).get("terminated") or {}).get("startedAt"))


def _death(status: Mapping[str, Any]) -> str:
    t = (status.get("lastState") or {}).get("terminated") or (status.get("state") or {}).get("terminated") or {}
    reason = str(t.get("reason") or "unknown")
    return reason if reason == "OOMKilled" else f"{reason}, exit code {t.get('exitCode')}"


def restarts(pods: Iterable[Body]) -> list[Restart]:
    """The app's worker pods whose worker container has restarted (pods being deleted excepted)."""
    out = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        pool = (meta.get("labels") or {}).get(api.LABEL_POOL)
        ip = status.get("podIP")
        if not pool or not ip or meta.get("deletionTimestamp"):
            continue
        for c in status.get("containerStatuses") or []:
            if c.get("name") != CONTAINER or not int(c.get("restartCount") or 0):
                continue
            started = _latest_start(c)
            if started is not None:
                out.append(Restart(str(meta.get("name")), str(pool), str(ip), started, int(c["restartCount"]),
                                   _death(c)))
    return out


def pending(found: Sequence[Restart], handled: Mapping[str, float]) -> list[Restart]:
    """The restarts not looked at yet (`handled`: pod -> the container start last looked at)."""
    return [r for r in found if handled.get(r.pod) != r.started_at]


def closes(todo: Sequence[Restart], connections: Iterable[Mapping[str, Any]]) -> list[Close]:
    """The connections (RabbitMQ's management listing of the app's vhost) that `todo`'s pods opened before
    their latest worker container started."""
    by_ip = {r.ip: r for r in todo}
    out = []
    for c in connections:
        r = by_ip.get(str(c.get("peer_host")))
        at = c.get("connected_at")
        if r is None or not isinstance(at, (int, float)) or not c.get("name"):
            continue
        if at / 1000 < r.started_at:
            out.append(Close(str(c["name"]), r))
    return out
