"""Which RabbitMQ connections a restarted worker container left open (stale.py), without servers."""

from __future__ import annotations

import datetime
from typing import Any

from celery_operator import api, stale

EPOCH_10_00 = datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.UTC).timestamp()


def pod(name: str, ip: str | None, container: dict[str, Any], *, pool: str = "w", deleting: bool = False,
        container_name: str = "worker") -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "labels": {api.LABEL_APP: "proj", api.LABEL_POOL: pool}}
    if deleting:
        md["deletionTimestamp"] = "2026-12-01T10:05:00Z"
    status: dict[str, Any] = {"containerStatuses": [{"name": container_name, **container}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": md, "status": status}


RUNNING_AGAIN = {"restartCount": 1, "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}},
                 "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                              "startedAt": "2026-12-01T09:00:00Z"}}}
CRASH_LOOPING = {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "startedAt": "2026-12-01T10:00:00Z"}}}
OOM_KILLED = {"restartCount": 1, "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}},
              "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}


def conn(name: str, ip: str, at: float) -> dict[str, Any]:
    return {"name": name, "peer_host": ip, "connected_at": int(at * 1000)}


def test_a_restarted_worker_container_starts_from_its_current_or_crash_looping_start() -> None:
    pods = [pod("a", "10.0.0.1", RUNNING_AGAIN), pod("b", "10.0.0.2", CRASH_LOOPING),
            pod("c", "10.0.0.3", OOM_KILLED, pool="p2")]
    found = stale.restarts(pods)
    assert [(r.pod, r.pool, r.ip, r.started_at, r.restarts) for r in found] == [
        ("a", "w", "10.0.0.1", EPOCH_10_00, 1), ("b", "w", "10.0.0.2", EPOCH_10_00, 3),
        ("c", "p2", "10.0.0.3", EPOCH_10_00, 1)]
    assert [r.last_death for r in found] == ["Error, exit code 1", "Error, exit code 1", "OOMKilled"]


def test_pods_never_restarted_without_an_ip_being_deleted_or_of_other_containers_are_left_alone() -> None:
    fresh = {"restartCount": 0, "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}}}
    assert stale.restarts([pod("a", "10.0.0.1", fresh), pod("b", None, RUNNING_AGAIN),
                           pod("c", "10.0.0.3", RUNNING_AGAIN, deleting=True),
                           pod("d", "10.0.0.4", RUNNING_AGAIN, container_name="sidecar"),
                           pod("e", "10.0.0.5", {"restartCount": 1, "state": {"running": {"startedAt": "bad"}}})]) == []


def test_only_connections_from_the_pod_opened_before_its_latest_container_started_are_closed() -> None:
    [r] = stale.restarts([pod("a", "10.0.0.1", RUNNING_AGAIN)])
    listed = [conn("old", "10.0.0.1", EPOCH_10_00 - 3600), conn("just-before", "10.0.0.1", EPOCH_10_00 - 0.001),
              conn("new", "10.0.0.1", EPOCH_10_00 + 2), conn("other-pod", "10.0.0.9", EPOCH_10_00 - 3600),
              {"name": "no-time", "peer_host": "10.0.0.1"}, {"peer_host": "10.0.0.1", "connected_at": 1}]
    closes = stale.closes([r], listed)
    assert [c.connection for c in closes] == ["old", "just-before"]
    assert "pod a" in closes[0].reason and closes[0].reason.isascii()  # an HTTP header: X-Reason


def test_each_container_start_is_looked_at_once() -> None:
    [r] = stale.restarts([pod("a", "10.0.0.1", RUNNING_AGAIN)])
    assert stale.pending([r], {}) == [r]
    assert stale.pending([r], {"a": EPOCH_10_00}) == []
    assert stale.pending([r], {"a": EPOCH_10_00 - 60}) == [r]  # it restarted again since
