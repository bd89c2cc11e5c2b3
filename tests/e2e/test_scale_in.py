"""A scale-in removes idle workers first: the autoscaler's, against `kubectl scale` as the baseline.

Two pools of one app on real pods, each at 4 replicas with concurrency 1, each with two workers busy
with 30 s tasks and two idle. The autoscaled pool is scaled to 2 by the autoscaler (its minReplicas
lowered to 2, two tasks in flight at one per replica; a floor of 2, so no later reading takes it lower
while the test looks); the other, without autoscaling, by `kubectl scale` to 2 at the same moment:
the ReplicaSet picks its victims with no deletion costs. The tasks run with acks_late and
reject-on-worker-lost and a 10 s grace period (a 9 s soft shutdown), so a busy worker that is removed
cuts its task, which runs again elsewhere. Each run of a task records its start and
end on the worker's host in Redis (`sample_tasks.tasks.tracked`): an interrupted run is a start
without its end.

The scenario is shared with `bench/scale_in.py`, which repeats it and prints the counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_operator import api
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from localenv.procs import REPO
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    apply,
    celery_call,
    celery_client_env,
    get,
    list_events,
    list_objects,
    pool_selector,
    secret,
    wait_for,
    wait_pods_ready,
    wait_ready,
)
from tests.fixtures.servers import Images, install_chart_rbac

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

APP = "proj"
OURS, BASE = "ours", "base"
REPLICAS, KEEP, BUSY = 4, 2, 2
TASK_SECONDS = 30
GRACE_SECONDS = 10
RUNS_KEY = "sample-tasks:runs:{}"  # sample_tasks.tasks.RUNS_KEY


def documents(image: str) -> list[dict[str, Any]]:
    v = api.API_VERSION
    pool_spec = {"appRef": {"name": APP}, "concurrency": 1, "terminationGracePeriodSeconds": GRACE_SECONDS}
    return [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": APP},
         "spec": {"image": image, "app": "sample_tasks.app",
                  "config": {"task_acks_late": True, "task_reject_on_worker_lost": True},
                  "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                          "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}},
                  "resultBackend": {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}}},
        *({"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": f"{pool}-queue"},
           "spec": {"appRef": {"name": APP}, "name": f"{pool}_queue"}} for pool in (OURS, BASE)),
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": OURS},
         "spec": {**pool_spec, "queues": [f"{OURS}_queue"],
                  "autoscaling": {"minReplicas": REPLICAS, "maxReplicas": REPLICAS, "targetMessagesPerReplica": 1,
                                  "pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 0}}},
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": BASE},
         "spec": {**pool_spec, "queues": [f"{BASE}_queue"], "replicas": REPLICAS}},
    ]


def install_checkout(cp: ControlPlane) -> None:
    """This checkout's CRDs and the operator's RBAC, again: on a cluster shared with other checkouts,
    another test session may have installed its own since this one began, without the fields and the
    permission (patching pods) these tests need."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    install_chart_rbac(cp)


def pods(cp: ControlPlane, ns: str, pool: str) -> list[dict[str, Any]]:
    return list_objects(cp, ns, "pods", pool_selector(APP, pool))


@dataclass
class Arm:
    """One pool's side of the scenario."""

    pool: str
    task_ids: list[str] = field(default_factory=list)
    before: set[str] = field(default_factory=set)  # pods before the scale-in
    busy: set[str] = field(default_factory=set)  # pods running a task when it began
    removed: set[str] = field(default_factory=set)
    costs: dict[str, str | None] = field(default_factory=dict)  # kept pods' deletion costs, at completion
    completed_after: float | None = None  # seconds from the scale-in until only the kept pods existed
    tasks_ended_before_completion: bool = False
    runs: dict[str, list[str]] = field(default_factory=dict)  # task id -> ["start:<host>", "end:<host>", ...]

    @property
    def interrupted(self) -> int:
        """Runs that started and never ended on the host that started them."""
        cut = 0
        for entries in self.runs.values():
            open_runs: list[str] = []
            for e in entries:
                kind, host = e.split(":", 1)
                if kind == "start":
                    open_runs.append(host)
                elif host in open_runs:
                    open_runs.remove(host)
            cut += len(open_runs)
        return cut

    @property
    def delayed(self) -> int:
        """Tasks that had to run again (their result came a whole run later)."""
        return sum(1 for entries in self.runs.values() if sum(e.startswith("start:") for e in entries) > 1)

    def summary(self) -> dict[str, Any]:
        return {"pool": self.pool, "busy": sorted(self.busy), "removed": sorted(self.removed),
                "interrupted": self.interrupted, "delayed": self.delayed,
                "completed_after_s": None if self.completed_after is None else round(self.completed_after, 1),
                "tasks_ended_before_completion": self.tasks_ended_before_completion}


