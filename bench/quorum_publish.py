"""Tasks lost by producers that close right after a burst, and what publisher confirms cost.

Real RabbitMQ on loopback (started by the dev harness); the producers are tests/e2e/client.py loading
the generated config as a user's producer does (its `bursts` mode: each burst on a connection of its own,
closed right after). Nothing consumes. Arms, each in a vhost of its own:
- queue type classic or quorum;
- confirms off (Celery's default, the baseline) or on. The generated config decides (on for an app with a
  quorum queue), and the app's `broker_transport_options.confirm_publish` overrides it for the other two
  arms, as a user would.
Per arm and try: tasks sent, tasks in the queue once its count stops changing, the difference (lost), and the
publish rate (tasks sent over the slowest producer's publishing seconds, process start excluded). Then,
per queue type, the ratios of confirms on to off. A second table does the same with one producer alone:
the cost of waiting for each confirm, with no concurrency to hide it. A third has publishers on py-amqp
alone (no Celery), which publish faster than Celery's producers and so keep a quorum queue busier.

    .venv/bin/python bench/quorum_publish.py [--tries 3] [--producers 8] [--bursts 10] [--per-burst 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

import amqp  # noqa: E402
import kombu  # noqa: E402
from tests.fixtures.workers import client_env, write_config  # noqa: E402
from tests.unit import crs  # noqa: E402

from celery_operator.brokers.rabbitmq import RabbitMQBroker  # noqa: E402
from celery_operator.config import celery_config  # noqa: E402
from celery_operator.topology import Topology  # noqa: E402
from localenv.brokers import RabbitMQ  # noqa: E402

CLIENT = REPO / "tests" / "e2e" / "client.py"
QUEUE = "work"


def topology(queue_type: str, confirms: bool) -> Topology:
    """The app's config sets confirm_publish only where the generated default differs from `confirms`."""
    queues = [crs.queue(QUEUE, queueType=queue_type, tasks=["sample_tasks.tasks.add"])]
    default = bool(celery_config(Topology.of(crs.app(), queues=queues)).get("broker_transport_options", {}).get(
        "confirm_publish"))
    config = {} if default == confirms else {"broker_transport_options": {"confirm_publish": confirms}}
    return Topology.of(crs.app(config=config), queues=queues)


def settled_count(url: str, timeout: float = 60) -> int:
    """The queue's message count once it has not changed for 3 reads a second apart."""
    last, same = -1, 0
    deadline = time.monotonic() + timeout
    with kombu.Connection(url, connect_timeout=5) as conn:
        while same < 3 and time.monotonic() < deadline:
            count = conn.default_channel.queue_declare(QUEUE, passive=True).message_count
            same = same + 1 if count == last else 0
            last = count
            if same < 3:
                time.sleep(1)
    return last


