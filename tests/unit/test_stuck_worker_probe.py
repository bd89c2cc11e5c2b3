"""The worker's liveness probe (runtime/celery_operator_probe.py): what the worker records, and when the probe
restarts it (a silent consumer connection or idle slots beside ready messages, while the broker answers) or
not (a broker outage, an idle worker with empty queues, a worker shutting down)."""

from __future__ import annotations

import json
import os
import socket
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
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
                       "silent": None, "rhythm": None, "local": None, "connecting": None}
    recorder.on_worker_shutting_down()
    assert json.loads(path.read_text())["stopping"] is True


def test_the_worker_records_when_it_lost_its_broker_connection_and_counts_receipts_from_its_return(
        tmp_path: Path) -> None:
    clock = iter(float(t) for t in range(100, 200, 10))
    path = tmp_path / "state.json"
    recorder = probe.Recorder(str(path), clock=lambda: next(clock))
    recorder.on_connection_lost()  # before the first connection: nothing to record
    assert not path.exists()
    consumer = types.SimpleNamespace(controller=types.SimpleNamespace(concurrency=1), connection=None,
                                     task_consumer=types.SimpleNamespace(queues=[]))
    recorder.on_connected(consumer)
    recorder.on_connection_lost()
    lost = json.loads(path.read_text())
    assert lost["received"] < lost["connecting"] <= lost["time"]
    recorder.on_connection_lost()  # the steps stopped again before it was back: still the first loss
    assert json.loads(path.read_text()) == lost
    recorder.on_connected(consumer)
    back = json.loads(path.read_text())
    assert back["connecting"] is None and back["received"] > lost["connecting"]
    recorder.on_worker_shutting_down()
    recorder.on_connection_lost()  # the consumer's steps stop at shutdown too: that is no lost connection
    assert json.loads(path.read_text())["connecting"] is None


def test_the_recorder_is_a_step_of_the_apps_consumer_blueprint(tmp_path: Path) -> None:
    from celery import Celery

    app = Celery("t", set_as_current=False)
    probe.install(app, str(tmp_path / "state.json"))
    [step] = [s for s in app.steps["consumer"] if s.__name__ == "BrokerConnection"]
    assert step.requires == ("celery.worker.consumer.tasks:Tasks",)


def test_a_reconnecting_worker_is_judged_by_nothing_else_in_its_record() -> None:
    # Its record stands still while it reconnects: old, silent, idle; none of that is its fault.
    record = state(connecting=NOW - 90, time=NOW - 300, received=NOW - 500, silent=200.0)
    assert kinds(record) == ["reconnecting"]
    assert kinds(state(connecting=NOW - 90, stopping=True)) == []


@pytest.mark.parametrize(("answered_for", "live"), [
    (0.0, True), (probe.RECONNECT_GRACE_SECONDS, True), (probe.RECONNECT_GRACE_SECONDS + 1, False)])
def test_a_worker_reconnecting_after_an_outage_has_two_of_celerys_retry_pauses_once_the_broker_answers(
        answered_for: float, live: bool) -> None:
    found = probe.suspicions(state(connecting=NOW - 90), NOW, STUCK_AFTER, MAX_AGE)
    got, message = probe.decide(found, {}, answered_for=answered_for)
    assert got is live, message
    if not live:
        assert "lost the broker connection 90 s ago" in message and f"answered for {answered_for:.0f} s" in message
    assert probe.decide(found, None, "ConnectionRefusedError")[0]  # while the broker is away: never


def test_the_probe_counts_how_long_the_broker_has_answered_a_reconnecting_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, broker_up = [NOW], [False]

    def ready_messages(url: str, queues: list[str], config: dict[str, Any]) -> dict[str, int]:
        if not broker_up[0]:
            raise ConnectionRefusedError(111, "Connection refused")
        return {}

    monkeypatch.setattr(probe.time, "time", lambda: clock[0])
    monkeypatch.setattr(probe, "ready_messages", ready_messages)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state(connecting=NOW - 300, time=NOW - 300, received=NOW - 400)))

    def run() -> tuple[bool, str]:
        return probe.probe(str(path), STUCK_AFTER, MAX_AGE, "amqp://")

    live, message = run()
    assert live and "broker unreachable" in message
    broker_up[0] = True
    clock[0] += 10
    assert run() == (True, "ok (reconnecting; the broker has answered for 0 s, Celery's next attempt comes "
                           "within 30 s)")
    clock[0] += probe.RECONNECT_GRACE_SECONDS
    assert run()[0]
    clock[0] += 1
    live, message = run()
    assert not live and "has not reconnected, though the broker has answered for 61 s" in message
    broker_up[0] = False  # away again: counted anew from its return
    assert run()[0]
    broker_up[0] = True
    clock[0] += 100
    assert run()[0]
    clock[0] += 100
    assert not run()[0]
    # A later loss of the connection is counted from its own first answer, not from the earlier one's.
    path.write_text(json.dumps(state(connecting=clock[0] - 5, time=clock[0] - 5)))
    assert run()[0]


