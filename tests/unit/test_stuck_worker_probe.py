"""The worker's liveness probe (runtime/celery_operator_probe.py): what the worker records, and when the probe
restarts it (a silent consumer connection or idle slots beside ready messages, while the broker answers) or
not (a broker outage, an idle worker with empty queues, a worker shutting down)."""

from __future__ import annotations

import json
import socket
import time
import types
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from celery_operator.runtime import celery_operator_probe as probe

NOW = 10_000.0
STUCK_AFTER = 60.0
MAX_AGE = 120.0


def state(**overrides: Any) -> dict[str, Any]:
    """A live idle worker's record: written just now, a task received a second ago, two free slots."""
    base = {"time": NOW - 1, "received": NOW - 1, "stopping": False, "free": 2, "queues": ["celery"],
            "silent": 5.0, "rhythm": 30.0, "local": "10.244.0.9:41234"}
    return {**base, **overrides}


def kinds(record: dict[str, Any] | None) -> list[str]:
    return [s.kind for s in probe.suspicions(record, NOW, STUCK_AFTER, MAX_AGE)]


def test_a_live_worker_raises_no_suspicion_so_the_probe_does_not_touch_the_broker() -> None:
    assert kinds(state()) == []
    assert probe.decide([], None) == (True, "ok")


@pytest.mark.parametrize(("record", "expected"), [
    (None, ["stalled"]),
    (state(time=NOW - 200), ["stalled"]),
    (state(silent=61.0), ["silent"]),
    (state(received=NOW - 61), ["idle"]),
    (state(received=NOW - 61, silent=90.0), ["silent", "idle"]),
])
def test_what_looks_stuck_in_the_workers_record(record: dict[str, Any] | None, expected: list[str]) -> None:
    assert kinds(record) == expected


@pytest.mark.parametrize(("record", "why"), [
    (state(silent=500.0, rhythm=None), "AMQP without heartbeats: a live connection may be silent for ever"),
    (state(silent=50.0, rhythm=30.0), "within twice the heartbeat rhythm and stuckAfterSeconds"),
    (state(silent=100.0, rhythm=60.0), "within twice the rhythm (heartbeat 120 s): silence is normal"),
    (state(received=NOW - 500, free=0), "no free slot: busy, not stuck"),
    (state(received=NOW - 500, queues=[]), "consumes nothing (drained by a scale-in)"),
    (state(received=NOW - 500, time=NOW - 500, stopping=True), "shutting down"),
    (state(time=NOW - 100, silent=None), "a solo task may hold the loop this long"),
])
def test_what_does_not_look_stuck(record: dict[str, Any], why: str) -> None:
    assert kinds(record) == [], why


def test_an_idle_worker_with_empty_queues_lives() -> None:
    found = probe.suspicions(state(received=NOW - 500), NOW, STUCK_AFTER, MAX_AGE)
    assert probe.decide(found, {"celery": 0}) == (True, "ok (idle, its queues are empty)")


def test_an_idle_worker_beside_ready_messages_is_restarted_and_told_why() -> None:
    found = probe.suspicions(state(received=NOW - 500, queues=["a", "b"]), NOW, STUCK_AFTER, MAX_AGE)
    live, message = probe.decide(found, {"a": 0, "b": 7})
    assert not live
    assert "2 free slot(s)" in message and "received no task for 500 s" in message and "b=7" in message


def test_a_silent_consumer_connection_is_restarted_even_with_empty_queues() -> None:
    found = probe.suspicions(state(silent=75.0), NOW, STUCK_AFTER, MAX_AGE)
    live, message = probe.decide(found, {"celery": 0})
    assert not live
    assert "10.244.0.9:41234" in message and "received nothing for 75 s" in message


@pytest.mark.parametrize("record", [state(silent=75.0), state(time=NOW - 500), state(received=NOW - 500), None])
def test_a_broker_outage_never_restarts_a_worker(record: dict[str, Any] | None) -> None:
    found = probe.suspicions(record, NOW, STUCK_AFTER, MAX_AGE)
    live, message = probe.decide(found, None, "ConnectionRefusedError: [Errno 111]")
    assert live and "not the worker's fault" in message


