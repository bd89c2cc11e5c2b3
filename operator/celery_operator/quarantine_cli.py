"""`celery-operator quarantine list|replay|purge APP -n NS [--task NAME]... [--id ID]...`.

It works through the cluster as kubectl does (the kubeconfig or in-cluster credentials): `list` reads the
app's status.quarantinedTasks; `replay` and `purge` set the app's annotation
(celery-operator.dev/replay-quarantine, .../purge-quarantine), which the operator carries out on its next
broker poll (moving the messages back to their queues, or dropping them, and clearing their death counts),
and wait until it has removed the annotation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from celery_operator import api


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser("quarantine", help="list, replay or purge the tasks an app's workers set aside as poison")
    q.add_argument("action", choices=["list", "replay", "purge"])
    q.add_argument("app", help="metadata.name of the CeleryApp")
    q.add_argument("-n", "--namespace", default="default")
    q.add_argument("--task", action="append", default=[], metavar="NAME", help="only tasks of this name (repeatable)")
    q.add_argument("--id", action="append", default=[], metavar="ID", help="only this task id (repeatable)")
    q.add_argument("--no-wait", action="store_true", help="set the annotation and return")
    q.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the operator")


def selector(task: list[str], ids: list[str]) -> str:
    if task and ids:
        raise SystemExit("give --task or --id, not both")
    if task:
        return "task=" + ",".join(task)
    if ids:
        return "id=" + ",".join(ids)
    return "all"


def table(app: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = (app.get("status") or {}).get("quarantinedTasks") or []
    lines = [f"{'ID':<38} {'TASK':<40} {'QUEUE':<20} {'DEATHS':>6}  PODS"]
    for r in rows:
        lines.append(f"{r.get('id', ''):<38} {r.get('name', ''):<40} {r.get('queue', ''):<20} "
                     f"{r.get('deaths', 0):>6}  {','.join(r.get('pods') or [])}")
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> int:
    from celery_operator.kube.client import KubeClient

    client = await KubeClient.login()
    try:
        app = await client.get(api.APP, args.namespace, args.app)
        if app is None:
            sys.stderr.write(f"CeleryApp {args.namespace}/{args.app} not found\n")
            return 1
        if args.action == "list":
            sys.stdout.write(table(app))
            return 0
        annotation = api.ANNOTATION_REPLAY_QUARANTINE if args.action == "replay" else api.ANNOTATION_PURGE_QUARANTINE
        value = selector(args.task, args.id)
        await client.patch(api.APP, args.namespace, args.app, {"metadata": {"annotations": {annotation: value}}},
                           guarded=False)
        if args.no_wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            app = await client.get(api.APP, args.namespace, args.app) or {}
            if annotation not in (app.get("metadata", {}).get("annotations") or {}):
                sys.stdout.write(f"{args.action} of {value} done (see `kubectl describe celeryapp {args.app}`)\n")
                return 0
        sys.stderr.write(f"the operator has not carried out the {args.action} within {args.timeout:.0f}s: is it "
                         "running, and is the broker reachable?\n")
        return 1
    finally:
        await client.close()
