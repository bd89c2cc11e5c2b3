"""The beat scheduler the ConfigMap ships, run as real `celery beat` processes on the real API server.

Each beat runs the exact command and env the operator renders, with the service-account token of the
ServiceAccount the operator renders, bound by the Role it renders (so beat needs nothing more), and
talks to the API server as an in-cluster client. Messages land on a real Redis broker with no worker:
the test reads every message beat sent, with its scheduled-time header and task id.

Killing or pausing a beat right after it has sent (watched on the broker) keeps those tests away from
the one window the design leaves open (a beat killed in the milliseconds between claiming a run and
sending it loses that run; README, "Beat").
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from celery_operator import api, schedule
from celery_operator.config import celery_config, config_json, module_sources
from celery_operator.models import CeleryApp, CeleryBeatSchedule, SecretKeyRef
from celery_operator.render import beat
from celery_operator.topology import Topology
from localenv.controlplane import ControlPlane
from localenv.procs import REPO, spawn, stop, tail
from tests.fixtures.brokers import RedisDb
from tests.unit import crs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

QUEUE = "celery"  # crs.app's default queue: the entries' tasks are not routed elsewhere
TASK = "sample_tasks.tasks.add"


def topology(namespace: str, entries: list[dict[str, Any]]) -> Topology:
    app_spec = {"image": "unused", "app": "sample_tasks.app",
                "broker": {"external": {"urlSecretRef": {"name": "broker"}}},
                "defaultQueue": QUEUE, "defaultExchange": QUEUE, "defaultRoutingKey": QUEUE}
    app = CeleryApp.of(crs.body(api.APP, "proj", app_spec, namespace=namespace))
    sched = CeleryBeatSchedule.of(crs.body(api.SCHEDULE, "ticks", {"appRef": {"name": "proj"}, "timezone": "UTC",
                                                                   "entries": entries}, namespace=namespace))
    return Topology.of(app, schedules=[sched])


@dataclass
class Beat:
    name: str
    proc: Any
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class BeatWorld:
    cp: ControlPlane
    ns: str
    topo: Topology
    broker: RedisDb
    env: dict[str, str]
    tmp: Path
    beats: list[Beat] = field(default_factory=list)

    def start(self, name: str) -> Beat:
        log = self.tmp / f"{name}.log"
        celery_bin = str(Path(sys.executable).with_name("celery"))
        env = {**self.env, api.ENV_POD_NAME: name}
        b = Beat(name, spawn([celery_bin, *beat.beat_command()[1:]], log, env=env, cwd=self.tmp, tied=True), log)
        self.beats.append(b)
        return b

    def lease(self) -> dict[str, Any]:
        got = self.cp.read(f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases/proj-beat") or {}
        return dict(got.get("spec") or {})

    def holder(self) -> str:
        return str(self.lease().get("holderIdentity") or "")

    def state(self) -> schedule.State:
        got = self.cp.read(f"/api/v1/namespaces/{self.ns}/configmaps/proj-beat-state") or {}
        return schedule.State.of_json((got.get("data") or {}).get(schedule.STATE_KEY))

    def messages(self) -> list[dict[str, Any]]:
        """Every message on the broker, oldest first (kombu's Redis transport pushes on the left)."""
        with self.broker.client() as c:
            raw = c.lrange(QUEUE, 0, -1)
        return [json.loads(m) for m in reversed(raw)]

    def sent(self) -> int:
        with self.broker.client() as c:
            return int(c.llen(QUEUE))

    def runs(self) -> Counter[tuple[str, int]]:
        """(entry, scheduled time) -> messages sent for it."""
        out: Counter[tuple[str, int]] = Counter()
        for m in self.messages():
            h = m["headers"]
            entry = json.loads(base64.b64decode(m["body"]))[0][0]  # each entry's args name it (below)
            out[(entry, schedule.from_rfc3339(h[api.BEAT_SCHEDULED_TIME_HEADER]))] += 1
        return out

    def right_after_a_send(self, timeout: float = 30) -> None:
        """Return as soon as a new message arrives: the sender is then outside its claim-and-send step."""
        before = self.sent()
        until(lambda: self.sent() > before, timeout, "a message sent", self.beats, interval=0.01)


def until(check: Callable[[], Any], timeout: float, what: str, beats: list[Beat], interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    logs = "\n".join(f"--- {b.name}\n{tail(b.log, 40)}" for b in beats)
    raise AssertionError(f"{what} not within {timeout}s\n{logs}")


@pytest.fixture
def world(control_plane: ControlPlane, namespace: str, redis_db: RedisDb, tmp_path: Path) -> Iterator[
        Callable[[list[dict[str, Any]]], BeatWorld]]:
    made: list[BeatWorld] = []

    def make(entries: list[dict[str, Any]]) -> BeatWorld:
        topo = topology(namespace, entries)
        objs = [o for o in beat.objects(topo, SecretKeyRef("broker", "url"), None, "h", None)
                if o["kind"] != "Deployment"]
        control_plane.apply(objs)
        account = tmp_path / "serviceaccount"
        account.mkdir()
        token = control_plane.create_token(namespace, "proj-beat", 3600)
        (account / "token").write_text(token.strip())
        (account / "ca.crt").write_bytes(control_plane.pki.ca.read_bytes())
        (account / "namespace").write_text(namespace)
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        (config_dir / api.CONFIG_JSON_KEY).write_text(config_json(celery_config(topo)))
        for key, source in module_sources().items():
            (config_dir / key).write_text(source)
        server = urlsplit(control_plane.server)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO / "sample_tasks")]),
               api.ENV_CONFIG_DIR: str(config_dir), api.ENV_APP: "sample_tasks.app",
               api.ENV_BROKER_URL: redis_db.url, api.ENV_HEARTBEAT_FILE: str(tmp_path / "heartbeat"),
               api.ENV_METRICS_PORT: "0", "KUBERNETES_SERVICE_HOST": str(server.hostname),
               "KUBERNETES_SERVICE_PORT": str(server.port), api.ENV_SERVICE_ACCOUNT_DIR: str(account),
               api.ENV_NAMESPACE: namespace}
        for e in beat.beat_env("proj"):
            if "value" in e:
                env[e["name"]] = e["value"]
        w = BeatWorld(control_plane, namespace, topo, redis_db, env, tmp_path)
        made.append(w)
        return w

    yield make
    for w in made:
        for b in w.beats:
            stop(b.proc, 15)


