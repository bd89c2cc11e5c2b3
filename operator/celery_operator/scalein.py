"""PURE: which worker pods a pool's scale-in removes, and the pod-deletion-costs that make the
ReplicaSet remove exactly those.

When a Deployment shrinks, its ReplicaSet controller picks the pods to delete; it knows nothing of
Celery, so it may kill a worker in the middle of a task while an idle one lives on. Before the
autoscaler lowers a pool's replicas, the operator asks the pool's workers what they hold (Celery's
remote control: tasks running, messages reserved) and ranks the pods, to be removed first:

1. pods that are not ready (starting or failing: the ReplicaSet removes them first whatever their
   cost), then ready ones;
2. within each, pods whose worker did not answer (no worker behind the node name yet, or a broken
   one) first: except in `solo` pools, whose worker cannot answer while a task runs, so a silent solo
   worker counts as running one task;
3. then fewest tasks running, then fewest messages reserved (prefetched and not started: a stopping
   worker gives them back to the queue, so they are delayed, not interrupted), then name.

The first `remove` pods of that order are the victims. Each gets the deletion cost `VICTIM_COST`,
below every other pod's: a survivor's cost is its work in progress (`ACTIVE_WEIGHT` per running task,
1 per reserved message; 0, i.e. no annotation, when idle), so a pod created meanwhile (cost 0) never
outranks a victim. Only costs that change are written.

A victim that has work (no idle pod was left to take its place) may be drained first: its consumers
are cancelled so it takes nothing new, and the scale-in waits, within a bound, until it holds nothing.

When no worker answers at all (remote control disabled, a serializer the operator does not accept, a
broker that fails), the plan is blind: costs set by an earlier scale-in are removed and the
ReplicaSet's own choice stands, as it would without the operator.

Nothing here does I/O; `controller/scalein_executor.py` asks the workers, writes the costs and scales.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_operator import api
from celery_operator.render.worker import node_name

Body = dict[str, Any]
VICTIM_COST = -1
ACTIVE_WEIGHT = 1000  # a running task weighs more than any plausible number of reserved messages
COST_CAP = 2**31 - 1  # the annotation is an int32
HOSTNAME_MAX = 63  # the kubelet truncates a pod's hostname to this (then strips trailing '-' and '.')


@dataclass(frozen=True)
class Load:
    """What one worker holds, as it answered Celery's remote control: task ids."""

    active: tuple[str, ...] = ()  # running now
    reserved: tuple[str, ...] = ()  # received (prefetched), not started

    @property
    def idle(self) -> bool:
        return not self.active and not self.reserved


@dataclass(frozen=True)
class Worker:
    """One pod of the pool at the moment of the scale-in."""

    pod: str
    node: str  # the worker's Celery node name, `<pool>@<pod hostname>`
    ready: bool
    load: Load | None  # None: the worker did not answer
    cost: int | None = None  # the pod's deletion cost now; None when unset
    silent_busy: bool = False  # a solo pool: silence means a task is running

    @property
    def running(self) -> int:
        if self.load is not None:
            return len(self.load.active)
        return 1 if self.ready and self.silent_busy else 0

    @property
    def reserved(self) -> int:
        return len(self.load.reserved) if self.load is not None else 0

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.reserved == 0

    @property
    def silent(self) -> bool:
        """No answer, and none expected from a busy worker."""
        return self.load is None and not self.silent_busy

    def rank(self) -> tuple[int, int, int, int, str]:
        return (int(self.ready), int(not self.silent), self.running, self.reserved, self.pod)

    def work_cost(self) -> int:
        return min(COST_CAP, ACTIVE_WEIGHT * self.running + self.reserved)

    def describe(self) -> str:
        state = [] if self.ready else ["not ready"]
        if self.silent:
            state.append("no answer")
        elif self.idle:
            state.append("idle")
        else:
            state += [f"{n} {what}" for n, what in ((self.running, "running"), (self.reserved, "reserved")) if n]
        return f"{self.pod} ({', '.join(state)})"