def test_the_probe_passes_without_a_broker_connection_when_the_broker_is_down(tmp_path: Path) -> None:
    # A free local port: nothing listens there, so the fresh connection is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state(time=time.time(), received=time.time() - 500)))
    for url in (f"amqp://guest:guest@127.0.0.1:{port}//", f"redis://127.0.0.1:{port}/0"):
        started = time.monotonic()
        live, message = probe.probe(str(path), STUCK_AFTER, MAX_AGE, url)
        assert live and "broker unreachable" in message, message
        assert time.monotonic() - started < 9  # within the probe's 10 s timeout


def test_the_kernel_tells_how_long_a_socket_has_received_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            peer.sendall(b"x")
            client.recv(1)
            time.sleep(0.3)
            silent = probe.silent_seconds(client)
            assert silent is not None and 0.25 <= silent < 5
    assert probe.silent_seconds(None) is None



def test_the_worker_records_its_free_slots_queues_and_last_receipt(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.worker import state as worker_state

    monkeypatch.setattr(worker_state, "reserved_requests", {object()})
    clock = iter([100.0, 101.0, 150.0, 160.0, 170.0, 180.0])
    path = tmp_path / "state.json"
    recorder = probe.Recorder(str(path), clock=lambda: next(clock))
    consumer = types.SimpleNamespace(
        controller=types.SimpleNamespace(concurrency=4), connection=None,
        task_consumer=types.SimpleNamespace(queues=[types.SimpleNamespace(name="celery")]))
    recorder.on_heartbeat()  # before the worker is ready: nothing written
    assert not path.exists()
    recorder.on_worker_ready(sender=consumer)
    recorder.on_task_received()
    recorder.on_heartbeat()
    written = json.loads(path.read_text())
    assert written == {"time": 170.0, "received": 160.0, "stopping": False, "free": 3, "queues": ["celery"],
                       "silent": None, "rhythm": None, "local": None}
    recorder.on_worker_shutting_down()
    assert json.loads(path.read_text())["stopping"] is True


def test_the_probe_reads_the_names_the_operator_sets() -> None:
    assert probe.DEFAULT_WORKER_STATE_FILE == api.WORKER_STATE_FILE
    assert probe.ENV_WORKER_STATE_FILE == api.ENV_WORKER_STATE_FILE
    assert probe.DEFAULT_STUCK_AFTER_SECONDS == api.DEFAULT_STUCK_AFTER_SECONDS
    assert probe.DEFAULT_MAX_AGE_SECONDS == api.HEARTBEAT_MAX_AGE_SECONDS
    assert (probe.ENV_CONFIG_DIR, probe.ENV_BROKER_URL, probe.CONFIG_MOUNT_PATH, probe.CONFIG_JSON_KEY) == (
        api.ENV_CONFIG_DIR, api.ENV_BROKER_URL, api.CONFIG_MOUNT_PATH, api.CONFIG_JSON_KEY)


def test_an_idle_workers_empty_queues_are_trusted_for_half_the_bound_then_asked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    ready = {"celery": 0}

    def ready_messages(url: str, queues: list[str], config: dict[str, Any]) -> dict[str, int]:
        asked.append(time.time())
        return dict(ready)

    monkeypatch.setattr(probe, "ready_messages", ready_messages)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state(time=time.time(), received=time.time() - 500)))
    assert probe.probe(str(path), STUCK_AFTER, MAX_AGE, "redis://") == (True, "ok (idle, its queues are empty)")
    live, message = probe.probe(str(path), STUCK_AFTER, MAX_AGE, "redis://")
    assert live and "were empty" in message and len(asked) == 1
    (tmp_path / "state.json.empty").write_text(json.dumps({"time": time.time() - STUCK_AFTER / 2 - 1}))
    ready["celery"] = 3
    live, message = probe.probe(str(path), STUCK_AFTER, MAX_AGE, "redis://")
    assert not live and "celery=3" in message and len(asked) == 2