def entry(name: str, seconds: int, deadline: int | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"name": name, "task": TASK, "everySeconds": seconds, "args": [name, 0]}
    if deadline is not None:
        e["startingDeadlineSeconds"] = deadline
    return e


def grid(seconds: int, first: int, last: int) -> list[int]:
    return list(range(first, last + 1, seconds * schedule.US))


def test_one_beat_sends_while_another_stands_by_and_takes_over_when_it_pauses_or_dies(world: Any) -> None:
    w: BeatWorld = world([entry("tick", 2, deadline=60)])
    a = w.start("beat-a")
    until(lambda: w.holder().startswith("beat-a_"), 30, "beat-a holding the lease", w.beats)
    w.right_after_a_send()
    b = w.start("beat-b")
    until(lambda: "standing by" in b.logs(), 30, "beat-b standing by", w.beats)

    # A paused past its lease (a partitioned node, a frozen VM): B takes over; A, woken, sends nothing.
    w.right_after_a_send()
    os.kill(a.proc.pid, signal.SIGSTOP)
    time.sleep(0.5)
    last_renewal = schedule.from_rfc3339(w.lease()["renewTime"])  # A's, now frozen
    until(lambda: w.holder().startswith("beat-b_"), 40, "beat-b taking the lease over", w.beats)
    taken = schedule.from_rfc3339(w.lease()["acquireTime"])
    assert taken - last_renewal >= api.BEAT_LEASE_SECONDS * schedule.US  # only once A's lease had expired
    w.right_after_a_send()
    os.kill(a.proc.pid, signal.SIGCONT)
    until(lambda: "not sending" in a.logs(), 20, "beat-a knowing it lost the lease", w.beats)

    # B killed (no release): A takes over once the lease has expired, and catches up what B missed.
    w.right_after_a_send()
    b.proc.kill()
    until(lambda: w.holder().startswith("beat-a_"), 40, "beat-a taking the lease back", w.beats)
    w.right_after_a_send()
    stop(a.proc, 15)
    assert a.proc.returncode == 0

    runs = w.runs()
    assert [r for r, n in runs.items() if n > 1] == []  # never twice
    sent = sorted(t for _, t in runs)
    state = w.state().entries["tick"]
    assert sent == grid(2, sent[0], sent[-1])  # never missed: each gap was caught up within the deadline
    assert state.last_run == sent[-1] and state.skipped_runs == 0
    # Every message of a run has the id derived from the run: a resend would carry the same one.
    for m in w.messages():
        slot = schedule.from_rfc3339(m["headers"][api.BEAT_SCHEDULED_TIME_HEADER])
        assert m["headers"]["id"] == str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                    f"celery-operator.dev/beat/{w.ns}/proj/tick/{slot}"))
    assert not w.holder()  # A gave the lease up when stopped


