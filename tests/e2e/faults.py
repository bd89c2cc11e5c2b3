"""Faults injected around the operator, each measured the same way by the e2e tests and bench/faults.py.

A scenario takes a `Harness` (the cluster, a fresh namespace, the operator's identity, brokers) and
returns an `Outcome`: how many trials, how many converged, tasks lost, duplicate (or orphaned) objects,
seconds to recover, and the facts a test asserts on. Tests assert; the benchmark prints the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib

from celery_operator import api
from localenv.cluster import Cluster
from localenv.controlplane import ControlPlane
from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis
from tests.fixtures.operator import (
    OperatorProcess,
    apply,
    celery_call,
    celery_client_env,
    condition,
    get,
    list_objects,
    metric_line,
    pod_names,
    secret,
    start_operator,
    wait_for,
)
from tests.fixtures.servers import Images

V = api.API_VERSION
Body = dict[str, Any]
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass
class Outcome:
    fault: str
    trials: int
    converged: int
    tasks_lost: int | None = None  # None: the scenario runs no tasks
    tasks_held: int = 0  # not done yet but kept by the broker (Redis: unacked until the visibility timeout)
    duplicates: int = 0  # duplicated or orphaned children, tasks run twice, stuck finalizers
    recover_seconds: list[float] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what tests assert on beyond the columns

    def row(self) -> list[str]:
        rec = f"{max(self.recover_seconds):.1f}" if self.recover_seconds else "-"
        if len(self.recover_seconds) > 1:
            rec = f"{sorted(self.recover_seconds)[len(self.recover_seconds) // 2]:.1f} (max {rec})"
        return [self.fault, str(self.trials), f"{self.converged}/{self.trials}",
                "-" if self.tasks_lost is None else str(self.tasks_lost)
                + (f" (+{self.tasks_held} held unacked)" if self.tasks_held else ""), str(self.duplicates), rec]


@dataclass
class Harness:
    """What a fault scenario runs on: the cluster, its own namespace and the processes it starts."""

    cluster: Cluster
    images: Images
    kubeconfig: Path  # the operator's identity (the chart's ServiceAccount and RBAC)
    tmp: Path
    namespace: str
    rabbitmq: PodRabbitMQ | None = None  # shared broker pods (a vhost / a db each)
    redis: PodRedis | None = None
    operators: list[OperatorProcess] = field(default_factory=list)
    _vhosts: list[str] = field(default_factory=list)

    @property
    def cp(self) -> ControlPlane:
        return self.cluster.control_plane

    def operator(self, *args: str, name: str = "operator") -> OperatorProcess:
        op = start_operator(self.cluster, self.kubeconfig, self.tmp / f"{name}-{len(self.operators)}.log", *args)
        self.operators.append(op)
        return op

    def vhost(self) -> tuple[str, str, str]:
        """A fresh vhost on the shared RabbitMQ pod: (url, management url, url for this process)."""
        assert self.rabbitmq is not None
        name = f"fault-{secrets.token_hex(4)}"
        self.rabbitmq.add_vhost(name)
        self._vhosts.append(name)
        return self.rabbitmq.url(name), self.rabbitmq.management_url, self.rabbitmq.local_url(name)

    def redis_db(self) -> tuple[str, str]:
        """A database of the shared Redis pod, flushed: (url, url for this process)."""
        assert self.redis is not None
        db = 1 + secrets.randbelow(self.redis.databases - 1)
        with redis_lib.Redis.from_url(self.redis.local_url(db)) as c:
            c.flushdb()
        return self.redis.url(db), self.redis.local_url(db)

    def close(self) -> None:
        for op in self.operators:
            op.stop(10)
        if self.rabbitmq is not None:
            for v in self._vhosts:
                with contextlib.suppress(Exception):
                    self.rabbitmq.delete_vhost(v)


# -- what the cluster holds ---------------------------------------------------------------------------

def items(cp: ControlPlane, ns: str, kinds: str) -> list[Body]:
    return list_objects(cp, ns, kinds)


CR_KINDS = "celeryapps,celeryexchanges,celeryqueues,celeryworkerpools,celerybeatschedules"
CHILD_KINDS = "deployments,statefulsets,services,configmaps,secrets"


def external_app(name: str, image: str, *, config: Body | None = None, backend: bool = False) -> Body:
    spec: Body = {"image": image, "app": "sample_tasks.app", "config": config or {},
                  "broker": {"external": {"urlSecretRef": {"name": "broker", "key": "url"},
                                          "managementUrlSecretRef": {"name": "broker", "key": "managementUrl"}}}}
    if backend:
        spec["resultBackend"] = {"external": {"urlSecretRef": {"name": "backend", "key": "url"}}}
    return {"apiVersion": V, "kind": "CeleryApp", "metadata": {"name": name}, "spec": spec}


def queue(app: str, name: str, celery_name: str, *, delete: bool = False) -> Body:
    return {"apiVersion": V, "kind": "CeleryQueue", "metadata": {"name": name},
            "spec": {"appRef": {"name": app}, "name": celery_name,
                     "deletionPolicy": "Delete" if delete else "Retain"}}


def pool(app: str, name: str, queues: list[str], **spec: Any) -> Body:
    return {"apiVersion": V, "kind": "CeleryWorkerPool", "metadata": {"name": name},
            "spec": {"appRef": {"name": app}, "queues": queues, **spec}}


def convergence_problems(cp: ControlPlane, ns: str, apps: dict[str, set[str]]) -> list[str]:
    """Why the namespace is not converged: `apps` maps each app that should exist to its pools.

    Converged: every custom resource Ready=True at its generation, no finalizer or deletion pending,
    one Deployment per pool and a ConfigMap per app, and no child whose controller (its app or pool)
    is not a live object.
    """
    problems: list[str] = []
    crs = items(cp, ns, CR_KINDS)
    live_apps = {o["metadata"]["uid"]: o["metadata"]["name"] for o in crs if o["kind"] == "CeleryApp"}
    live_uids = {o["metadata"]["uid"] for o in crs if not o["metadata"].get("deletionTimestamp")}
    if set(live_apps.values()) != set(apps):
        problems.append(f"apps {sorted(live_apps.values())} != {sorted(apps)}")
    for o in crs:
        md = o["metadata"]
        what = f"{o['kind']} {md['name']}"
        if md.get("deletionTimestamp"):
            problems.append(f"{what} still being deleted (finalizers {md.get('finalizers')})")
            continue
        c = condition(o)
        if not c or c["status"] != "True":
            problems.append(f"{what} not Ready: {c}")
        if (o.get("status") or {}).get("observedGeneration") != md.get("generation"):
            problems.append(f"{what} observedGeneration {(o.get('status') or {}).get('observedGeneration')} "
                            f"!= {md.get('generation')}")
    children = [o for o in items(cp, ns, CHILD_KINDS)
                if (o["metadata"].get("labels") or {}).get(api.LABEL_MANAGED_BY) == api.OPERATOR_NAME]
    for o in children:
        owners = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if not owners or owners[0]["uid"] not in live_uids:
            problems.append(f"orphan {o['kind']} {o['metadata']['name']} (owner {owners})")
    deployments = [o["metadata"]["name"] for o in children if o["kind"] == "Deployment"]
    want = sorted(f"{a}-{p}" for a, ps in apps.items() for p in ps)
    if sorted(deployments) != want:
        problems.append(f"Deployments {sorted(deployments)} != {want}")
    maps = sorted(o["metadata"]["name"] for o in children if o["kind"] == "ConfigMap")
    if maps != sorted(f"{a}-celery-config" for a in apps):
        problems.append(f"ConfigMaps {maps}")
    return problems


def orphans_and_duplicates(cp: ControlPlane, ns: str, apps: dict[str, set[str]]) -> int:
    problems = convergence_problems(cp, ns, apps)
    return sum(1 for p in problems if p.startswith(("orphan", "Deployments", "ConfigMaps"))
               or "being deleted" in p)


def wait_converged(cp: ControlPlane, ns: str, apps: dict[str, set[str]], timeout: float) -> float:
    t0 = time.monotonic()
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = convergence_problems(cp, ns, apps)
        return not last

    try:
        wait_for(done, timeout, "convergence", interval=1.0)
    except AssertionError:
        raise AssertionError(f"not converged in {timeout}s: {last[:20]}") from None
    return time.monotonic() - t0


# -- SIGKILL at random moments ------------------------------------------------------------------------

def _app_docs(image: str, app: str, step: int) -> list[Body]:
    """App `app` at edit step 0 (created), 1 (changed: config, a third queue, pool settings)."""
    docs = [external_app(app, image, config={"result_expires": 3600 + step}),
            queue(app, f"{app}-x", f"{app}_x", delete=True), queue(app, f"{app}-y", f"{app}_y"),
            pool(app, f"{app}-p", [f"{app}_x"], replicas=0, concurrency=1 + step),
            pool(app, f"{app}-q", [f"{app}_y"], replicas=0)]
    if step:
        docs.append(queue(app, f"{app}-z", f"{app}_z", delete=True))
        docs[3]["spec"]["queues"].append(f"{app}_z")
    return docs


def kill(op: OperatorProcess, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(op.proc.pid, sig)


def sigkill_during_churn(h: Harness, kills: int = 20, apps: int = 10, seed: int | None = None) -> Outcome:
    """The operator (leader election on, its pod's identity) is SIGKILLed `kills` times at random moments
    while `apps` apps are created, changed and (some) deleted, and restarted each time, as a Deployment's
    pod would be; then it must converge."""
    rng = random.Random(seed)
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    image = h.images.sample_tasks
    names = [f"a{i}" for i in range(apps)]
    gone = set(names[apps * 6 // 10:])  # deleted at the end
    steps: list[Callable[[], object]] = []
    for n in names:
        steps.append(lambda n=n: apply(cp, ns, _app_docs(image, n, 0)))
    for n in names:
        steps.append(lambda n=n: apply(cp, ns, _app_docs(image, n, 1)))
    for n in names[:3]:  # a queue with deletionPolicy Delete leaves (its finalizer must be released)
        steps.append(lambda n=n: (apply(cp, ns, _app_docs(image, n, 0)[3:4]),
                                  cp.kubectl("delete", "celeryqueue", f"{n}-z", "-n", ns, "--wait=false")))
    for n in sorted(gone):
        crs = [f"celeryapp/{n}", *(f"celeryqueue/{n}-{q}" for q in "xyz"), f"celeryworkerpool/{n}-p",
               f"celeryworkerpool/{n}-q"]
        steps.append(lambda crs=crs: cp.kubectl("delete", *crs, "-n", ns, "--wait=false", "--ignore-not-found"))
    args = ["--lease-name", f"kill-{ns}", "--identity", "operator-0", "--namespace", ns]
    op = h.operator(*args, name="killed")
    killed = 0
    for k in range(kills):  # the steps spread over the kills: each kill lands in the work on some change
        for s in steps[k * len(steps) // kills:(k + 1) * len(steps) // kills]:
            s()
        time.sleep(rng.uniform(0, 2.0))  # the operator is somewhere in its work on those changes
        kill(op)
        op.proc.wait(10)
        killed += 1
        op = h.operator(*args, name="killed")
    want = {n: {f"{n}-p", f"{n}-q"} for n in names if n not in gone}
    t0 = time.monotonic()
    converged = 1
    try:
        wait_converged(cp, ns, want, 240)
    except AssertionError as e:
        converged = 0
        facts: dict[str, Any] = {"problems": str(e)}
    else:
        facts = {}
    took = time.monotonic() - t0
    facts["restarts"] = killed
    return Outcome(f"operator SIGKILLed x{kills} ({apps} apps churning)", 1, converged,
                   duplicates=orphans_and_duplicates(cp, ns, want), recover_seconds=[took], facts=facts)


# -- the audit log: who wrote what ----------------------------------------------------------------

def audit_writes(cp: ControlPlane, namespace: str, identity: str, since: float,
                 until: float | None = None) -> list[Body]:
    """Write requests the API server received from the operator replica `identity` (its User-Agent)
    between `since` and `until` (Unix time), for the test working in `namespace`: to objects in it, or
    to leases named for it. (Tests side by side name their replicas alike.)"""
    out: list[Body] = []
    agent = f"{api.OPERATOR_NAME}/{identity}"
    with contextlib.suppress(FileNotFoundError), cp.audit_log.open() as f:
        for line in f:
            if agent not in line:
                continue
            ev = json.loads(line)
            if ev.get("userAgent") != agent or ev.get("verb") not in WRITE_VERBS:
                continue
            ref = ev.get("objectRef") or {}
            if ref.get("namespace") != namespace and namespace not in str(ref.get("name") or ""):
                continue
            t = _ts(ev["requestReceivedTimestamp"])
            if t >= since and (until is None or t <= until):
                out.append(ev)
    return out


def unattributed_writes(cp: ControlPlane, namespace: str, since: float) -> list[Body]:
    """Writes in `namespace` since `since` made with the operator's ServiceAccount under another User-Agent
    than a replica's (kopf's own, say): none may exist, or `audit_writes` could not tell replicas apart."""
    from tests.fixtures.servers import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT

    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
    out: list[Body] = []
    with contextlib.suppress(FileNotFoundError), cp.audit_log.open() as f:
        for line in f:
            if user not in line:
                continue
            ev = json.loads(line)
            if (ev.get("user") or {}).get("username") != user or ev.get("verb") not in WRITE_VERBS \
                    or str(ev.get("userAgent", "")).startswith(f"{api.OPERATOR_NAME}/") \
                    or (ev.get("objectRef") or {}).get("namespace") != namespace:
                continue
            if _ts(ev["requestReceivedTimestamp"]) >= since:
                out.append(ev)
    return out


def _ts(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _resource(ev: Body) -> str:
    ref = ev.get("objectRef") or {}
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{ev['verb']} {ref.get('resource')}/{ref.get('name', '')}{sub}"


def lease_holder(cp: ControlPlane, namespace: str, name: str) -> str | None:
    try:
        status, body = cp.api_get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
    except OSError:  # the API server not answering: no holder anyone can read
        return None
    return json.loads(body)["spec"].get("holderIdentity") if status == 200 else None


# -- a paused leader ------------------------------------------------------------------------------

LEASE_SECONDS = 15.0  # the default (`--lease-seconds` is not a flag: this is what users run)


def paused_leader(h: Harness, trials: int = 1, seed: int | None = None) -> Outcome:
    """Two replicas; the leader is SIGSTOPped at a random moment of its work, SIGCONTed after its lease
    would have expired. The other must take over within the lease, the woken one must write nothing."""
    from tests.fixtures.servers import OPERATOR_NAMESPACE

    rng = random.Random(seed)
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    lease = f"pause-{ns}"
    shard_lease = f"{lease}-shard-0"
    apply(cp, ns, [external_app("proj", h.images.sample_tasks), queue("proj", "work", "work"),
                   pool("proj", "w", ["work"], replicas=0)])
    ops = {ident: h.operator("--namespace", ns, "--lease-name", lease, "--identity", ident, name=ident)
           for ident in ("replica-a", "replica-b")}
    takeovers: list[float] = []
    late_writes: list[str] = []
    converged = 0
    leader_wrote = standby_wrote = 0
    unattributed: list[str] = []
    for _ in range(trials):
        leader = wait_for(lambda: lease_holder(cp, OPERATOR_NAMESPACE, shard_lease), 60, "a leader")
        other = next(i for i in ops if i != leader)
        wait_for(lambda: (condition(get(cp, ns, "celeryworkerpool", "w")) or {}).get("status") == "True", 60,
                 "pool Ready")
        # Keep the leader busy writing when it freezes: the pool's spec changes every 0.3 s.
        stop_edits = threading.Event()
        edits = threading.Thread(target=_edit_pool_until, args=(cp, ns, "w", stop_edits), daemon=True)
        edits.start()
        time.sleep(rng.uniform(0.5, 3.0))
        paused_at = time.time()
        kill(ops[leader], signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda other=other: lease_holder(cp, OPERATOR_NAMESPACE, shard_lease) == other, 60,
                 f"{other} takes over", interval=0.1)
        takeovers.append(time.monotonic() - t0)
        woke_at = time.time()
        kill(ops[leader], signal.SIGCONT)
        # The woken replica sees the edits it missed and its renewals fail: give it time to try.
        time.sleep(8)
        stop_edits.set()
        edits.join()
        wait_for(lambda leader=leader: "stopped acting on shard 0" in ops[leader].logs(), 30,
                 "the woken leader stands down")
        time.sleep(2)
        late = [_resource(e) for e in audit_writes(cp, ns, leader, woke_at)
                if not _own_lease_write(e, leader, lease)]
        late_writes += late
        leader_wrote += len(audit_writes(cp, ns, leader, paused_at - 60, paused_at))
        standby_wrote += len([e for e in audit_writes(cp, ns, other, woke_at) if (e.get("objectRef") or {})
                              .get("resource") != "leases"])
        unattributed += [f"{e.get('userAgent')}: {_resource(e)}" for e in unattributed_writes(cp, ns, paused_at)]
        if not late and not unattributed:
            converged += 1
    return Outcome("leader SIGSTOPped past its lease (2 replicas)", trials, converged, duplicates=len(late_writes),
                   recover_seconds=takeovers, facts={"late_writes": late_writes, "leader_wrote": leader_wrote,
                                                    "standby_wrote": standby_wrote, "unattributed": unattributed})


def _own_lease_write(ev: Body, identity: str, lease: str) -> bool:
    """Its own membership lease, or a shard lease renewal the server refused (compare-and-swap)."""
    ref = ev.get("objectRef") or {}
    if ref.get("resource") != "leases":
        return False
    if str(ref.get("name", "")).startswith(f"{lease}-member-"):
        return True
    return int((ev.get("responseStatus") or {}).get("code") or 0) >= 400


def _edit_pool_until(cp: ControlPlane, ns: str, name: str, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        with contextlib.suppress(OSError):  # as `kubectl patch --type=merge`, without a process per edit
            cp.api_request("PATCH", f"/apis/{api.API_VERSION}/namespaces/{ns}/celeryworkerpools/{name}",
                           {"spec": {"concurrency": 1 + n % 4}}, content_type="application/merge-patch+json")
        stop.wait(0.3)


# -- delete and recreate at once ------------------------------------------------------------------

@contextlib.contextmanager
def pod_events(cp: ControlPlane, ns: str, selector: str) -> Iterator[list[tuple[str, Body]]]:
    """The API server's ordered stream of pod events for `selector` while the block runs."""
    events: list[tuple[str, Body]] = []
    proc = subprocess.Popen([str(cp.bin_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "get", "pods", "-n", ns,
                             "-l", selector, "--watch", "--output-watch-events", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert proc.stdout is not None
        buf = ""
        depth = 0
        for line in proc.stdout:
            buf += line
            depth += line.count("{") - line.count("}")
            if depth == 0 and buf.strip():
                ev = json.loads(buf)
                events.append((ev["type"], ev["object"]))
                buf = ""

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield events
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)


def recreate_at_once(h: Harness, trials: int = 1) -> Outcome:
    """The app's topology is deleted and created again under the same names at once: its old worker
    must be gone before the new one starts, and the new app's metrics must survive the old one's cleanup."""
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    op = h.operator("--namespace", ns, "--no-leader-election")
    docs = [external_app("proj", h.images.sample_tasks), queue("proj", "work", "work"),
            pool("proj", "w", ["work"], replicas=1, terminationGracePeriodSeconds=10)]
    sel = f"{api.LABEL_APP}=proj,{api.LABEL_POOL}=w"
    apply(cp, ns, docs)
    overlaps: list[str] = []
    recover: list[float] = []
    converged = 0
    metrics_kept = True
    for _ in range(trials):
        from tests.fixtures.operator import wait_pods_ready

        old_pods = set(wait_pods_ready(cp, ns, sel, 1, 180))
        old_uids = {k: get(cp, ns, k, n)["metadata"]["uid"]  # type: ignore[index]
                    for k, n in (("celeryapp", "proj"), ("celeryworkerpool", "w"))}

        def old_gone(old_uids: dict[str, str] = old_uids) -> bool:
            return all((get(cp, ns, k, n) or {}).get("metadata", {}).get("uid") != old_uids[k]
                       for k, n in (("celeryapp", "proj"), ("celeryworkerpool", "w")))

        with pod_events(cp, ns, sel) as events:
            time.sleep(1)  # the watch's initial ADDED events
            t0 = time.monotonic()
            # The whole topology, as `kubectl delete -f` then `kubectl apply -f` (or a GitOps re-sync) does it.
            cp.kubectl("delete", "celeryapp/proj", "celeryqueue/work", "celeryworkerpool/w", "-n", ns, "--wait=false")
            wait_for(old_gone, 30, "the old objects gone", interval=0.1)
            apply(cp, ns, docs)
            new_pods = set(wait_for(lambda old_pods=old_pods: set(pod_names(cp, ns, sel, ready_only=True)) - old_pods,
                                    240, "a new worker ready", interval=0.5))
            recover.append(time.monotonic() - t0)
            time.sleep(1)
        # In the server's order: the first new pod appears only after the last old one is gone.
        order = [(t, o["metadata"]["name"]) for t, o in events]
        last_old_gone = max((k for k, (t, n) in enumerate(order) if n in old_pods and t == "DELETED"), default=-1)
        first_new = min((k for k, (_, n) in enumerate(order) if n not in old_pods), default=len(order))
        if not new_pods or first_new < last_old_gone or last_old_gone < 0:
            overlaps.append(f"{order}")
        wait_for(lambda: (condition(get(cp, ns, "celeryapp", "proj")) or {}).get("status") == "True", 60, "Ready")
        wait_for(lambda: metric_line(op, "celery_operator_broker_up", app="proj", namespace=ns) == 1.0, 60,
                 "broker_up of the new app")
        time.sleep(5)  # several polls, and whatever cleanup of the old app was still to come
        metrics_kept = metrics_kept and metric_line(op, "celery_operator_broker_up", app="proj", namespace=ns) == 1.0 \
            and metric_line(op, "celery_operator_pool_replicas", app="proj", namespace=ns, pool="w") is not None
        if not overlaps and metrics_kept:
            converged += 1
    return Outcome("app deleted and recreated at once", trials, converged, duplicates=len(overlaps),
                   recover_seconds=recover, facts={"overlaps": overlaps, "metrics_kept": metrics_kept})


# -- a broker outage under load -------------------------------------------------------------------

def _results(backend_local: str, ids: list[str]) -> dict[str, int]:
    with redis_lib.Redis.from_url(backend_local) as c:
        raw = c.mget([f"celery-task-meta-{i}" for i in ids]) if ids else []
    return {i: 1 for i, v in zip(ids, raw, strict=True) if v is not None and b'"SUCCESS"' in v}


REDIS_VISIBILITY_SECONDS = 30


def broker_outage(h: Harness, kind: str, seconds: float = 60.0) -> Outcome:
    """The app's broker (a pod of its own) stops for `seconds` while its autoscaled pool works a backlog:
    replicas hold, Degraded/BrokerUnreachable and broker_up 0 show, everything clears by itself."""
    cp, ns = h.cp, h.namespace
    backend, backend_local = h.redis_db()
    server: PodRabbitMQ | PodRedis
    if kind == "rabbitmq":
        server = PodRabbitMQ(cp, ns, "broker", h.images.rabbitmq)
        server.deploy()
        url, mgmt = server.url(), server.management_url
    else:
        server = PodRedis(cp, ns, "broker", h.images.redis)
        server.deploy()
        url, mgmt = server.url(0), ""
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    secret(cp, ns, "backend", url=backend)
    op = h.operator("--namespace", ns, "--no-leader-election")
    # Redis gives back what a worker took but never acknowledged (its connection died with the broker)
    # once the visibility timeout passes: 30 s (tasks take 3 s) instead of the default hour, so the test
    # sees those tasks run too instead of finding them held.
    config = {"broker_transport_options": {"visibility_timeout": REDIS_VISIBILITY_SECONDS}} if kind == "redis" else {}
    apply(cp, ns, [external_app("proj", h.images.sample_tasks, config=config, backend=True),
                   queue("proj", "work", "work"),
                   pool("proj", "w", ["work"], concurrency=2, terminationGracePeriodSeconds=30,
                        autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetMessagesPerReplica": 10,
                                     "pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 0})])
    cm = wait_for(lambda: get(cp, ns, "configmap", "proj-celery-config"), 60, "ConfigMap")
    env = celery_client_env(h.tmp, cm, url, backend)

    def replicas() -> int:
        return int((get(cp, ns, "deployment", "proj-w") or {}).get("spec", {}).get("replicas") or 0)

    def pool_cond(type_: str) -> Body:
        return condition(get(cp, ns, "celeryworkerpool", "w"), type_) or {}

    t0 = time.monotonic()
    phases: dict[str, float] = {}  # seconds from the app's Ready pool to each step (where the time goes)

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - t0, 1)

    wait_for(lambda: pool_cond("Ready").get("status") == "True", 180, "pool Ready")
    t0 = time.monotonic()
    ids = celery_call(h.cluster, env, "publish:work:30:3")["ids"]
    wait_for(lambda: replicas() == 3, 90, "3 replicas for the backlog")
    phase("3 replicas")
    server.stop()
    phase("broker stopped")
    down_at = time.monotonic()
    held: list[int] = []
    wait_for(lambda: pool_cond("Degraded").get("reason") == api.Reason.BROKER_UNREACHABLE
             and pool_cond("Degraded").get("status") == "True", 60, "Degraded/BrokerUnreachable")
    app_ready = condition(get(cp, ns, "celeryapp", "proj")) or {}
    broker_up_down = metric_line(op, "celery_operator_broker_up", app="proj", namespace=ns)
    errors_before = metric_line(op, "celery_operator_reconcile_total", kind="CeleryApp", result="error") or 0.0
    while time.monotonic() - down_at < seconds:
        held.append(replicas())
        time.sleep(2)
    phase("outage over")
    server.start()
    phase("broker answers")
    back = time.monotonic()
    wait_for(lambda: pool_cond("Degraded").get("status") == "False" and pool_cond("Ready").get("status") == "True",
             120, "Degraded cleared, Ready")
    recovered = time.monotonic() - back
    phase("pool Ready")
    wait_for(lambda: (condition(get(cp, ns, "celeryapp", "proj")) or {}).get("status") == "True", 60, "app Ready")
    broker_up_back = metric_line(op, "celery_operator_broker_up", app="proj", namespace=ns)
    errors_after = metric_line(op, "celery_operator_reconcile_total", kind="CeleryApp", result="error") or 0.0
    with contextlib.suppress(AssertionError):
        wait_for(lambda: len(_results(backend_local, ids)) == len(ids), 180, "every task done", interval=2)
    phase("tasks done")
    done = _results(backend_local, ids)
    missing = [i for i in ids if i not in done]
    where = _where_on_redis(server.local_url(0), missing) if isinstance(server, PodRedis) and missing else {}
    held_unacked = [i for i, w in where.items() if w == "unacked"]
    ok = (set(held) == {3} and broker_up_down == 0.0 and broker_up_back == 1.0)
    return Outcome(f"{'RabbitMQ' if kind == 'rabbitmq' else 'Redis'} broker down {seconds:.0f} s under load", 1,
                   int(ok), tasks_lost=len(ids) - len(done) - len(held_unacked), tasks_held=len(held_unacked),
                   recover_seconds=[recovered],
                   facts={"held": held, "broker_up_down": broker_up_down, "broker_up_back": broker_up_back,
                          "app_reason_down": app_ready.get("reason"), "reconcile_errors": errors_after - errors_before,
                          "missing_found_on_broker": where, "phases": phases})


def _where_on_redis(url: str, ids: list[str]) -> dict[str, str]:
    """Where tasks not done are on a Redis broker: still queued, or delivered and unacknowledged (kombu's
    `unacked` hash, given back only after the transport's visibility timeout), else nowhere."""
    with redis_lib.Redis.from_url(url) as c:
        queued = b"".join(c.lrange("work", 0, -1) or [])
        unacked = b"".join((c.hgetall("unacked") or {}).values())
    return {i: "queued" if i.encode() in queued else "unacked" if i.encode() in unacked else "nowhere" for i in ids}


# -- the API server restarts ----------------------------------------------------------------------

def apiserver_restart(h: Harness) -> Outcome:
    """kube-apiserver restarts (same etcd); changes made as soon as it is back, while the operator's watches
    are still reconnecting, must all be acted on."""
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    op = h.operator("--namespace", ns, "--lease-name", f"restart-{ns}", "--identity", "operator-0")
    apply(cp, ns, [external_app("proj", h.images.sample_tasks), queue("proj", "work", "work"),
                   pool("proj", "w", ["work"], replicas=0, concurrency=1)])
    wait_converged(cp, ns, {"proj": {"w"}}, 120)
    pid = op.proc.pid
    down = h.cluster.restart_apiserver()
    t0 = time.monotonic()
    # While the operator reconnects: a spec edit, a new pool, a hand-deleted child.
    apply(cp, ns, [pool("proj", "w", ["work"], replicas=0, concurrency=3), pool("proj", "v", ["work"], replicas=0)])
    cp.kubectl("delete", "configmap", "proj-celery-config", "-n", ns)

    def acted() -> bool:
        dep = get(cp, ns, "deployment", "proj-w") or {}
        command = dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("command", [])
        return "--concurrency" in command and command[command.index("--concurrency") + 1] == "3" \
            and get(cp, ns, "deployment", "proj-v") is not None \
            and get(cp, ns, "configmap", "proj-celery-config") is not None
    converged = 1
    problem = ""
    try:
        wait_for(acted, 120, "the changes made during the restart acted on")
        wait_converged(cp, ns, {"proj": {"w", "v"}}, 120)
    except AssertionError as e:
        converged, problem = 0, str(e)
    took = time.monotonic() - t0
    node_ready = wait_for(lambda: _node_ready(cp), 120, "node Ready again")
    return Outcome("kube-apiserver restarted", 1, int(converged and op.proc.poll() is None and op.proc.pid == pid),
                   duplicates=orphans_and_duplicates(cp, ns, {"proj": {"w", "v"}}), recover_seconds=[took],
                   facts={"downtime": down, "node_ready": node_ready, "operator_alive": op.proc.poll() is None,
                          "problem": problem})


def _node_ready(cp: ControlPlane) -> bool:
    node = json.loads(cp.kubectl("get", "node", "localhost", "-o", "json").stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


# -- scale-down under load with acks_late ---------------------------------------------------------

def scaling_under_load(h: Harness, tasks: int = 1000, seconds: float = 0.3) -> Outcome:
    """`tasks` tasks with acks_late while the pool scales 1 → 3 → 1 → 3 → 1: each completes exactly once
    (every completion is counted on the result backend's publish channel, so a second run shows)."""
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    backend, backend_local = h.redis_db()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    secret(cp, ns, "backend", url=backend)
    h.operator("--namespace", ns, "--no-leader-election")
    docs = [external_app("proj", h.images.sample_tasks, backend=True,
                         config={"task_acks_late": True, "task_reject_on_worker_lost": True}),
            queue("proj", "work", "work"),
            pool("proj", "w", ["work"], replicas=1, concurrency=4, terminationGracePeriodSeconds=30)]
    apply(cp, ns, docs)
    cm = wait_for(lambda: get(cp, ns, "configmap", "proj-celery-config"), 60, "ConfigMap")
    env = celery_client_env(h.tmp, cm, url, backend)
    sel = f"{api.LABEL_APP}=proj,{api.LABEL_POOL}=w"
    from tests.fixtures.operator import wait_pods_ready

    wait_pods_ready(cp, ns, sel, 1, 180)
    completions: dict[str, int] = {}
    listening = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with redis_lib.Redis.from_url(backend_local) as c:
            ps = c.pubsub(ignore_subscribe_messages=True)
            ps.psubscribe("celery-task-meta-*")
            listening.set()
            while not stop.is_set():
                m = ps.get_message(timeout=0.5)
                if m and b'"SUCCESS"' in m["data"]:
                    tid = m["channel"].decode().removeprefix("celery-task-meta-")
                    completions[tid] = completions.get(tid, 0) + 1
            ps.close()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    listening.wait(10)
    ids = celery_call(h.cluster, env, f"publish:work:{tasks}:{seconds}")["ids"]
    t0 = time.monotonic()
    steps = []
    for n in (3, 1, 3, 1):
        docs[2]["spec"]["replicas"] = n
        apply(cp, ns, docs[2:])
        if n > 1:
            wait_pods_ready(cp, ns, sel, n, 180)
        else:
            time.sleep(8)  # let the scale-down cut into running work before the next step
        steps.append((n, round(time.monotonic() - t0, 1)))
    mine = set(ids)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: len(mine & set(completions)) == len(mine), 600, "every task completed", interval=1)
    took = time.monotonic() - t0
    time.sleep(3)  # a late second run would publish now
    stop.set()
    listener.join(5)
    lost = len(mine - set(completions))
    twice = sum(1 for i in mine if completions.get(i, 0) > 1)
    return Outcome(f"{tasks} acks_late tasks while scaling 1→3→1→3→1", 1, int(lost == 0 and twice == 0),
                   tasks_lost=lost, duplicates=twice, recover_seconds=[took], facts={"steps": steps})


# -- errors are labelled for what they are --------------------------------------------------------

def reconcile_error_labelled(h: Harness) -> Outcome:
    """An operator that may not delete Services: switching the app's broker from managed Redis to external
    fails the reconcile. It must be ReconcileError (not BrokerUnreachable), stay so across polls (which
    count as polls), count in reconcile_total{result="error"}, and clear once the permission is given."""
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    sa = "no-service-delete"
    from celery_operator import rbac
    from tests.fixtures.servers import flat_kubeconfig

    rules = []
    for r in (*rbac.NAMESPACED, *rbac.CLUSTER_READ):
        d = r.as_dict()
        if "services" in d["resources"]:
            rules.append({**d, "resources": [x for x in d["resources"] if x != "services"]})
            rules.append({**d, "resources": ["services"], "verbs": [v for v in d["verbs"] if v != "delete"]})
        else:
            rules.append(d)
    rules = [r for r in rules if r["resources"]]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": f"{ns}-{sa}"},
            "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": f"{ns}-{sa}"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{ns}-{sa}"},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}
    cp.apply([account, role, binding])
    try:
        token = cp.create_token(ns, sa, 3600)
        kubeconfig = h.tmp / f"{sa}.kubeconfig"
        import yaml

        kubeconfig.write_text(yaml.safe_dump(flat_kubeconfig(cp, token)))
        op = start_operator(h.cluster, kubeconfig, h.tmp / f"{sa}.log", "--namespace", ns, "--no-leader-election")
        h.operators.append(op)
        managed = external_app("proj", h.images.sample_tasks)
        managed["spec"]["broker"] = {"redis": {"image": h.images.redis}}
        apply(cp, ns, [managed, queue("proj", "work", "work"),
                       pool("proj", "w", ["work"], replicas=0, autoscaling={
                           "minReplicas": 0, "maxReplicas": 2, "targetMessagesPerReplica": 10,
                           "pollIntervalSeconds": 1})])
        wait_for(lambda: (condition(get(cp, ns, "celeryapp", "proj")) or {}).get("status") == "True", 180,
                 "app Ready on its managed Redis")
        errors0 = metric_line(op, "celery_operator_reconcile_total", kind="CeleryApp", result="error") or 0.0
        apply(cp, ns, [external_app("proj", h.images.sample_tasks)])  # to the external vhost: Services must go

        def reason() -> str | None:
            c = condition(get(cp, ns, "celeryapp", "proj")) or {}
            return c.get("reason") if c.get("status") == "False" else None

        wait_for(lambda: reason() == api.Reason.RECONCILE_ERROR, 60, "ReconcileError")
        seen: list[str | None] = []
        transitions: set[str] = set()
        for _ in range(40):  # a dozen polls of the pool's 1 s interval, while the retries back off
            c = condition(get(cp, ns, "celeryapp", "proj")) or {}
            seen.append(c.get("reason") if c.get("status") == "False" else c.get("status"))
            transitions.add(str(c.get("lastTransitionTime")))
            time.sleep(0.3)
        errors1 = metric_line(op, "celery_operator_reconcile_total", kind="CeleryApp", result="error") or 0.0
        polls_ok = metric_line(op, "celery_operator_broker_polls_total", app="proj", namespace=ns, result="success")
        cp.kubectl("create", "role", "delete-services", "-n", ns, "--verb=delete", "--resource=services")
        cp.kubectl("create", "rolebinding", "delete-services", "-n", ns, "--role=delete-services",
                   f"--serviceaccount={ns}:{sa}")
        fixed = time.monotonic()
        wait_for(lambda: (condition(get(cp, ns, "celeryapp", "proj")) or {}).get("status") == "True", 120,
                 "Ready after the fix")
        took = time.monotonic() - fixed
        left = [o["metadata"]["name"] for o in items(cp, ns, "statefulsets,services")
                if (o["metadata"].get("labels") or {}).get(api.LABEL_MANAGED_BY) == api.OPERATOR_NAME]
    finally:
        cp.kubectl("delete", "clusterrole,clusterrolebinding", f"{ns}-{sa}", check=False)
    ok = set(seen) == {api.Reason.RECONCILE_ERROR} and len(transitions) == 1 and errors1 > errors0 and not left
    return Outcome("reconcile error (RBAC) labelled and cleared", 1, int(ok), recover_seconds=[took],
                   duplicates=len(left), facts={"reasons_across_polls": seen, "transitions": len(transitions),
                                                "errors": (errors0, errors1),
                                                "polls_ok": polls_ok, "left": left})


# -- switching broker kinds -----------------------------------------------------------------------

def broker_kind_switch(h: Harness) -> Outcome:
    """managed RabbitMQ -> managed Redis -> external: each switch removes the old kind's StatefulSet,
    Services and Secret; claims stay (the documented policy), labelled with the app."""
    cp, ns = h.cp, h.namespace
    url, mgmt, _ = h.vhost()
    secret(cp, ns, "broker", url=url, managementUrl=mgmt)
    h.operator("--namespace", ns, "--no-leader-election")
    app = external_app("proj", h.images.sample_tasks)
    storage = {"size": "256Mi"}
    kinds = [("rabbitmq", {"rabbitmq": {"image": h.images.rabbitmq, "storage": storage}}),
             ("redis", {"redis": {"image": h.images.redis, "storage": storage}}),
             ("external", app["spec"]["broker"])]
    left: dict[str, list[str]] = {}
    recover: list[float] = []
    converged = 0
    apply(cp, ns, [queue("proj", "work", "work"), pool("proj", "w", ["work"], replicas=0)])

    def servers() -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in items(cp, ns, "statefulsets,services,secrets")
                      if (o["metadata"].get("labels") or {}).get(api.LABEL_MANAGED_BY) == api.OPERATOR_NAME
                      and o["kind"] != "ConfigMap")
    for kind, broker in kinds:
        app["spec"]["broker"] = broker
        t0 = time.monotonic()
        apply(cp, ns, [app])
        expected = {"rabbitmq": {"StatefulSet/proj-rabbitmq", "Service/proj-rabbitmq", "Service/proj-rabbitmq-headless",
                                 "Secret/proj-broker"},
                    "redis": {"StatefulSet/proj-redis", "Service/proj-redis", "Secret/proj-broker"},
                    "external": set()}[kind]
        try:
            wait_for(lambda expected=expected: set(servers()) == expected, 120, f"only the {kind} broker's children")
            wait_for(lambda: (condition(get(cp, ns, "celeryapp", "proj")) or {}).get("status") == "True", 240,
                     f"Ready on {kind}")
            converged += 1
        except AssertionError:
            left[kind] = servers()
        recover.append(time.monotonic() - t0)
    claims = [(c["metadata"]["name"], c["metadata"].get("labels") or {}) for c in items(cp, ns, "pvc")]
    return Outcome("broker kind switched (RabbitMQ → Redis → external)", len(kinds), converged,
                   duplicates=sum(len(v) for v in left.values()), recover_seconds=recover,
                   facts={"left": left, "claims": claims})


def new_namespace(cp: ControlPlane) -> str:
    name = f"f-{uuid.uuid4().hex[:8]}"
    cp.create_namespace(name)
    return name