def runs(client: redis.Redis, ids: list[str]) -> dict[str, list[str]]:
    return {i: [b.decode() for b in client.lrange(RUNS_KEY.format(i), 0, -1)] for i in ids}


def ended(entries: list[str]) -> bool:
    return any(e.startswith("end:") for e in entries)


@dataclass
class Scenario:
    cluster: Cluster
    ns: str
    client_env: dict[str, str]
    backend: redis.Redis

    @property
    def cp(self) -> ControlPlane:
        return self.cluster.control_plane

    def run(self, log: Callable[[str], None] = lambda _: None) -> tuple[Arm, Arm]:
        """Both pools at 4 ready pods, two busy each; scale both to 2 at once; wait for every task."""
        cp, ns = self.cp, self.ns
        arms = (Arm(OURS), Arm(BASE))
        for arm in arms:
            wait_pods_ready(cp, ns, pool_selector(APP, arm.pool), REPLICAS, timeout=300)
        for arm in arms:
            arm.task_ids = celery_call(self.cluster, self.client_env,
                                       f"tracked:{arm.pool}_queue:{BUSY}:{TASK_SECONDS}")["ids"]

        def all_started() -> bool:
            return all(len([r for r in runs(self.backend, a.task_ids).values() if r]) == BUSY for a in arms)

        wait_for(all_started, 60, "every task started")
        for arm in arms:
            arm.before = {p["metadata"]["name"] for p in pods(cp, ns, arm.pool)}
            arm.busy = {e.split(":", 1)[1] for r in runs(self.backend, arm.task_ids).values() for e in r}
            log(f"{arm.pool}: pods {sorted(arm.before)}, busy {sorted(arm.busy)}")

        install_chart_rbac(cp)  # again: another checkout's session may have replaced it meanwhile
        started = time.monotonic()
        cp.kubectl("patch", "celeryworkerpool", OURS, "-n", ns, "--type", "merge", "-p",
                   json.dumps({"spec": {"autoscaling": {"minReplicas": KEEP}}}))
        cp.kubectl("scale", "celeryworkerpool", BASE, "-n", ns, f"--replicas={KEEP}")

        def settled() -> bool:
            for arm in arms:
                if arm.completed_after is not None:
                    continue
                live = pods(cp, ns, arm.pool)
                now = {p["metadata"]["name"] for p in live}
                if len(now) == KEEP and now <= arm.before:
                    arm.completed_after = time.monotonic() - started
                    arm.removed = arm.before - now
                    arm.costs = {p["metadata"]["name"]: (p["metadata"].get("annotations") or {})
                                 .get(api.ANNOTATION_POD_DELETION_COST) for p in live}
                    arm.tasks_ended_before_completion = any(ended(r) for r in runs(self.backend, arm.task_ids)
                                                            .values())
            return all(a.completed_after is not None for a in arms)

        wait_for(settled, 120, "both pools down to 2 pods", interval=0.2)

        def every_task_ended() -> bool:
            return all(all(ended(r) for r in runs(self.backend, a.task_ids).values()) for a in arms)

        wait_for(every_task_ended, 3 * TASK_SECONDS + 60, "every task finished (reruns included)")
        for arm in arms:
            arm.runs = runs(self.backend, arm.task_ids)
            log(json.dumps(arm.summary()))
        return arms


def setup(cluster: Cluster, ns: str, start_operator: Callable[[], object], tmp: Path, image: str, vhost: Vhost,
          backend: RedisDb, docs: list[dict[str, Any]] | None = None) -> Scenario:
    """The scenario's objects in `ns`, watched by an operator `start_operator` starts for `ns`."""
    cp = cluster.control_plane
    tmp.mkdir(parents=True, exist_ok=True)
    install_checkout(cp)
    secret(cp, ns, "broker", url=vhost.url, managementUrl=vhost.management_url)
    secret(cp, ns, "backend", url=backend.url)
    start_operator()
    docs = docs if docs is not None else documents(image)
    apply(cp, ns, docs)
    for q in (d["metadata"]["name"] for d in docs if d["kind"] == "CeleryQueue"):
        wait_ready(cp, ns, "celeryqueue", q, 60)
    cm = wait_for(lambda: get(cp, ns, "configmap", f"{APP}-celery-config"), 30, "ConfigMap")
    return Scenario(cluster, ns, celery_client_env(tmp, cm, vhost.url, backend.url), backend.client())


