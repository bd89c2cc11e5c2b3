"""Run Celery calls as a client configured exactly like the operator's workers (its bootstrap module).

Used by the end-to-end tests in a subprocess: `python client.py add-low` etc.; prints JSON.
"""

from __future__ import annotations

import json
import sys
import uuid

import celery_operator_app  # the module the operator ships in the ConfigMap


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
        with app.producer_or_acquire() as producer:  # by name, as producers do: the task lives in the image
            ids = [app.send_task("sample_tasks.tasks.tracked", (float(seconds),), queue=queue, producer=producer).id
                   for _ in range(int(n))]
        out = {"ids": ids}
    elif what.startswith("adds:"):
        # n adds (results ignored: as cheap a task as a worker runs), not awaited.
        _, queue, n = what.split(":")
        with app.producer_or_acquire() as producer:
            for i in range(int(n)):
                add.apply_async((i, i), queue=queue, producer=producer, ignore_result=True)
        out = {"sent": int(n)}
    elif what.startswith("publish:"):
        # n `slow` tasks, not awaited; `publish:QUEUE:N:SECONDS[:PRIORITY]`.
        _, queue, n, seconds, *priority = what.split(":")
        slow = app.tasks["sample_tasks.tasks.slow"]
        extra = {"priority": int(priority[0])} if priority else {}
        with app.producer_or_acquire() as producer:
            ids = [slow.apply_async((float(seconds),), queue=queue, producer=producer, **extra).id
                   for _ in range(int(n))]
        out = {"ids": ids}
    elif what.startswith("send:"):
        # Tasks by name, not awaited: `send:QUEUE:TASK:JSON_ARGS[:N]` -> their ids.
        _, queue, name, args, *n = what.split(":", 4)
        with app.producer_or_acquire() as producer:
            ids = [app.send_task(name, tuple(json.loads(args)), queue=queue, producer=producer).id
                   for _ in range(int(n[0]) if n else 1)]
        out = {"ids": ids}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
