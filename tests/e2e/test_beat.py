"""Beat on the real node: each run of an entry runs once, across a deleted pod and a rollout.

The operator (under the chart's RBAC) runs the sample topology plus two entries every 5 s whose task
(`sample_tasks.tasks.scheduled`) logs the run's scheduled time in the default pool's worker. After two
slots the beat pod is deleted (its replacement starts while it terminates), two slots after its
replacement took over the beat Deployment is rolled, and the run ends two slots after the rolled beat
took over; each disruption comes half a second before a slot, so that slot is sent late: the entry with
a 60 s deadline catches it up, the one with 1 s skips it when it is more than a second late (how late is
up to the node).
Then, per entry, every scheduled time of the run ran exactly once in the worker, except those the
catch-up rule skipped, which are exactly the ones the RunsSkipped Events name and status counts.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from celery_operator import api, metrics
from localenv.controlplane import ControlPlane
from localenv.procs import ServerError
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    OperatorProcess,
    apply,
    get,
    list_events,
    pod_logs,
    pods,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PERIOD = 5
ENTRIES = {"slot": 60, "slot-strict": 1}  # entry -> startingDeadlineSeconds
SLOTS_BETWEEN = 2  # slots run before the first disruption and after each handover
BEAT = f"{api.LABEL_APP}=proj,{api.LABEL_COMPONENT}={api.COMPONENT_BEAT}"
WORKER = f"{api.LABEL_APP}=proj,{api.LABEL_POOL}=default"
RAN = re.compile(r"scheduled run of (\S+) at (\S+)")
SKIPPED = re.compile(r"^entry (\S+): skipped (\d+) runs? scheduled (?:at (\S+)|from (\S+) to (\S+)):")


def instant(text: str) -> int:
    """Seconds since the epoch of an RFC 3339 UTC time (scheduled times are whole seconds here)."""
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


@dataclass
class BeatPods:
    """Follows the log of every beat pod as it appears, so deleted pods' logs are kept."""

    cp: ControlPlane
    ns: str
    dir: Path
    followed: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _follow(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(AssertionError):  # the API server busy for 30 s: try again
                for p in pods(self.cp, self.ns, BEAT):
                    name = p["metadata"]["name"]
                    running = any("running" in (c.get("state") or {})
                                  for c in (p.get("status") or {}).get("containerStatuses") or [])
                    if running and name not in self.followed:
                        log = (self.dir / f"{name}.log").open("wb")
                        self.followed[name] = subprocess.Popen(
                            [str(self.cp.bin_dir / "kubectl"), f"--kubeconfig={self.cp.kubeconfig}", "logs", "-f",
                             "-n", self.ns, name], stdout=log, stderr=subprocess.STDOUT)
            self._stop.wait(0.5)

    def __enter__(self) -> BeatPods:
        threading.Thread(target=self._follow, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for p in self.followed.values():
            p.terminate()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.dir / f'{name}.log').read_text(errors='replace')[-3000:]}"
                         for name in self.followed)


def lease_holder(cp: ControlPlane, ns: str) -> str:
    lease = get(cp, ns, "lease", "proj-beat") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def config_hash(cp: ControlPlane, ns: str) -> str | None:
    """The generated config's hash, once it has the test's entries."""
    cm = get(cp, ns, "configmap", "proj-celery-config") or {}
    if not set(ENTRIES) <= set(json.loads((cm.get("data") or {}).get(api.CONFIG_JSON_KEY, "{}")).get(
            "beat_schedule", {})):
        return None
    return str(cm["metadata"]["annotations"][api.ANNOTATION_CONFIG_HASH])


