"""Side by side with KEDA: the same work, worker image, brokers and node, three autoscalers, one run.

Arms (every row runs all three):
- **ours**: a CeleryWorkerPool with `autoscaling` (pollIntervalSeconds POLL, scaleDownStabilizationSeconds
  DOWN, targetMessagesPerReplica TARGET, or targetWaitSeconds on the last row);
- **keda**: a plain Deployment of the same workers (the very Deployment the operator would render for the
  pool, rendered offline by `celery_operator.offline` and applied without the operator's labels and owner)
  and a ScaledObject as a KEDA user writes it: the RabbitMQ trigger in `QueueLength` mode over HTTP or
  the Redis `listLength` trigger, `value` = the same target per replica, min/max the same, every other
  setting KEDA's default (pollingInterval 30 s, cooldownPeriod 300 s, the HPA's default behavior);
- **tuned**: the same, with pollingInterval POLL, cooldownPeriod DOWN, the HPA's scale-down
  stabilization DOWN and no scale-up rate limit (ours has none), i.e. the same timing as ours except the
  HPA's sync period (15 s), which is a kube-controller-manager flag and not a ScaledObject setting.

KEDA v$KEDA_VERSION is built from its Go module and installed from its own manifests (localenv.keda);
its HPA reads the external metric through the API server's aggregation layer. The operator runs as a
process watching the benchmark's namespaces. Rows:

1. burst: N tasks into an idle queue (pool at min 1, and at 0): first scale-up decision (the Deployment's
   replicas raised), first new ready replica, peak, drain,
   replica-seconds against the least the work needs;
2. scale-in with tasks running (acks_late, reject on worker lost, mixed durations): tasks interrupted,
   redelivered and lost per scale-in, longest wait of a queued task;
3. prefetch (multiplier 4), RabbitMQ and Redis: the depth each autoscaler sees against tasks outstanding;
4. Redis priorities 0, 5 and 9: the depth seen against tasks sent;
5. a 60 s RabbitMQ outage during a backlog (the three arms at once, one outage): replicas during and after;
6. two queues, fast and slow tasks: p95 wait per queue and replica-seconds (ours on targetWaitSeconds;
   KEDA's best trigger for it, QueueLength with a per-queue value worked out from the task duration).

Prints each row's figures with the ratios KEDA/ours, then one `keda:` summary line and all figures as JSON.
Runs on the `make up` cluster when there is one (`.local/state.json`, or LOCALENV_REUSE=<state.json>),
else starts its own (one node per machine: never both).

    .venv/bin/python bench/keda.py [--rows 1,2,3,4,5,6]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis  # noqa: E402
from tests.fixtures.operator import OperatorProcess, celery_call, celery_client_env, start_operator  # noqa: E402

from celery_operator import api  # noqa: E402
from celery_operator.offline import render_documents  # noqa: E402
from celery_operator.render import names  # noqa: E402
from localenv import keda  # noqa: E402
from localenv.cluster import Cluster, running_or_own  # noqa: E402

ARMS = ("ours", "keda", "tuned")
TARGET = 5  # messages per replica (every arm)
POLL = 2  # ours pollIntervalSeconds = tuned KEDA pollingInterval
DOWN = 30  # ours scaleDownStabilizationSeconds = tuned KEDA cooldownPeriod and HPA scale-down window
APP = "bench"
BROKERS_NAMESPACE = "bench-keda-brokers"
NS_PREFIX = "bench-keda-"
SAMPLE_SECONDS = 0.5
OUTAGE_SECONDS = 60


def log(msg: str) -> None:
    print(f"  {msg}", flush=True)


# -- the brokers -------------------------------------------------------------------------------------

@dataclass
class Brokers:
    rabbit: PodRabbitMQ
    redis: PodRedis
    _next_db: int = 1

    def db(self) -> int:
        self._next_db = self._next_db % (PodRedis.databases - 1) + 1
        return self._next_db


@dataclass
class Broker:
    """One arm's broker: a vhost of the RabbitMQ pod, or a database of the Redis pod."""

    kind: str  # rabbitmq | redis
    url: str
    management_url: str
    vhost: str = ""
    db: int = 0

    def keda_auth(self, brokers: Brokers) -> dict[str, str]:
        """What KEDA's TriggerAuthentication reads from a Secret."""
        if self.kind == "rabbitmq":
            r = brokers.rabbit
            return {"host": f"http://{r.user}:{r.password}@{r.host}:15672/{urllib.parse.quote(self.vhost, safe='')}"}
        return {"password": brokers.redis.password}

    def keda_trigger(self, brokers: Brokers, queue: str, value: int) -> dict[str, Any]:
        if self.kind == "rabbitmq":
            meta = {"protocol": "http", "mode": "QueueLength", "value": str(value), "queueName": queue,
                    "vhostName": self.vhost}
            return {"type": "rabbitmq", "metadata": meta, "authenticationRef": {"name": "broker"}}
        meta = {"address": f"{brokers.redis.host}:6379", "listName": queue, "listLength": str(value),
                "databaseIndex": str(self.db)}
        return {"type": "redis", "metadata": meta, "authenticationRef": {"name": "broker"}}