def arm(server: RabbitMQ, tmp: Path, queue_type: str, confirms: bool, producers: int, bursts: int,
        per_burst: int) -> dict[str, Any]:
    vhost = f"bench-{secrets.token_hex(4)}"
    server.add_vhost(vhost)
    try:
        topo = topology(queue_type, confirms)
        url = server.url(vhost)
        failed = [r for r in RabbitMQBroker(url, server.management_url).declare(
            topo.effective_exchanges, topo.effective_queues) if not r.ok]
        assert not failed, failed
        env = client_env(topo, write_config(topo, tmp / vhost), url)
        procs = [subprocess.Popen([sys.executable, str(CLIENT), f"bursts:{QUEUE}:{bursts}:{per_burst}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(producers)]
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"producer failed:\n{err[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        sent = sum(r["sent"] for r in reports)
        arrived = settled_count(url)
        return {"queue": queue_type, "confirms": confirms, "sent": sent, "arrived": arrived, "lost": sent - arrived,
                "rate": sent / max(r["seconds"] for r in reports),
                "retried": sum(len(r.get("retried", ())) for r in reports)}
    finally:
        server.delete_vhost(vhost)


def raw_publisher(args: tuple[str, int, int, bool]) -> tuple[int, float]:
    """py-amqp alone (no Celery): bursts on connections of their own, each closed right after (AMQP close)."""
    url, bursts, per_burst, confirms = args
    parts = urllib.parse.urlsplit(url)
    sent, started = 0, time.monotonic()
    for _ in range(bursts):
        conn = amqp.Connection(f"{parts.hostname}:{parts.port}", userid=parts.username, password=parts.password,
                               virtual_host=urllib.parse.unquote(parts.path[1:]), confirm_publish=confirms)
        conn.connect()
        ch = conn.channel()
        for i in range(per_burst):
            ch.basic_publish(amqp.Message(f"{sent + i}", delivery_mode=2), exchange="", routing_key=QUEUE)
        sent += per_burst
        conn.close()
    return sent, time.monotonic() - started


def raw_arm(server: RabbitMQ, queue_type: str, confirms: bool, producers: int, bursts: int,
            per_burst: int) -> dict[str, Any]:
    vhost = f"bench-{secrets.token_hex(4)}"
    server.add_vhost(vhost)
    try:
        url = server.url(vhost)
        with kombu.Connection(url, connect_timeout=5) as conn:
            conn.default_channel.queue_declare(QUEUE, durable=True, auto_delete=False,
                                               arguments={"x-queue-type": queue_type})
        with multiprocessing.get_context("spawn").Pool(producers) as pool:
            results = pool.map(raw_publisher, [(url, bursts, per_burst, confirms)] * producers)
        sent = sum(n for n, _ in results)
        arrived = settled_count(url)
        return {"queue": queue_type, "confirms": confirms, "sent": sent, "arrived": arrived, "lost": sent - arrived,
                "rate": sent / max(s for _, s in results), "retried": 0}
    finally:
        server.delete_vhost(vhost)


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'queue':<9}{'confirms':>9}{'sent':>8}{'arrived':>9}{'lost':>6}{'tasks/s':>9}")
    for r in rows:
        print(f"{r['queue']:<9}{'on' if r['confirms'] else 'off':>9}{r['sent']:>8}{r['arrived']:>9}{r['lost']:>6}"
              f"{r['rate']:>9.0f}" + (f"  ({r['retried']} publishes retried)" if r["retried"] else ""))
    for queue_type in ("classic", "quorum"):
        on = [r for r in rows if r["queue"] == queue_type and r["confirms"]]
        off = [r for r in rows if r["queue"] == queue_type and not r["confirms"]]
        if not on or not off:
            continue
        rate_on, rate_off = (sum(r["rate"] for r in rs) / len(rs) for rs in (on, off))
        print(f"{queue_type}: lost {sum(r['lost'] for r in on)} of {sum(r['sent'] for r in on)} with confirms, "
              f"{sum(r['lost'] for r in off)} of {sum(r['sent'] for r in off)} without (the baseline); "
              f"publish rate with/without {rate_on / rate_off:.2f}x ({rate_on:.0f} / {rate_off:.0f} tasks/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--producers", type=int, default=8)
    ap.add_argument("--bursts", type=int, default=10)
    ap.add_argument("--per-burst", type=int, default=100)
    args = ap.parse_args()
    arms = [(q, c) for q in ("classic", "quorum") for c in (False, True)]
    with tempfile.TemporaryDirectory(prefix="bench-quorum-") as tmp, RabbitMQ() as server:
        together = [arm(server, Path(tmp), q, c, args.producers, args.bursts, args.per_burst)
                    for _ in range(args.tries) for q, c in arms]
        alone = [arm(server, Path(tmp), q, c, 1, args.bursts, args.per_burst) for _ in range(args.tries)
                 for q, c in arms]
        raw = [raw_arm(server, q, c, args.producers, args.bursts, args.per_burst) for _ in range(args.tries)
               for q, c in arms]
    table(f"{args.producers} producers at once, each {args.bursts} bursts of {args.per_burst} tasks, "
          f"{args.tries} tries per arm", together)
    table(f"1 producer, {args.bursts} bursts of {args.per_burst} tasks, {args.tries} tries per arm", alone)
    table(f"py-amqp without Celery (a faster publisher): {args.producers} at once, each {args.bursts} bursts of "
          f"{args.per_burst} messages, {args.tries} tries per arm", raw)


if __name__ == "__main__":
    main()
