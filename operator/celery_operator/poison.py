"""PURE, standard library only: what a worker had in flight when it died, and when a task is poison.

One module for both sides, like `schedule.py`: the operator imports it as `celery_operator.poison` (it
reads worker pods' termination messages and the ledger's quarantine records); the app's ConfigMap ships
its source unchanged as `celery_operator_poison_rules.py`, which the worker runtime (`celery_operator_poison`)
imports. It must run on Python 3.9 with the standard library only.

Two records:

- The **termination message** (the container's `/dev/termination-log`, which the kubelet copies into
  the pod's `status.containerStatuses[].lastState.terminated.message`, at most 4096 bytes): the tasks in
  flight in the container, rewritten at every task start and end, so that whatever kills the container
  (the OOM killer, SIGKILL, a crash of the interpreter) it says what was running. Compact JSON, the ids
  grouped by task name: `{"celery-operator":1,"boot":"<id of this container's run>","n":<in flight>,
  "tasks":{"<name>":["<id>",...]}}`; ids that do not fit in 4096 bytes are left out (`n` keeps the
  count), so a container with hundreds of tasks in flight still writes a valid message.
- The **ledger entry** of a task (JSON in the app's Redis, key `LEDGER_PREFIX + id`, only for tasks that
  acknowledge late, the only ones a dead worker gives back): `{"name", "run": {"pod", "boot", "pid",
  "at"} | null, "deaths": [{"pod", "how", "at"}]}`. The process running the task writes `run` when it
  starts and deletes the entry when it ends (whatever the outcome). A message delivered again for a task
  whose entry still has a `run` from a container that is gone, or from a child process of this worker
  that is gone, had a worker die under it: a death. A container that shut down gracefully (SIGTERM: a
  rollout, a scale-in) leaves a `SHUTDOWN_PREFIX + boot` key, so what it gave back is not a death.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

FORMAT_KEY = "celery-operator"
FORMAT_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096  # bytes: what the kubelet keeps of a termination message
LEDGER_PREFIX = "celery-operator:poison:task:"
SHUTDOWN_PREFIX = "celery-operator:poison:shutdown:"
QUARANTINE_KEY = "celery-operator:poison:quarantined"  # hash: task id -> quarantine record (JSON)
LEDGER_TTL_SECONDS = 7 * 24 * 3600
QUARANTINE_SUFFIX = ".quarantine"
# The header a quarantined message carries (JSON: why it was set aside), and the one it keeps its source in.
QUARANTINE_HEADER = "x-celery-operator-quarantine"
MAX_RECORD_BYTES = 64 * 1024  # a ledger entry or record larger than this is not ours: ignored


def quarantine_queue(queue: str) -> str:
    """The quarantine queue of a source queue."""
    return queue + QUARANTINE_SUFFIX


# -- termination message -------------------------------------------------------------------------------

def termination_message(boot: str, tasks: list[tuple[str, str]], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The termination message for `tasks` ((id, name) pairs) in flight, at most `limit` bytes (UTF-8)."""
    grouped: dict[str, list[str]] = {}
    head = {FORMAT_KEY: FORMAT_VERSION, "boot": boot, "n": len(tasks), "tasks": grouped}
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=True)
    if len(text) > limit:  # only a boot id longer than the limit could get here
        return json.dumps({FORMAT_KEY: FORMAT_VERSION, "n": len(tasks)}, separators=(",", ":"))[:limit]
    size = len(text)
    for task_id, name in tasks:
        ids = grouped.get(name)
        # ,"<name>":["<id>"]  for a new name;  ,"<id>"  for another id of a known one
        extra = (len(json.dumps(task_id, ensure_ascii=True)) + 1 if ids is not None else
                 len(json.dumps(name, ensure_ascii=True)) + len(json.dumps(task_id, ensure_ascii=True)) + 4)
        if size + extra > limit:
            continue  # a shorter one further on may still fit
        size += extra
        if ids is None:
            grouped[name] = [task_id]
        else:
            ids.append(task_id)
    return json.dumps(head, separators=(",", ":"), ensure_ascii=True)