def test_the_probe_reads_the_names_the_operator_sets() -> None:
    assert probe.DEFAULT_WORKER_STATE_FILE == api.WORKER_STATE_FILE
    assert probe.ENV_WORKER_STATE_FILE == api.ENV_WORKER_STATE_FILE
    assert probe.DEFAULT_STUCK_AFTER_SECONDS == api.DEFAULT_STUCK_AFTER_SECONDS
    assert probe.DEFAULT_MAX_AGE_SECONDS == api.HEARTBEAT_MAX_AGE_SECONDS
    assert (probe.ENV_CONFIG_DIR, probe.ENV_BROKER_URL, probe.CONFIG_MOUNT_PATH, probe.CONFIG_JSON_KEY) == (
        api.ENV_CONFIG_DIR, api.ENV_BROKER_URL, api.CONFIG_MOUNT_PATH, api.CONFIG_JSON_KEY)
    assert (probe.ENV_HEALTH_PORT, probe.READY_PATH, probe.LIVE_PATH) == (
        api.ENV_HEALTH_PORT, api.READY_PATH, api.LIVE_PATH)


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


def get(server: Any, path: str) -> tuple[int, str]:
    """GET `path` from a probe server on loopback, as the kubelet does (any status is an answer)."""
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    server = probe.serve(0, str(tmp_path / "heartbeat"), str(tmp_path / "state.json"), host="127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


def test_the_worker_answers_readiness_from_its_heartbeat_files_age(tmp_path: Path, served: Any) -> None:
    assert get(served, f"{probe.READY_PATH}?maxAge=120") == (503, "no heartbeat yet: the worker is not ready\n")
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    assert get(served, f"{probe.READY_PATH}?maxAge=120") == (200, "ok\n")
    os.utime(heartbeat, (time.time() - 200, time.time() - 200))
    status, text = get(served, f"{probe.READY_PATH}?maxAge=120")
    assert status == 503 and "200 s old" in text
    assert get(served, f"{probe.READY_PATH}?maxAge=300")[0] == 200  # the pool's bound comes with the request
    assert get(served, "/metrics")[0] == 404


def test_the_worker_answers_liveness_with_the_probes_verdict_and_logs_a_failure(
        tmp_path: Path, served: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(probe, "ready_messages", lambda url, queues, config: {"celery": 4})
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state(time=time.time(), received=time.time())))
    assert get(served, f"{probe.LIVE_PATH}?stuckAfter=60&maxAge=120") == (200, "ok\n")
    assert not caplog.records
    path.write_text(json.dumps(state(time=time.time(), received=time.time() - 90)))
    assert get(served, f"{probe.LIVE_PATH}?stuckAfter=120&maxAge=120")[0] == 200  # idle, within this bound
    with caplog.at_level("WARNING", logger="celery_operator.probe"):
        status, text = get(served, f"{probe.LIVE_PATH}?stuckAfter=60&maxAge=120")
    assert status == 503 and text.startswith("celery-operator: stuck worker, restarting") and "celery=4" in text
    # The kubelet's Event keeps only the status code: the worker's log says why.
    assert [r.getMessage() for r in caplog.records] == [text.strip()]


def test_a_worker_started_with_a_health_port_answers_probes_from_its_main_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery, signals

    monkeypatch.setenv(probe.ENV_HEALTH_PORT, "0")  # any free port
    recorder = probe.install(Celery("t", set_as_current=False), str(tmp_path / "state.json"),
                             heartbeat_path=str(tmp_path / "heartbeat"))
    assert recorder.server is None
    signals.worker_init.send(sender=None)
    server = recorder.server
    assert server is not None
    try:
        assert get(server, probe.READY_PATH)[0] == 503
        (tmp_path / "heartbeat").touch()
        assert get(server, probe.READY_PATH) == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()
