"""PURE: what the operator says about worker deaths and quarantined tasks (statuses, conditions, Events,
metrics), from what it observed: the pods' container statuses (how each worker container died, and the
tasks its termination message names) and the quarantine records the workers wrote to the app's Redis
(celery_operator.poison). No I/O, no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_operator import api, poison
from celery_operator.conditions import Condition

log = logging.getLogger(__name__)
Body = dict[str, Any]
MAX_LISTED = 20  # quarantined tasks an app's status lists (the newest)
GRACEFUL_EXIT_CODES = (0, 143)  # exited on its own, or after SIGTERM (a rollout, a scale-in)


@dataclass(frozen=True)
class Death:
    """One worker container that died: where, how, and what it was running."""

    pod: str
    reason: str  # OOMKilled, Error, ...: the kubelet's
    exit_code: int
    signal: int | None
    finished_at: str
    tasks: Mapping[str, str]  # task id -> name, from its termination message

    @property
    def how(self) -> str:
        """OOMKilled, "signal 9 (SIGKILL)", "exit code 1"."""
        if self.reason == "OOMKilled":
            return "OOMKilled"
        if self.signal is not None:
            return f"signal {self.signal}"
        return f"exit code {self.exit_code}"


def _worker_containers(pod: Body) -> Iterable[Body]:
    return ((pod.get("status") or {}).get("containerStatuses") or [])


def deaths(pods: Sequence[Body], warn: Any = log.warning) -> list[Death]:
    """The last death of each worker container of `pods` that died (not a graceful exit). A termination
    message that is not the workers' (a user's image writing its own) is ignored with a warning."""
    out = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "")
        for c in _worker_containers(pod):
            t = (c.get("lastState") or {}).get("terminated")
            if not t:
                continue
            code = int(t.get("exitCode") or 0)
            if code in GRACEFUL_EXIT_CODES and t.get("reason") != "OOMKilled":
                continue
            signal = t.get("signal") or (code - 128 if 128 < code < 160 else None)
            tasks: Mapping[str, str] = {}
            try:
                parsed = poison.parse_termination_message(t.get("message"))
                tasks = parsed.tasks if parsed is not None else {}
            except poison.Unparseable as e:
                warn("pod %s container %s: termination message ignored: %s", name, c.get("name"), e)
            out.append(Death(name, str(t.get("reason") or "Error"), code, signal, str(t.get("finishedAt") or ""),
                             tasks))
    return out


def restarts(pods: Sequence[Body]) -> int:
    """Restarts of the worker containers of `pods` (the pool's recent worker deaths while they live)."""
    return sum(int(c.get("restartCount") or 0) for p in pods for c in _worker_containers(p))


def records(raw: Mapping[str, Any], warn: Any = log.warning) -> list[Body]:
    """The quarantine records (the ledger's hash, id -> JSON), newest first; unreadable ones are skipped."""
    out = []
    for task_id, value in raw.items():
        entry = poison.load_entry(value)
        if entry is None or not isinstance(entry.get("queue"), str):
            warn("quarantine record of %s ignored: not one a worker wrote", task_id)
            continue
        out.append(entry)
    return sorted(out, key=lambda r: (-float(r.get("at") or 0), str(r.get("id"))))


def _killed(record: Body, pod_deaths: Mapping[str, Death]) -> str:
    parts = []
    for d in record.get("deaths") or []:
        pod = str(d.get("pod", ""))
        seen = pod_deaths.get(pod)
        how = seen.how if seen is not None and str(d.get("how", "")).startswith("worker container") else d.get("how")
        parts.append(f"{pod} ({how})")
    return ", ".join(parts)


@dataclass(frozen=True)
class PoolReport:
    fields: Body
    condition: Condition
    events: tuple[tuple[str, str, str], ...]  # (type, reason, message)


def pool_report(queues: Sequence[str], quarantined: Sequence[Body], pods: Sequence[Body],
                reported: Sequence[str], max_deaths: int) -> PoolReport:
    """The pool's status fields, its TasksQuarantined condition and the Warning Events of tasks newly set
    aside from its queues (`reported`: the ids its status listed before)."""
    mine = [r for r in quarantined if r.get("queue") in queues]
    pod_deaths = {d.pod: d for d in deaths(pods)}
    fields: Body = {"recentWorkerDeaths": restarts(pods), "quarantinedTasks": len(mine),
                    "quarantinedTaskIds": [str(r.get("id")) for r in mine[:MAX_LISTED]]}
    if mine:
        names = sorted({str(r.get("name")) for r in mine})
        cond = Condition(api.TASKS_QUARANTINED, True, api.Reason.TASKS_QUARANTINED,
                         f"{len(mine)} task(s) killed their worker {max_deaths} times and wait in quarantine "
                         f"({', '.join(names)}): fix them, then replay (celery-operator quarantine replay)")
    else:
        cond = Condition(api.TASKS_QUARANTINED, False, api.Reason.NO_TASKS_QUARANTINED, "no task in quarantine")
    known = set(reported)
    events = tuple(
        ("Warning", api.Reason.TASKS_QUARANTINED,
         f"task {r.get('name')}[{r.get('id')}] killed its worker {len(r.get('deaths') or [])} times "
         f"({_killed(r, pod_deaths)}): moved to queue {r.get('quarantineQueue')}, not run again until replayed")
        for r in mine[:MAX_LISTED] if str(r.get("id")) not in known)
    return PoolReport(fields, cond, events)


def app_list(quarantined: Sequence[Body]) -> list[Body]:
    """The app's status.quarantinedTasks: the newest MAX_LISTED."""
    return [{"id": str(r.get("id")), "name": str(r.get("name")), "queue": str(r.get("queue")),
             "quarantineQueue": str(r.get("quarantineQueue")), "deaths": len(r.get("deaths") or []),
             "pods": sorted({str(d.get("pod")) for d in r.get("deaths") or []})}
            for r in quarantined[:MAX_LISTED]]


def by_task(quarantined: Sequence[Body]) -> dict[str, int]:
    """Quarantined tasks per task name (the metric)."""
    out: dict[str, int] = {}
    for r in quarantined:
        out[str(r.get("name"))] = out.get(str(r.get("name")), 0) + 1
    return out


def deaths_by_reason(pods: Sequence[Body]) -> dict[str, int]:
    """Worker containers whose last death had each reason (OOMKilled, Error, ...)."""
    out: dict[str, int] = {}
    for d in deaths(pods):
        out[d.reason] = out.get(d.reason, 0) + 1
    return out


@dataclass(frozen=True)
class Selector:
    """Which quarantined tasks a replay or purge takes: all, those of some task names, or some ids."""

    names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if not self.names and not self.ids:
            return True
        return str(record.get("name")) in self.names or str(record.get("id")) in self.ids


def parse_selector(value: str) -> Selector:
    """The annotations' value: `all`, `task=<name>[,<name>...]` or `id=<id>[,<id>...]`. Raises ValueError."""
    text = value.strip()
    if text in ("", "all", "*"):
        return Selector()
    kind, sep, rest = text.partition("=")
    items = frozenset(i.strip() for i in rest.split(",") if i.strip())
    if not sep or not items or kind.strip() not in ("task", "id"):
        raise ValueError(f"{value!r}: expected all, task=<name>[,<name>...] or id=<id>[,<id>...]")
    return Selector(names=items) if kind.strip() == "task" else Selector(ids=items)


def quarantine_queues(targets: Iterable[str], quarantined: Sequence[Body]) -> list[str]:
    """The quarantine queues a replay looks in: those of the app's queues now (`targets`: Topology's
    quarantine_queues) and those its records name (a queue since renamed or removed)."""
    return sorted(set(targets) | {str(r["quarantineQueue"]) for r in quarantined if r.get("quarantineQueue")})