def new_broker(brokers: Brokers, kind: str) -> Broker:
    if kind == "rabbitmq":
        vhost = f"bench-{secrets.token_hex(4)}"
        brokers.rabbit.add_vhost(vhost)
        return Broker(kind, brokers.rabbit.url(vhost), brokers.rabbit.management_url, vhost=vhost)
    db = brokers.db()
    with _redis(brokers.redis, db) as r:
        r.flushdb()
    return Broker(kind, brokers.redis.url(db), "", db=db)


def _redis(server: PodRedis, db: int) -> Any:
    import redis

    return redis.Redis.from_url(server.local_url(db), socket_connect_timeout=5, socket_timeout=10)


# -- one arm's workload ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pool:
    name: str
    queue: str
    min_replicas: int
    max_replicas: int
    target: int = TARGET  # messages per replica (KEDA's `value` too)
    wait_seconds: int | None = None  # ours on targetWaitSeconds instead of depth
    concurrency: int = 2
    prefetch: int = 1
    grace_seconds: int = 30


def app_docs(broker: Broker, pools: list[Pool], config: dict[str, Any]) -> list[dict[str, Any]]:
    v = api.API_VERSION
    ext: dict[str, Any] = {"urlSecretRef": {"name": "broker", "key": "url"}}
    if broker.kind == "rabbitmq":
        ext["managementUrlSecretRef"] = {"name": "broker", "key": "managementUrl"}
    docs: list[dict[str, Any]] = [
        {"apiVersion": v, "kind": "CeleryApp", "metadata": {"name": APP},
         "spec": {"image": "", "app": "sample_tasks.app", "config": config, "broker": {"external": ext},
                  "resultBackend": {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}}}]
    for q in sorted({p.queue for p in pools}):
        docs.append({"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": q.replace("_", "-")},
                     "spec": {"appRef": {"name": APP}, "name": q}})
    return docs


def pool_doc(pool: Pool, autoscaled: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"appRef": {"name": APP}, "queues": [pool.queue], "concurrency": pool.concurrency,
                            "prefetchMultiplier": pool.prefetch, "terminationGracePeriodSeconds": pool.grace_seconds,
                            "replicas": pool.min_replicas}
    if autoscaled:
        a: dict[str, Any] = {"minReplicas": pool.min_replicas, "maxReplicas": pool.max_replicas,
                             "pollIntervalSeconds": POLL, "scaleDownStabilizationSeconds": DOWN}
        if pool.wait_seconds is not None:
            a["targetWaitSeconds"] = pool.wait_seconds
        else:
            a["targetMessagesPerReplica"] = pool.target
        spec["autoscaling"] = a
    return {"apiVersion": api.API_VERSION, "kind": "CeleryWorkerPool", "metadata": {"name": pool.name}, "spec": spec}


