"""Run Celery calls as a client configured exactly like the operator's workers (its bootstrap module).

Used by the end-to-end tests in a subprocess: `python client.py add-low` etc.; prints JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import celery_operator_app  # the module the operator ships in the ConfigMap

RETRIED: list[str] = []  # each publish kombu retried after a connection error, and why


def _retried(exc: BaseException, interval: float) -> None:
    RETRIED.append(f"{type(exc).__name__}: {exc}")


# Celery merges this with its task_publish_retry_policy: the same retries, recorded. What a dead connection
# had taken into its socket before the error surfaced is not retried: the output says it happened.
RETRY = {"errback": _retried}


@contextlib.contextmanager
def producer(app: Any) -> Iterator[Any]:
    """A producer on a broker connection of its own, closed by the protocol (AMQP connection.close) when the
    block ends. A process that just exits leaves that to the socket's end, and what the broker had not read
    by then is lost if the socket ends with a reset (anything the broker sent and the client never read).
    The close does not wait for a quorum queue to take what was sent: only confirms do, which the generated
    config turns on for such apps (config/celeryconfig.py, `confirms_publishes`)."""
    with app.connection_for_write() as connection:
        yield app.amqp.Producer(connection)


def sent_counts() -> dict[str, dict[str, object]]:
    """celery_task_sent_total as this process counted it: task name -> {value, labels}."""
    from prometheus_client import REGISTRY

    return {s.labels["name"]: {"value": s.value, "labels": s.labels}
            for family in REGISTRY.collect() if family.name == "celery_task_sent"
            for s in family.samples if s.name == "celery_task_sent_total"}


def main(what: str) -> None:
    app = celery_operator_app.app
    add = app.tasks["sample_tasks.tasks.add"]
    out: dict[str, object] = {}
    if what == "add-low":
        r = add.apply_async((1, 2), queue="low_queue")
        out = {"id": r.id, "result": r.get(timeout=150)}
    elif what == "add-default":
        r = add.delay(1, 2)
        out = {"id": r.id, "result": r.get(timeout=150)}
    elif what.startswith("tasks:"):
        # n adds and m failing tasks, all awaited; what this producer counted as sent, by task name.
        _, n_add, n_fail = what.split(":")
        fail = app.tasks["sample_tasks.tasks.fail"]
        results = [add.delay(i, i) for i in range(int(n_add))] + [fail.delay("expected") for _ in range(int(n_fail))]
        for r in results:
            r.get(timeout=150, propagate=False)
        states = [r.state for r in results]
        out = {"states": {s: states.count(s) for s in set(states)}, "sent": sent_counts()}
    elif what == "revoked":
        # A task revoked before it is sent: the worker drops it on receipt.
        task_id = str(uuid.uuid4())
        replies = app.control.revoke(task_id, reply=True, timeout=10)
        add.apply_async((1, 1), task_id=task_id)
        out = {"id": task_id, "replies": len(replies)}
    elif what.startswith("tracked:"):
        # n `tracked` tasks (each run recorded in the result backend's Redis), not awaited.
        _, queue, n, seconds = what.split(":")
        with producer(app) as sender:  # by name, as producers do: the task lives in the image
            ids = [app.send_task("sample_tasks.tasks.tracked", (float(seconds),), queue=queue, producer=sender,
                                 retry_policy=RETRY).id for _ in range(int(n))]
        out = {"ids": ids}
    elif what.startswith("adds:"):
        # n adds (results ignored: as cheap a task as a worker runs), not awaited.
        _, queue, n = what.split(":")
        with producer(app) as sender:
            for i in range(int(n)):
                add.apply_async((i, i), queue=queue, producer=sender, ignore_result=True, retry_policy=RETRY)
        out = {"sent": int(n)}
    elif what.startswith("bursts:"):
        # `bursts:QUEUE:ROUNDS:N`: ROUNDS bursts of N adds, each on a producer closed right after it; not awaited.
        # Also the seconds the bursts took, connections included (not the process's start), and whether every
        # connection was in confirm mode (py-amqp's, as the transport options made it).
        _, queue, rounds, n = what.split(":")
        started, confirmed = time.monotonic(), []
        for _ in range(int(rounds)):
            with producer(app) as sender:
                for i in range(int(n)):
                    add.apply_async((i, i), queue=queue, producer=sender, ignore_result=True, retry_policy=RETRY)
                confirmed.append(bool(getattr(sender.connection.connection, "confirm_publish", False)))
        out = {"sent": int(rounds) * int(n), "seconds": time.monotonic() - started, "confirmed": all(confirmed)}
    elif what.startswith("publish:"):
        # n `slow` tasks, not awaited; `publish:QUEUE:N:SECONDS[:PRIORITY]`.
        _, queue, n, seconds, *priority = what.split(":")
        slow = app.tasks["sample_tasks.tasks.slow"]
        extra = {"priority": int(priority[0])} if priority else {}
        with producer(app) as sender:
            ids = [slow.apply_async((float(seconds),), queue=queue, producer=sender, retry_policy=RETRY, **extra).id
                   for _ in range(int(n))]
        out = {"ids": ids}
    elif what.startswith("send:"):
        # Tasks by name, not awaited: `send:QUEUE:TASK:JSON_ARGS[:N]` -> their ids.
        _, queue, name, args, *n = what.split(":", 4)
        with producer(app) as sender:
            ids = [app.send_task(name, tuple(json.loads(args)), queue=queue, producer=sender, retry_policy=RETRY).id
                   for _ in range(int(n[0]) if n else 1)]
        out = {"ids": ids}
    if RETRIED:
        out["retried"] = RETRIED
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
