"""What one depth poll costs, against real RabbitMQ and Redis started by the dev harness.

For 10, 100 and 1000 queues on each broker, times `measure()` over all of them (median of N runs)
and, in the same run, a naive baseline implemented only here: one management request per queue
(RabbitMQ) and one LLEN round trip per priority list (Redis). Prints a table; asserts nothing.

    .venv/bin/python bench/poll_cost.py [--runs 7] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "dev")]

import amqp  # noqa: E402
import redis  # noqa: E402
from kombu import Connection, Exchange, Producer  # noqa: E402

from celery_operator.brokers.rabbitmq import ManagementClient, RabbitMQBroker  # noqa: E402
from celery_operator.brokers.redis import RedisBroker  # noqa: E402
from celery_operator.models import CeleryQueue  # noqa: E402
from localenv.brokers import RabbitMQ, Redis  # noqa: E402


def queue(name: str) -> CeleryQueue:
    return CeleryQueue.of({"metadata": {"name": name, "namespace": "bench"}, "spec": {
        "appRef": {"name": "bench"}, "durable": True, "autoDelete": False, "queueType": "classic",
        "deletionPolicy": "Delete"}})


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up (connections, caches)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def bench_rabbitmq(server: RabbitMQ, sizes: list[int], runs: int) -> list[tuple[str, int, float, float]]:
    rows = []
    for n in sizes:
        vhost = f"bench-{n}"
        server.add_vhost(vhost)
        broker = RabbitMQBroker(server.url(vhost), server.management_url)
        names = [f"q{i:04d}" for i in range(n)]
        broker.declare([], [queue(name) for name in names])
        conn = amqp.Connection(host=f"127.0.0.1:{server.amqp_port}", userid=server.user,
                               password=server.password, virtual_host=vhost, connect_timeout=5)
        conn.connect()
        ch = conn.channel()
        for i, name in enumerate(names):
            for _ in range(i % 5):
                ch.basic_publish(amqp.Message("x"), "", name)
        conn.close()
        qv = urllib.parse.quote(vhost, safe="")

        def naive(names: list[str] = names, qv: str = qv, client: ManagementClient = broker.management_api) -> int:
            total = 0
            for name in names:  # GET /api/queues/<vhost>/<name> per queue, as KEDA's scaler does
                total += int(client.request("GET", f"/api/queues/{qv}/{name}", timeout=10).get("messages_ready", 0))
            return total

        ours = median_ms(lambda b=broker, ns=names: b.measure(ns), runs)
        base = median_ms(naive, runs)
        rows.append(("rabbitmq", n, ours, base))
        server.delete_vhost(vhost)
    return rows


def bench_redis(server: Redis, sizes: list[int], runs: int) -> list[tuple[str, int, float, float]]:
    rows = []
    for n in sizes:
        db = n % server.databases
        url = server.url(db)
        client = redis.Redis.from_url(url)
        client.flushdb()
        broker = RedisBroker(url)
        names = [f"q{i:04d}" for i in range(n)]
        broker.declare([], [queue(name) for name in names])
        with Connection(url) as conn, conn.channel() as ch:
            for i, name in enumerate(names[: min(n, 200)]):
                Producer(ch, exchange=Exchange(name, "direct")).publish(
                    {"i": i}, routing_key=name, priority=(i % 4) * 3)
        lists = [key for name in names for key in broker.priority_lists(name)]

        def naive(lists: list[str] = lists, client: redis.Redis = client) -> int:
            return sum(int(client.llen(key)) for key in lists)  # one round trip per list

        ours = median_ms(lambda b=broker, ns=names: b.measure(ns), runs)
        base = median_ms(naive, runs)
        rows.append(("redis", n, ours, base))
        client.flushdb()
        client.close()
        broker.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="10,100,1000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[tuple[str, int, float, float]] = []
    with Redis() as r:
        rows += bench_redis(r, sizes, args.runs)
    with RabbitMQ() as q:
        rows += bench_rabbitmq(q, sizes, args.runs)
    print(f"{'broker':<10}{'queues':>8}{'measure() ms':>15}{'naive ms':>12}{'naive/measure':>15}")
    for broker, n, ours, base in rows:
        print(f"{broker:<10}{n:>8}{ours:>15.2f}{base:>12.2f}{base / ours:>14.1f}x")
    print(f"(median of {args.runs} polls; naive = one request per queue on RabbitMQ, "
          "one LLEN round trip per priority list on Redis)")


if __name__ == "__main__":
    main()