@dataclass(frozen=True)
class Plan:
    order: tuple[Worker, ...]  # removal order: the first are removed first
    victims: tuple[Worker, ...]
    costs: dict[str, int | None]  # pod -> deletion cost to write (None: remove it); only changes
    blind: bool = False  # no worker answered: the ReplicaSet chooses

    @property
    def busy_victims(self) -> tuple[Worker, ...]:
        """Victims holding work: what a drain waits for (only workers that answered can be drained)."""
        return tuple(w for w in self.victims if w.load is not None and not w.load.idle)

    @property
    def interrupted_if_removed_now(self) -> int:
        """Tasks running on the victims: what a scale-in without a drain would interrupt (at most)."""
        return sum(w.running for w in self.victims)

    def describe(self) -> str:
        if self.blind:
            return "no worker answered Celery's remote control: the ReplicaSet picks the pods to remove"
        return "removing " + ", ".join(w.describe() for w in self.victims)


def pod_hostname(pod: Body) -> str:
    """The hostname the kubelet gives a pod: spec.hostname or its name, truncated to 63 characters
    without trailing '-' or '.' (what Celery's `%h` expands to in the worker)."""
    name = (pod.get("spec") or {}).get("hostname") or pod["metadata"]["name"]
    return str(name)[:HOSTNAME_MAX].rstrip("-.")


def pod_ready(pod: Body) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_cost(pod: Body) -> int | None:
    raw = (pod["metadata"].get("annotations") or {}).get(api.ANNOTATION_POD_DELETION_COST)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def live_pods(pods: Iterable[Body]) -> list[Body]:
    """Pods that count toward the ReplicaSet's replicas: not being deleted."""
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def nodes(pods: Iterable[Body], pool: str) -> dict[str, str]:
    """Celery node name -> pod name, for the pool's live pods."""
    return {node_name(pool, pod_hostname(p)): p["metadata"]["name"] for p in live_pods(pods)}


def workers(pods: Iterable[Body], pool: str, loads: Mapping[str, Load], *, solo: bool = False) -> list[Worker]:
    """The pool's live pods with what their workers answered (`loads`, by node name)."""
    out = []
    for p in live_pods(pods):
        node = node_name(pool, pod_hostname(p))
        out.append(Worker(pod=p["metadata"]["name"], node=node, ready=pod_ready(p), load=loads.get(node),
                          cost=pod_cost(p), silent_busy=solo))
    return sorted(out, key=lambda w: w.pod)


def plan(pool_workers: Sequence[Worker], remove: int) -> Plan:
    """The pods to remove (`remove` of them, at most all) and the deletion costs to write first."""
    order = tuple(sorted(pool_workers, key=Worker.rank))
    victims = order[:max(0, remove)]
    if not any(w.load is not None for w in pool_workers):
        return Plan(order, victims, {w.pod: None for w in pool_workers if w.cost is not None}, blind=True)
    chosen = {w.pod for w in victims}
    costs: dict[str, int | None] = {}
    for w in pool_workers:
        want = VICTIM_COST if w.pod in chosen else w.work_cost()
        if (w.cost or 0) != want:
            costs[w.pod] = want or None  # 0 is the default: no annotation
    return Plan(order, victims, costs)


def kept_costs(kept: Iterable[Worker]) -> dict[str, int | None]:
    """The deletion costs of victims that stay after all (their scale-in was called off): their work as the
    plan saw it, no longer `VICTIM_COST`, so a later scale-down (ours or `kubectl scale`) does not take a
    busy pod first."""
    return {w.pod: w.work_cost() or None for w in kept}


def drained(loads: Mapping[str, Load], victims: Iterable[Worker]) -> bool:
    """Whether every drained victim holds nothing now (a victim that stopped answering holds nothing
    the operator can wait for)."""
    return all(loads.get(w.node, Load()).idle for w in victims)