def running(cp: ControlPlane, ns: str, selector: str, chash: str, other_than: set[str] = frozenset()) -> str | None:
    """The one ready pod of `selector` with the config `chash` (not being deleted, none of `other_than`)."""
    live = [p["metadata"]["name"] for p in pods(cp, ns, selector) if not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["name"] not in other_than
            and (p["metadata"].get("annotations") or {}).get(api.ANNOTATION_CONFIG_HASH) == chash
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return live[0] if len(live) == 1 else None


def holding(cp: ControlPlane, ns: str, chash: str, other_than: set[str] = frozenset()) -> str | None:
    """The one beat pod (none of `other_than`) once it holds the lease."""
    pod = running(cp, ns, BEAT, chash, other_than)
    return pod if pod is not None and lease_holder(cp, ns).startswith(f"{pod}_") else None


def skips_reported(cp: ControlPlane, ns: str) -> dict[str, list[int]]:
    """Scheduled times the RunsSkipped Events on the schedule name, per entry, in time order (the API lists
    Events by name, not by time)."""
    events = list_events(cp, ns)
    out: dict[str, list[int]] = {name: [] for name in ENTRIES}
    for e in events:
        if e["reason"] != api.Reason.RUNS_SKIPPED or e["involvedObject"]["name"] != "slots":
            continue
        m = SKIPPED.match(e["message"])
        assert m, e["message"]
        name, count = m.group(1), int(m.group(2))
        first, last = (m.group(3), m.group(3)) if m.group(3) else (m.group(4), m.group(5))
        slots = list(range(instant(first), instant(last) + 1, PERIOD))
        assert len(slots) == count, e["message"]
        out[name] += slots
    return {name: sorted(times) for name, times in out.items()}


@pytest.fixture
def beat_app(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
             broker_vhost: Vhost, backend_db: RedisDb) -> OperatorProcess:
    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    secret(control_plane, namespace, "backend", url=backend_db.url)
    op = operator_factory("--namespace", namespace, "--no-leader-election")
    slots = {"apiVersion": api.API_VERSION, "kind": "CeleryBeatSchedule", "metadata": {"name": "slots"},
             "spec": {"appRef": {"name": "proj"}, "entries": [
                 {"name": name, "task": "sample_tasks.tasks.scheduled", "everySeconds": PERIOD, "args": [name],
                  "startingDeadlineSeconds": deadline} for name, deadline in ENTRIES.items()]}}
    apply(control_plane, namespace, [*sample_documents(image=images.sample_tasks), slots])
    wait_ready(control_plane, namespace, "celeryapp", "proj", 120)
    return op


def test_each_run_of_an_entry_runs_once_across_a_deleted_beat_pod_and_a_rollout(
        control_plane: ControlPlane, namespace: str, beat_app: OperatorProcess, tmp_path: Path) -> None:
    cp, ns = control_plane, namespace
    chash = wait_for(lambda: config_hash(cp, ns), 60, "the entries in the generated config")
    initial = json.loads((get(cp, ns, "configmap", "proj-celery-config") or {})["data"][api.CONFIG_JSON_KEY])
    worker = wait_for(lambda: running(cp, ns, WORKER, chash), 180, "the default pool's worker with the config")

    def ran() -> Counter[tuple[str, int]]:
        return Counter((m.group(1), instant(m.group(2))) for m in RAN.finditer(pod_logs(cp, ns, worker)))

    with BeatPods(cp, ns, tmp_path) as pods:
        try:
            first = wait_for(lambda: holding(cp, ns, chash), 180, "a beat pod holding the lease")
            wait_for(lambda: {e for e, _ in ran()} == set(ENTRIES), 60, "both entries running in the worker")
            started = time.time()
            holders = {lease_holder(cp, ns)}

            def ran_until(at: float) -> bool:  # the lenient entry ran a slot at or after `at`
                return any(n == "slot" and t >= at for n, t in ran())

            def just_before_a_slot() -> None:
                """Half a second before the next slot: beat stops before sending it, its successor sends it
                late (the strict entry's deadline then skips it, the lenient one's catches it up)."""
                at = (time.time() // PERIOD + 1) * PERIOD - 0.5
                wait_for(lambda: time.time() >= at, PERIOD + 1, "half a second before a slot", interval=0.05)

            def slots_run(since: float, what: str) -> None:
                """Until the lenient entry ran the slots after `since` (the holder of the lease sends them)."""
                after = (since // PERIOD + SLOTS_BETWEEN) * PERIOD
                wait_for(lambda: ran_until(after), SLOTS_BETWEEN * PERIOD + 60, what, interval=1)

            slots_run(started, "runs before the first disruption")
            just_before_a_slot()
            cp.kubectl("delete", "pod", "-n", ns, first, "--wait=false")
            second = wait_for(lambda: holding(cp, ns, chash, {first}), 120, "its replacement holding the lease")
            holders.add(lease_holder(cp, ns))

            slots_run(time.time(), "runs sent by the replacement")
            just_before_a_slot()
            cp.kubectl("rollout", "restart", "deployment/proj-beat", "-n", ns)
            third = wait_for(lambda: holding(cp, ns, chash, {first, second}), 120, "the rolled beat holding it")
            holders.add(lease_holder(cp, ns))

            slots_run(time.time(), "runs sent by the rolled beat")
            end = int(time.time()) // PERIOD * PERIOD - PERIOD  # sent at least a period ago: in the log by now

            def settled() -> bool:
                status = (get(cp, ns, "celerybeatschedule", "slots") or {}).get("status") or {}
                last = {e["name"]: e.get("lastRunTime") for e in status.get("entries") or []}
                return all(last.get(n) and instant(last[n]) >= end for n in ENTRIES) and \
                    all((n, end) in ran() or any(s == end for s in skips_reported(cp, ns)[n]) for n in ENTRIES)

            wait_for(settled, 60, "the status and the worker caught up with the end of the run")
            runs, skipped = ran(), skips_reported(cp, ns)
            status = {e["name"]: e for e in get(cp, ns, "celerybeatschedule", "slots")["status"]["entries"]}  # type: ignore[index]
            scraped = urllib.request.urlopen(beat_app.url("/metrics"), timeout=10).read().decode()
        except (AssertionError, ServerError) as e:  # a failed kubectl too: say whether the config moved
            now = get(cp, ns, "configmap", "proj-celery-config") or {}
            changed = ""
            if (now.get("metadata", {}).get("annotations") or {}).get(api.ANNOTATION_CONFIG_HASH) != chash:
                import difflib
                changed = "\n".join(difflib.unified_diff(
                    json.dumps(initial, indent=1, sort_keys=True).splitlines(),
                    json.dumps(json.loads(now["data"][api.CONFIG_JSON_KEY]), indent=1, sort_keys=True).splitlines(),
                    lineterm=""))
            raise AssertionError(f"{e}\nconfig changed:\n{changed}\n{pods.logs()}") from None

    assert {h.split("_")[0] for h in holders} == {first, second, third}, holders  # three beats took turns
    diagnosis = f"runs: {sorted(runs.items())}\nskipped: {skipped}\n{pods.logs()}"
    for name, deadline in ENTRIES.items():
        times = sorted(t for n, t in runs if n == name)
        window = list(range(times[0], end + 1, PERIOD))
        print(f"{name} (startingDeadlineSeconds {deadline}): {len(window)} slots, "
              f"{sum(1 for t in window if runs[(name, t)] == 1)} ran once, "
              f"{len([t for t in skipped[name] if t in window])} skipped and reported, "
              f"{sum(1 for t in window if runs[(name, t)] > 1)} ran more than once; "
              f"status skippedRuns {status[name]['skippedRuns']}; beats {len(holders)}")
        twice = [t for t in window if runs[(name, t)] > 1]
        assert twice == [], f"{name} ran twice at {twice}\n{diagnosis}"
        missed = [t for t in window if runs[(name, t)] == 0]
        assert missed == [t for t in skipped[name] if t in window], f"{name}: unreported misses\n{diagnosis}"
        assert not set(skipped[name]) & {t for n, t in runs if n == name}, f"{name}: skipped yet ran\n{diagnosis}"
        assert status[name]["skippedRuns"] == len(skipped[name]), (status[name], diagnosis)
        if deadline >= 60:  # each restart took less than the deadline: nothing was missed at all
            assert missed == [], f"{name} missed runs\n{diagnosis}"
        last_run = re.search(rf'^{metrics.BEAT_LAST_RUN}{{.*entry="{name}".*}} (\S+)$', scraped, re.M)
        assert last_run and float(last_run.group(1)) >= end, scraped
