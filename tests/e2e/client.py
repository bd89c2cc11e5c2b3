"""Run Celery calls as a client configured exactly like the operator's workers (its bootstrap module).

Used by the end-to-end tests in a subprocess: `python client.py add-low` etc.; prints JSON.
"""

from __future__ import annotations

import json
import sys

import celery_operator_app  # the module the operator ships in the ConfigMap


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
    elif what.startswith("publish:"):
        _, queue, n, seconds = what.split(":")
        slow = app.tasks["sample_tasks.tasks.slow"]
        with app.producer_or_acquire() as producer:
            ids = [slow.apply_async((float(seconds),), queue=queue, producer=producer).id for _ in range(int(n))]
        out = {"ids": ids}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