def test_the_autoscalers_scale_in_removes_the_idle_workers_and_interrupts_nothing_unlike_kubectl_scale(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    s = setup(cluster, namespace, lambda: operator_factory("--namespace", namespace, "--no-leader-election"),
              tmp_path, images.sample_tasks, broker_vhost, backend_db)
    ours, base = s.run(log=print)

    # Ours: the two idle pods went, the busy ones stayed and finished their tasks, once each.
    assert ours.busy <= ours.before and len(ours.busy) == BUSY
    assert ours.removed == ours.before - ours.busy, ours.summary()
    assert ours.interrupted == 0 and ours.delayed == 0, ours.summary()
    for r in ours.runs.values():
        host = r[0].split(":", 1)[1]
        assert r == [f"start:{host}", f"end:{host}"] and host not in ours.removed, ours.runs
    # ... and the scale-in was over before the busy workers' tasks ended: it did not wait for them.
    assert not ours.tasks_ended_before_completion, ours.summary()
    assert ours.costs == dict.fromkeys(ours.busy, "1000")  # the kept pods carry their work as their cost
    events = list_events(s.cp, namespace)
    down = [e["message"] for e in events if e["reason"] == api.Reason.SCALED_DOWN
            and e["involvedObject"]["name"] == OURS and e["message"].startswith(f"{REPLICAS} → {KEEP}:")]
    assert len(down) == 1 and all(f"{pod} (idle)" in down[0] for pod in ours.removed), down

    # The baseline: the ReplicaSet's own choice. Its count is whatever it picked; the way it is
    # counted holds: each busy pod it removed cut one task, which ran again on a kept pod.
    assert base.interrupted == len(base.removed & base.busy) == base.delayed, base.summary()
    assert not any(base.costs.values())  # no deletion costs: the ReplicaSet's choice
    print(f"\nscale-in 4 -> 2, two busy with {TASK_SECONDS}s tasks: tasks interrupted: ours {ours.interrupted}, "
          f"kubectl scale {base.interrupted}; completed after: ours {ours.completed_after:.1f}s, "
          f"kubectl scale {base.completed_after:.1f}s")


def test_with_no_idle_worker_the_chosen_one_drains_its_task_before_it_is_removed(
        cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    """Two workers, both busy with 20 s tasks; the autoscaler wants one (ready messages only, none
    ready). The one chosen stops consuming, finishes its task, and only then is removed."""
    docs = documents(images.sample_tasks)
    pool = next(d for d in docs if d["kind"] == "CeleryWorkerPool" and d["metadata"]["name"] == OURS)
    pool["spec"]["autoscaling"].update(minReplicas=2, maxReplicas=2, countInFlight=False,
                                       scaleDownDrainSeconds=60)
    docs = [d for d in docs if d["metadata"]["name"] not in (BASE, f"{BASE}-queue")]
    ops: list[Any] = []
    s = setup(cluster, namespace, lambda: ops.append(operator_factory("--namespace", namespace,
                                                                      "--no-leader-election")),
              tmp_path, images.sample_tasks, broker_vhost, backend_db, docs)
    cp = s.cp
    wait_pods_ready(cp, namespace, pool_selector(APP, OURS), 2, timeout=300)
    ids = celery_call(s.cluster, s.client_env, f"tracked:{OURS}_queue:2:20")["ids"]
    wait_for(lambda: all(runs(s.backend, ids).values()), 60, "both tasks started")
    before = {p["metadata"]["name"] for p in pods(cp, namespace, OURS)}
    install_chart_rbac(cp)  # again: another checkout's session may have replaced it meanwhile
    cp.kubectl("patch", "celeryworkerpool", OURS, "-n", namespace, "--type", "merge", "-p",
               json.dumps({"spec": {"autoscaling": {"minReplicas": 1}}}))

    def one_left() -> set[str] | None:
        now = {p["metadata"]["name"] for p in pods(cp, namespace, OURS)}
        return now if len(now) == 1 else None

    def removed_ran_out() -> bool:
        # Until the removed pod is gone, its task has ended: the drain waited for it.
        left = one_left()
        if left is None:
            return False
        [victim] = before - left
        assert any(r == [f"start:{victim}", f"end:{victim}"] for r in runs(s.backend, ids).values())
        return True

    wait_for(removed_ran_out, 120, "the pool down to one pod")
    wait_for(lambda: all(ended(r) for r in runs(s.backend, ids).values()), 60, "both tasks finished")
    recorded = runs(s.backend, ids)
    assert all(len(r) == 2 for r in recorded.values()), recorded  # one run each: nothing cut, nothing rerun
    events = list_events(cp, namespace)
    reasons = [(e["reason"], e["message"]) for e in sorted(events, key=lambda e: e.get("firstTimestamp") or "")
               if e["involvedObject"]["name"] == OURS and e["reason"] in (api.Reason.DRAINING, api.Reason.SCALED_DOWN)]
    why = "\n".join(f"{r}: {m}" for r, m in reasons) + "\n" + "".join(op.logs()[-6000:] for op in ops)
    # One scale-in: announced as a drain of the busy worker, then the scale, once it held nothing.
    assert [r for r, _ in reasons] == [api.Reason.DRAINING, api.Reason.SCALED_DOWN], why
    assert "1 running" in reasons[0][1] and "drained after" in reasons[1][1], why