def plain_deployment(rendered: dict[str, Any], name: str) -> dict[str, Any]:
    """The operator's Deployment for a pool as a user's own: no owner, no operator labels or annotations."""
    d = copy.deepcopy(rendered)
    labels = {"app.kubernetes.io/name": "celery-worker", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/managed-by": "bench-keda"}
    d["metadata"] = {"name": name, "namespace": rendered["metadata"]["namespace"], "labels": labels}
    d["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/instance": name}}
    tmpl = d["spec"]["template"]
    tmpl["metadata"]["labels"] = labels
    return d


def scaled_object(name: str, pool: Pool, trigger: dict[str, Any], tuned: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"scaleTargetRef": {"name": name}, "minReplicaCount": pool.min_replicas,
                            "maxReplicaCount": pool.max_replicas, "triggers": [trigger]}
    if tuned:
        spec |= {"pollingInterval": POLL, "cooldownPeriod": DOWN, "advanced": {"horizontalPodAutoscalerConfig": {
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0,
                                     "policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}]},
                         "scaleDown": {"stabilizationWindowSeconds": DOWN}}}}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name}, "spec": spec}


@dataclass
class Sample:
    t: float
    spec: int
    pods: int
    ready: int


@dataclass
class Arm:
    """One autoscaler's copy of a row's workload, in a namespace of its own."""

    bench: Bench
    arm: str
    ns: str
    broker: Broker
    pools: list[Pool]
    client_env: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def kubectl(self) -> Callable[..., Any]:
        return self.bench.cluster.control_plane.kubectl

    def deployment(self, pool: Pool) -> str:
        return names.worker(APP, pool.name) if self.arm == "ours" else f"plain-{pool.name}"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        r = self.kubectl("get", kind, name, "-n", self.ns, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def publish(self, pool: Pool, n: int, seconds: float, priority: int | None = None) -> tuple[float, list[str]]:
        what = f"publish:{pool.queue}:{n}:{seconds}" + (f":{priority}" if priority is not None else "")
        t = time.time()
        ids = celery_call(self.bench.cluster, self.client_env, what)["ids"]
        return t, list(ids)

    def tracked(self, pool: Pool, n: int, seconds: float) -> tuple[float, list[str]]:
        t = time.time()
        return t, list(celery_call(self.bench.cluster, self.client_env, f"tracked:{pool.queue}:{n}:{seconds}")["ids"])

    # sampling replicas
    def start_sampling(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                t = time.time()
                r = self.kubectl("get", "deployments", "-n", self.ns, "-o", "json", check=False)
                if r.returncode == 0:
                    for d in json.loads(r.stdout)["items"]:
                        st = d.get("status") or {}
                        self.samples.setdefault(d["metadata"]["name"], []).append(Sample(
                            t, int(d["spec"].get("replicas") or 0), int(st.get("replicas") or 0),
                            int(st.get("readyReplicas") or 0)))
                self._stop.wait(SAMPLE_SECONDS)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def series(self, pool: Pool) -> list[Sample]:
        return self.samples.get(self.deployment(pool), [])

    def replica_seconds(self, pool: Pool, t0: float, t1: float) -> float:
        s = [x for x in self.series(pool) if t0 <= x.t <= t1]
        return sum(a.pods * (b.t - a.t) for a, b in itertools.pairwise(s))

    # what the autoscaler sees
    def seen_depth(self, pool: Pool) -> int | None:
        """The depth this arm's autoscaler decides on: ours from the pool's status, KEDA's from the external
        metric its HPA reads (through the API server's aggregation layer)."""
        if self.arm == "ours":
            st = (self.get("celeryworkerpool", pool.name) or {}).get("status") or {}
            if "queueDepth" not in st:
                return None
            return int(st["queueDepth"]) + int(st.get("messagesInFlight") or 0)
        hpa = self.get("hpa", f"keda-hpa-{self.deployment(pool)}")
        if hpa is None:
            return None
        metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        r = self.kubectl("get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{self.ns}/{metric}"
                         f"?labelSelector=scaledobject.keda.sh%2Fname%3D{self.deployment(pool)}", check=False)
        if r.returncode != 0:
            return None
        items = json.loads(r.stdout)["items"]
        return sum(_quantity(i["value"]) for i in items) if items else None

    # results
    def results(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with _redis(self.bench.brokers.redis, self.backend_db) as r:
            raw = r.mget([f"celery-task-meta-{i}" for i in ids])
        return {i: json.loads(v) for i, v in zip(ids, raw, strict=True) if v is not None}

    def runs(self, ids: list[str]) -> dict[str, list[str]]:
        with _redis(self.bench.brokers.redis, self.backend_db) as r:
            pipe = r.pipeline()
            for i in ids:
                pipe.lrange(f"sample-tasks:runs:{i}", 0, -1)
            got = pipe.execute()
        return {i: [e.decode() for e in entries] for i, entries in zip(ids, got, strict=True)}

    def wait_done(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            done = self.results(ids)
            if len(done) == len(ids) or time.monotonic() > deadline:
                return done
            time.sleep(1)

    backend_db: int = 0


def _quantity(q: str) -> int:
    """A resource.Quantity as KEDA writes metric values: '12', '12500m', '1k'."""
    mult = {"m": 0.001, "k": 1e3, "M": 1e6}
    if q and q[-1] in mult:
        return round(float(q[:-1]) * mult[q[-1]])
    return round(float(q))


def _done_at(result: dict[str, Any]) -> float:
    d = datetime.fromisoformat(result["date_done"])
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


@dataclass
class Bench:
    cluster: Cluster
    brokers: Brokers
    tmp: Path
    operator: OperatorProcess | None = None

    @contextlib.contextmanager
    def arm(self, arm: str, row: str, broker_kind: str, pools: list[Pool],
            config: dict[str, Any] | None = None) -> Iterator[Arm]:
        cp = self.cluster.control_plane
        ns = f"{NS_PREFIX}{row}-{arm}-{uuid.uuid4().hex[:4]}"
        cp.kubectl("create", "namespace", ns)
        broker = new_broker(self.brokers, broker_kind)
        backend_db = self.brokers.db()
        with _redis(self.brokers.redis, backend_db) as r:
            r.flushdb()
        a = Arm(self, arm, ns, broker, pools)
        a.backend_db = backend_db
        try:
            backend = self.brokers.redis.url(backend_db)
            cp.kubectl("create", "secret", "generic", "broker", "-n", ns, f"--from-literal=url={broker.url}",
                       f"--from-literal=managementUrl={broker.management_url}")
            cp.kubectl("create", "secret", "generic", "backend", "-n", ns, f"--from-literal=url={backend}")
            docs = app_docs(broker, pools, config or {})
            docs[0]["spec"]["image"] = self.cluster.image("sample-tasks")
            applied = docs + ([pool_doc(p, True) for p in pools] if arm == "ours" else [])
            _apply(cp, ns, applied)
            if arm != "ours":
                rendered = render_documents(copy.deepcopy(docs + [pool_doc(p, False) for p in pools]), ns)
                deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
                auth = broker.keda_auth(self.brokers)
                cp.kubectl("create", "secret", "generic", "keda-broker", "-n", ns,
                           *(f"--from-literal={k}={v}" for k, v in auth.items()))
                objs: list[dict[str, Any]] = [
                    {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "broker"},
                     "spec": {"secretTargetRef": [{"parameter": k, "name": "keda-broker", "key": k} for k in auth]}}]
                for p in pools:
                    name = a.deployment(p)
                    objs.append(plain_deployment(deployments[names.worker(APP, p.name)], name))
                    objs.append(scaled_object(name, p, broker.keda_trigger(self.brokers, p.queue, p.target),
                                              tuned=arm == "tuned"))
                _apply(cp, ns, objs)
            for q in {p.queue for p in pools}:
                _wait(lambda q=q: _ready(a.get("celeryqueue", q.replace("_", "-"))), 90, f"{ns}: queue {q} declared")
            cm = _wait(lambda: a.get("configmap", f"{APP}-celery-config"), 60, f"{ns}: ConfigMap")
            a.client_env = celery_client_env(_mkdir(self.tmp / ns), cm, _local(broker, self.brokers),
                                             self.brokers.redis.local_url(backend_db))
            for p in pools:
                _wait(lambda p=p: (self._ready_replicas(a, p) >= p.min_replicas), 180,
                      f"{ns}: {a.deployment(p)} at its minimum {p.min_replicas}")
            a.start_sampling()
            yield a
        finally:
            a.stop_sampling()
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            if broker.kind == "rabbitmq":
                with contextlib.suppress(Exception):
                    self.brokers.rabbit.delete_vhost(broker.vhost)

    def _ready_replicas(self, a: Arm, p: Pool) -> int:
        d = a.get("deployment", a.deployment(p))
        if d is None:
            return -1
        return int((d.get("status") or {}).get("readyReplicas") or 0)


def _local(broker: Broker, brokers: Brokers) -> str:
    """The broker URL for this process (the Service's ClusterIP, not its DNS name)."""
    if broker.kind == "rabbitmq":
        return brokers.rabbit.local_url(broker.vhost)
    return brokers.redis.local_url(broker.db)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _apply(cp: Any, ns: str, docs: list[dict[str, Any]]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _ready(obj: dict[str, Any] | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in ((obj or {}).get("status") or {}).get("conditions") or [])


def _wait(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {timeout:.0f}s")


# -- the rows ----------------------------------------------------------------------------------------

Figures = dict[str, Any]


def burst(b: Bench, arm: str, min_replicas: int) -> Figures:
    n, seconds = 48, 4.0
    pool = Pool("burst", "burst_q", min_replicas, 6)
    with b.arm(arm, f"burst{min_replicas}", "rabbitmq", [pool]) as a:
        t0, ids = a.publish(pool, n, seconds)
        done = a.wait_done(ids, 600)
        drained = max(_done_at(r) for r in done.values()) if len(done) == len(ids) else float("nan")
        time.sleep(1)
        s = a.series(pool)
        after = [x for x in s if x.t >= t0]
        first_scale = next((x.t - t0 for x in after if x.spec > min_replicas), float("nan"))
        first_ready = next((x.t - t0 for x in after if x.ready > min_replicas), float("nan"))
        peak = max((x.ready for x in after), default=0)
        at_peak = next((x.t - t0 for x in after if x.ready == peak), float("nan"))
        return {"first_scale_s": round(first_scale, 1), "first_ready_s": round(first_ready, 1),
                "peak_replicas": peak, "peak_s": round(at_peak, 1),
                "drain_s": round(drained - t0, 1), "replica_s": round(a.replica_seconds(pool, t0, drained), 1),
                "least_replica_s": n * seconds / pool.concurrency, "done": len(done)}


def scale_in(b: Bench, arm: str) -> Figures:
    """Mixed durations on a pool of up to 4 single-slot workers, acks_late + reject on worker lost, a 10 s grace
    period: a busy worker removed cuts its task, which runs again."""
    pool = Pool("drain", "drain_q", 1, 4, target=2, concurrency=1, grace_seconds=10)
    config = {"task_acks_late": True, "task_reject_on_worker_lost": True}
    with b.arm(arm, "scalein", "rabbitmq", [pool], config) as a:
        t0 = time.time()
        ids: list[str] = []
        published: dict[str, float] = {}
        for count, secs in ((4, 4.0), (2, 25.0), (2, 45.0)):
            t, got = a.tracked(pool, count, secs)
            ids += got
            published.update(dict.fromkeys(got, t))
        durations = {i: d for i, d in zip(ids, [4.0] * 4 + [25.0] * 2 + [45.0] * 2, strict=True)}
        done = a.wait_done(ids, 400)
        end = max((_done_at(r) for r in done.values()), default=time.time())
        # keep watching until the pool is back at its minimum or DOWN + 60 s more (KEDA's default 300 s
        # scale-down window would not end within a bench row: what it cost is in the replica-seconds)
        _wait_quiet(lambda: (a.series(pool) or [Sample(0, 0, 0, 0)])[-1].spec <= pool.min_replicas,
                    DOWN + 60)
        runs = a.runs(ids)
        s = [x for x in a.series(pool) if x.t >= t0]
        scale_ins = sum(1 for x, y in itertools.pairwise(s) if y.spec < x.spec)
        interrupted = sum(sum(1 for e in r if e.startswith("start:")) - sum(1 for e in r if e.startswith("end:"))
                          for r in runs.values())
        redelivered = sum(1 for r in runs.values() if sum(1 for e in r if e.startswith("start:")) > 1)
        lost = len(ids) - len(done)
        waits = [_done_at(done[i]) - durations[i] - published[i] for i in done]
        return {"scale_ins": scale_ins, "interrupted": interrupted, "redelivered": redelivered, "lost": lost,
                "longest_wait_s": round(max(waits, default=float("nan")), 1),
                "replica_s": round(a.replica_seconds(pool, t0, time.time()), 1),
                "work_s": round(end - t0, 1)}


def _wait_quiet(fn: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not fn():
        time.sleep(1)


def seen(b: Bench, arm: str, row: str, broker: str, pool: Pool, sends: list[tuple[int, float, int | None]],
         window: float) -> Figures:
    """Publish, then read for `window` seconds the depth the autoscaler decides on and the replicas it wants."""
    with b.arm(arm, row, broker, [pool]) as a:
        sent = 0
        for n, secs, prio in sends:
            a.publish(pool, n, secs, prio)
            sent += n
        t_end = time.monotonic() + window
        depths: list[int] = []
        while time.monotonic() < t_end:
            d = a.seen_depth(pool)
            if d is not None:
                depths.append(d)
            time.sleep(1)
        wanted = max((x.spec for x in a.series(pool)), default=0)
        return {"sent": sent, "seen_max": max(depths, default=0), "seen_median": statistics.median(depths or [0]),
                "replicas_max": wanted, "replicas_needed": min(pool.max_replicas, math.ceil(sent / pool.target))}


def prefetch(b: Bench, arm: str, broker: str) -> Figures:
    """One worker (concurrency 2, prefetch multiplier 4: 8 messages held) and 20 tasks of 30 s."""
    pool = Pool("prefetch", "prefetch_q", 1, 6, concurrency=2, prefetch=4)
    return seen(b, arm, f"prefetch-{broker}", broker, pool, [(20, 30.0, None)], 40)


def priorities(b: Bench, arm: str) -> Figures:
    """Redis, a queue with priorities: 10 tasks each at priority 0, 5 and 9."""
    pool = Pool("prio", "prio_q", 0, 6, concurrency=1)
    return seen(b, arm, "priorities", "redis", pool, [(10, 30.0, 0), (10, 30.0, 5), (10, 30.0, 9)], 40)


def outage(b: Bench) -> dict[str, Figures]:
    """The three arms at once on the RabbitMQ pod, each with a backlog; the broker stops for 60 s."""
    pool = Pool("outage", "outage_q", 1, 4)
    out: dict[str, Figures] = {}
    with contextlib.ExitStack() as stack:
        arms = {arm: stack.enter_context(b.arm(arm, "outage", "rabbitmq", [pool])) for arm in ARMS}
        for a in arms.values():
            a.publish(pool, 60, 8.0)
        for a in arms.values():
            _wait_quiet(lambda a=a: bool(a.series(pool)) and a.series(pool)[-1].spec >= pool.max_replicas, 120)
        before = {arm: a.series(pool)[-1].spec for arm, a in arms.items()}
        t_stop = time.time()
        b.brokers.rabbit.stop()
        t_down = time.time()
        time.sleep(max(0.0, OUTAGE_SECONDS - (t_down - t_stop)))  # the outage itself: a fixed duration
        t_start = time.time()
        b.brokers.rabbit.start()
        t_up = time.time()
        _wait_quiet(lambda: False, 60)  # a minute after: what each arm does once the broker is back
        for arm, a in arms.items():
            during = [x.spec for x in a.series(pool) if t_stop <= x.t <= t_up]
            after = [x.spec for x in a.series(pool) if x.t > t_up]
            out[arm] = {"before": before[arm], "during_min": min(during, default=-1),
                        "during_max": max(during, default=-1), "after_min": min(after, default=-1),
                        "after_end": after[-1] if after else -1, "outage_s": round(t_up - t_stop, 1),
                        "broker_restart_s": round(t_up - t_start, 1)}
    return out


def two_queues(b: Bench, arm: str) -> Figures:
    """A fast queue (400 tasks of 0.1 s) and a slow one (24 of 5 s), a pool each, a 5 s wait target. KEDA's
    best trigger for a wait target is QueueLength with value = target wait * concurrency / task duration."""
    target_wait, conc = 5, 2
    fast = Pool("fast", "fast_q", 1, 4, target=round(target_wait * conc / 0.1), wait_seconds=target_wait,
                concurrency=conc)
    slow = Pool("slow", "slow_q", 1, 4, target=round(target_wait * conc / 5.0), wait_seconds=target_wait,
                concurrency=conc)
    with b.arm(arm, "twoq", "rabbitmq", [fast, slow]) as a:
        t_fast, fast_ids = a.publish(fast, 400, 0.1)
        t_slow, slow_ids = a.publish(slow, 24, 5.0)
        done = a.wait_done(fast_ids + slow_ids, 600)
        end = max(_done_at(r) for r in done.values())

        def p95(ids: list[str], t: float, secs: float) -> float:
            waits = sorted(_done_at(done[i]) - secs - t for i in ids if i in done)
            return round(waits[max(0, math.ceil(0.95 * len(waits)) - 1)], 1) if waits else float("nan")

        t0 = min(t_fast, t_slow)
        return {"fast_p95_wait_s": p95(fast_ids, t_fast, 0.1), "slow_p95_wait_s": p95(slow_ids, t_slow, 5.0),
                "replica_s": round(a.replica_seconds(fast, t0, end) + a.replica_seconds(slow, t0, end), 1),
                "drain_s": round(end - t0, 1), "done": len(done)}


# -- printing ----------------------------------------------------------------------------------------

def ratio(k: Any, o: Any) -> str:
    if not isinstance(k, int | float) or not isinstance(o, int | float) or math.isnan(k) or math.isnan(o):
        return "n/a"
    if o == 0:
        return "=" if k == 0 else "∞"
    return f"{k / o:.2f}x"


def table(title: str, figures: dict[str, Figures], keys: list[str]) -> list[str]:
    lines = [f"\n{title}", f"  {'':<22}" + "".join(f"{a:>12}" for a in ARMS) + f"{'keda/ours':>12}{'tuned/ours':>12}"]
    for k in keys:
        vals = [figures.get(a, {}).get(k, float("nan")) for a in ARMS]
        lines.append(f"  {k:<22}" + "".join(f"{v!s:>12}" for v in vals)
                     + f"{ratio(vals[1], vals[0]):>12}{ratio(vals[2], vals[0]):>12}")
    return lines


def _terminate(signum: int, frame: object) -> None:
    # A SIGTERM unwinds like ^C: the operator process and the namespaces this run started are cleaned up.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,2,3,4,5,6")
    args = p.parse_args()
    rows = {int(r) for r in args.rows.split(",")}
    results: dict[str, dict[str, Figures]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-keda-") as d, running_or_own() as c:
        cp = c.control_plane
        print(f"KEDA v{keda.version()}: ", end="", flush=True)
        print("installed already" if keda.installed(c) else f"installed in {keda.install(c):.0f}s", flush=True)
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        brokers = Brokers(PodRabbitMQ(cp, BROKERS_NAMESPACE, "rabbitmq", c.image("rabbitmq")),
                          PodRedis(cp, BROKERS_NAMESPACE, "redis", c.image("redis")))
        bench = Bench(c, brokers, Path(d))
        try:
            brokers.rabbit.deploy()
            brokers.redis.deploy()
            bench.operator = start_operator(c, cp.kubeconfig, Path(d) / "operator.log", "--namespace",
                                            f"{NS_PREFIX}*", "--no-leader-election", lease_namespace=BROKERS_NAMESPACE)
            plan: list[tuple[int, str, Callable[[str], Figures]]] = [
                (1, "burst, pool at min 1", lambda arm: burst(bench, arm, 1)),
                (1, "burst, pool at zero", lambda arm: burst(bench, arm, 0)),
                (2, "scale-in with tasks running", lambda arm: scale_in(bench, arm)),
                (3, "prefetch x4, RabbitMQ", lambda arm: prefetch(bench, arm, "rabbitmq")),
                (3, "prefetch x4, Redis", lambda arm: prefetch(bench, arm, "redis")),
                (4, "Redis priorities 0/5/9", lambda arm: priorities(bench, arm)),
                (6, "two queues, fast and slow", lambda arm: two_queues(bench, arm)),
            ]
            for row, title, fn in plan:
                if row not in rows:
                    continue
                print(f"{title}:", flush=True)
                results[title] = {}
                for arm in ARMS:
                    results[title][arm] = fn(arm)
                    log(f"{arm}: {results[title][arm]}")
            if 5 in rows:
                print("broker outage:", flush=True)
                results["broker outage 60 s"] = outage(bench)
                for arm, f in results["broker outage 60 s"].items():
                    log(f"{arm}: {f}")
        finally:
            if bench.operator is not None:
                bench.operator.stop(10)
            cp.kubectl("delete", "namespace", BROKERS_NAMESPACE, "--wait=false", check=False)
    report(results)
    return 0


KEYS = {
    "burst": ["first_scale_s", "first_ready_s", "peak_replicas", "peak_s", "drain_s", "replica_s", "least_replica_s"],
    "scale-in": ["scale_ins", "interrupted", "redelivered", "lost", "longest_wait_s", "replica_s"],
    "prefetch": ["sent", "seen_max", "seen_median", "replicas_max", "replicas_needed"],
    "Redis": ["sent", "seen_max", "seen_median", "replicas_max", "replicas_needed"],
    "broker": ["before", "during_min", "during_max", "after_min", "after_end", "outage_s"],
    "two": ["fast_p95_wait_s", "slow_p95_wait_s", "replica_s", "drain_s"],
}
# Each row's one figure for the summary line: (key, lower is better)
HEADLINE = {"burst": ("first_scale_s", True), "scale-in": ("interrupted", True), "prefetch": ("seen_max", False),
            "Redis": ("seen_max", False), "broker": ("during_min", False), "two": ("slow_p95_wait_s", True)}


def report(results: dict[str, dict[str, Figures]]) -> None:
    lines: list[str] = []
    summary: list[str] = []
    for title, figures in results.items():
        word = next(w for w in KEYS if title.startswith(w))
        lines += table(title, figures, KEYS[word])
        key, _ = HEADLINE[word]
        o, k, t = (figures.get(a, {}).get(key, float("nan")) for a in ARMS)
        summary.append(f"{title}: {key} ours {o} keda {k} ({ratio(k, o)}) tuned {t} ({ratio(t, o)})")
    print("\n".join(lines))
    print("\nkeda: " + "; ".join(summary))
    print(json.dumps(results))


if __name__ == "__main__":
    raise SystemExit(main())
