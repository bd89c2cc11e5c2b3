"""A producer, as a web Deployment would be one: it sends tasks by name only, and the operator's
generated config routes them (the `tasks` of each CeleryQueue become `task_routes`).

Run in a pod wired as `celery-operator producer-patch` prints (the app's ConfigMap mounted and on
PYTHONPATH, the broker URL from its Secret): ``python -m sample_tasks.producer``. It sends one
``slow`` and one ``echo`` task, prints their ids as JSON, then stays up like a web server would.
"""

from __future__ import annotations

import json
import threading
from typing import Any


def send(app: Any) -> dict[str, str]:
    """Send by name only: no queue, exchange or routing key here."""
    return {"slow": app.send_task("sample_tasks.tasks.slow", (0.1,)).id,
            "echo": app.send_task("sample_tasks.tasks.echo", ("routed by the operator",)).id}


def main() -> None:
    import celery_operator_app  # the bootstrap module, from the app's ConfigMap

    print(json.dumps(send(celery_operator_app.app)), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