def test_after_a_restart_each_entry_catches_up_by_its_own_deadline_and_counts_what_it_skips(world: Any) -> None:
    w: BeatWorld = world([entry("lenient", 2, deadline=60), entry("strict", 2, deadline=3), entry("latest", 2)])
    first = w.start("beat-a")
    until(lambda: w.holder().startswith("beat-a_"), 30, "beat-a holding the lease", w.beats)
    until(lambda: {e for e, _ in w.runs()} == {"lenient", "strict", "latest"}, 30, "every entry sent", w.beats)
    w.right_after_a_send()
    stop(first.proc, 15)
    stopped = time.monotonic()
    before = w.state()
    time.sleep(12)  # down for 12 s: about six runs of each entry missed
    w.start("beat-b")
    until(lambda: w.holder().startswith("beat-b_"), 10, "beat-b holding the lease at once (it was released)",
          w.beats)
    restarted = schedule.from_rfc3339(w.lease()["acquireTime"])
    until(lambda: all(e.decided_through > restarted for e in w.state().entries.values()), 30, "caught up", w.beats)
    w.right_after_a_send()
    stop(w.beats[-1].proc, 15)
    assert time.monotonic() - stopped > 12

    runs, state = w.runs(), w.state().entries
    assert [r for r, n in runs.items() if n > 1] == []
    for name, e in state.items():
        assert restarted - before.entries[name].decided_through > 10 * schedule.US, name  # runs were missed
        sent = sorted(t for n, t in runs if n == name)
        skipped = [t for s in e.skips for t in grid(2, s.first, s.last)]
        assert sorted(sent + skipped) == grid(2, sent[0], sent[-1]), name  # once or skipped, never both
        assert e.skipped_runs == len(skipped) == sum(s.count for s in e.skips), name
    assert state["lenient"].skipped_runs == 0  # 12 s down, 60 s deadline: every missed run sent
    [strict_skip] = state["strict"].skips  # missed by more than 3 s: skipped, counted, recorded once
    assert strict_skip.reason == schedule.DEADLINE_EXCEEDED and strict_skip.deadline_seconds == 3
    assert strict_skip.decided_at - strict_skip.last > 3 * schedule.US
    [latest_skip] = state["latest"].skips  # no deadline: only the most recent missed run sent
    assert latest_skip.reason == schedule.SUPERSEDED and latest_skip.count >= 4