class InFlight(NamedTuple):
    """A parsed termination message: the container's run id, its tasks in flight (id -> name) and how
    many there were (more than `tasks` when some did not fit)."""

    boot: str
    tasks: dict[str, str]
    total: int


class Unparseable(ValueError):
    """A termination message that is not ours (a user's image writing its own) or is damaged."""


def parse_termination_message(text: str | None) -> InFlight | None:
    """The tasks a termination message lists; None for an empty one. Raises Unparseable for anything else
    that is not a message of this format (the caller warns and goes on)."""
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise Unparseable(f"not JSON: {e}") from None
    if not isinstance(data, dict) or data.get(FORMAT_KEY) != FORMAT_VERSION:
        raise Unparseable("not a celery-operator termination message")
    tasks = data.get("tasks", {})
    count = data.get("n", 0)
    boot = data.get("boot", "")
    if (not isinstance(tasks, dict) or not isinstance(count, int) or isinstance(count, bool)
            or not isinstance(boot, str)):
        raise Unparseable("malformed celery-operator termination message")
    out: dict[str, str] = {}
    for name, ids in tasks.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise Unparseable("malformed celery-operator termination message")
        for i in ids:
            out[i] = name
    return InFlight(boot, out, max(count, len(out)))


# -- ledger --------------------------------------------------------------------------------------------

class Verdict(NamedTuple):
    """What to do with a task delivered (again): its new ledger entry (None: delete it), whether this
    delivery found a new death, and whether the task must go to quarantine instead of running."""

    entry: dict[str, Any] | None
    died: bool
    quarantine: bool


def load_entry(raw: Any) -> dict[str, Any] | None:
    """A ledger entry from Redis; None when missing or not ours (never raises)."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        if len(raw) > MAX_RECORD_BYTES:
            return None
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("deaths", []), list):
        return None
    run = data.get("run")
    if run is not None and not isinstance(run, dict):
        return None
    return data


def started(entry: dict[str, Any] | None, name: str, pod: str, boot: str, pid: int, at: float) -> dict[str, Any]:
    """The entry once a run of the task starts (deaths so far kept)."""
    deaths = list((entry or {}).get("deaths", []))
    return {"name": name, "run": {"pod": pod, "boot": boot, "pid": pid, "at": round(at, 3)}, "deaths": deaths}


def delivered(entry: dict[str, Any] | None, *, boot: str, pid_alive: bool, shut_down: bool,
              how: str | None, max_deaths: int, at: float) -> Verdict:
    """Decide on a delivery of a task whose ledger entry is `entry`, received by the worker run `boot`.

    `pid_alive`: the process the entry's run names is alive (meaningful when the run is this worker's);
    `shut_down`: the run's container shut down gracefully; `how`: what this worker saw kill its child
    running the task (e.g. "exitcode 1", "signal 9 (SIGKILL)"), if it did.
    """
    if entry is None:
        return Verdict(None, False, False)
    deaths = list(entry.get("deaths", []))
    run = entry.get("run")
    died = False
    if isinstance(run, dict):
        same = run.get("boot") == boot
        if same and pid_alive and how is None:
            # Still running here (a second delivery of a task in flight, e.g. after the broker connection
            # came back): no death, and nothing to decide.
            return Verdict(entry, False, False)
        if not shut_down:
            died = True
            default = "child process lost" if same else "worker container lost"
            deaths.append({"pod": str(run.get("pod", "")), "how": how or default, "at": round(at, 3)})
    new = {"name": entry.get("name", ""), "run": None, "deaths": deaths}
    return Verdict(new, died, len(deaths) >= max_deaths)


def quarantine_record(entry: dict[str, Any], task_id: str, queue: str, quarantine: str, at: float) -> dict[str, Any]:
    """What the quarantine header and the ledger's quarantine hash say about a task set aside."""
    return {"id": task_id, "name": entry.get("name", ""), "queue": queue, "quarantineQueue": quarantine,
            "deaths": list(entry.get("deaths", [])), "at": round(at, 3)}
