"""What the operator creates and keeps true, observed on the real API server and broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from celery_operator import api
from celery_operator.plan import HOLD_MARGIN_SECONDS
from localenv.controlplane import ControlPlane
from tests.e2e.faults import pod_events
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    OperatorProcess,
    apply,
    condition,
    get,
    list_objects,
    metric_line,
    pod_logs,
    pool_selector,
    sample_documents,
    secret,
    wait_for,
    wait_ready,
    without_workers,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Seeded:
    cp: ControlPlane
    ns: str
    operator: OperatorProcess
    image: str

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return get(self.cp, self.ns, kind, name)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cp.kubectl(*args, "-n", self.ns, input=input, check=check).stdout

    def config(self) -> dict[str, Any]:
        cm = self.get("configmap", "proj-celery-config")
        assert cm is not None
        return dict(json.loads(cm["data"][api.CONFIG_JSON_KEY]))

    def template_hash(self, deployment: str) -> str | None:
        d = self.get("deployment", deployment)
        return ((d or {}).get("spec", {}).get("template", {}).get("metadata", {})
                .get("annotations", {}).get(api.ANNOTATION_CONFIG_HASH))


def seed(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
         broker_vhost: Vhost, backend_db: RedisDb, *, workers: bool) -> Seeded:
    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    secret(control_plane, namespace, "backend", url=backend_db.url)
    op = operator_factory("--namespace", namespace, "--no-leader-election")
    docs = sample_documents(image=images.sample_tasks)
    apply(control_plane, namespace, docs if workers else without_workers(docs))
    wait_ready(control_plane, namespace, "celeryapp", "proj", 90)
    for child in ("proj-default", "proj-high", "proj-low", "proj-beat"):  # the app is Ready before all exist
        wait_for(lambda child=child: get(control_plane, namespace, "deployment", child), 60, f"{child} Deployment")
    return Seeded(control_plane, namespace, op, images.sample_tasks)


@pytest.fixture
def seeded(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
           broker_vhost: Vhost, backend_db: RedisDb) -> Seeded:
    """The sample topology's objects, reconciled, with its pools at zero replicas (beat runs): what the
    tests of objects need, without starting worker pods they never look at."""
    return seed(control_plane, namespace, operator_factory, images, broker_vhost, backend_db, workers=False)


@pytest.fixture
def seeded_with_workers(control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory,
                        images: Images, broker_vhost: Vhost, backend_db: RedisDb) -> Seeded:
    """The sample topology as it is: its pools' workers running."""
    return seed(control_plane, namespace, operator_factory, images, broker_vhost, backend_db, workers=True)


def test_every_child_has_an_owner_and_the_standard_labels(seeded: Seeded) -> None:
    out = json.loads(seeded.kubectl("get", "deployments,configmaps", "-l",
                                    f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}", "-o", "json"))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in out["items"]}
    assert {("Deployment", "proj-default"), ("Deployment", "proj-high"), ("Deployment", "proj-low"),
            ("Deployment", "proj-beat"), ("ConfigMap", "proj-celery-config")} <= kinds
    for o in out["items"]:
        labels = o["metadata"]["labels"]
        assert labels[api.LABEL_PART_OF] == "proj" and labels[api.LABEL_APP] == "proj"
        assert {api.LABEL_NAME, api.LABEL_INSTANCE, api.LABEL_COMPONENT} <= labels.keys()
        refs = o["metadata"]["ownerReferences"]
        assert len(refs) == 1 and refs[0]["controller"] is True
        assert refs[0]["apiVersion"] == api.API_VERSION


def test_broker_urls_reach_pods_only_through_secret_references(seeded: Seeded) -> None:
    d = seeded.get("deployment", "proj-low")
    assert d is not None
    env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[api.ENV_BROKER_URL]["valueFrom"]["secretKeyRef"] == {"name": "broker", "key": "url"}
    assert env[api.ENV_RESULT_BACKEND]["valueFrom"]["secretKeyRef"] == {"name": "backend", "key": "url"}
    assert "amqp://" not in json.dumps(seeded.get("configmap", "proj-celery-config"))
    app = seeded.get("celeryapp", "proj")
    assert app is not None and app["status"]["brokerSecretRef"] == {"name": "broker", "key": "url"}


def test_changing_a_routing_key_updates_the_config_and_rolls_the_pools(seeded: Seeded) -> None:
    before = seeded.template_hash("proj-low")
    assert before
    seeded.kubectl("patch", "celeryqueue", "low-queue", "--type=merge", "-p",
                   json.dumps({"spec": {"routingKey": "low_task_v2"}}))

    def rolled() -> bool:
        keys = {q["name"]: q["routing_key"] for q in seeded.config()["task_queues"]}
        return keys.get("low_queue") == "low_task_v2" and seeded.template_hash("proj-low") != before

    wait_for(rolled, 60, "config updated and pod template annotation changed")
    assert seeded.template_hash("proj-default") == seeded.template_hash("proj-low")


def test_deleting_a_pool_deletes_its_deployment(seeded: Seeded) -> None:
    seeded.kubectl("delete", "celeryworkerpool", "high")
    wait_for(lambda: seeded.get("deployment", "proj-high") is None, 60, "proj-high deleted")


def test_a_hand_deleted_deployment_comes_back(seeded_with_workers: Seeded) -> None:
    seeded = seeded_with_workers
    uid = seeded.get("deployment", "proj-default")["metadata"]["uid"]  # type: ignore[index]
    grace = seeded.get("deployment", "proj-default")["spec"]["template"]["spec"][  # type: ignore[index]
        "terminationGracePeriodSeconds"]
    with pod_events(seeded.cp, seeded.ns, pool_selector("proj", "default")) as events:
        seeded.kubectl("delete", "deployment", "proj-default")
        # It comes back once its old pods are gone (old and new workers never run side by side), at most the
        # grace period and the operator's margin after the deletion.
        wait_for(lambda: (seeded.get("deployment", "proj-default") or {}).get("metadata", {}).get("uid")
                 not in (None, uid), grace + HOLD_MARGIN_SECONDS + 30, "proj-default recreated")
    # The old worker was still starting when it was told to stop: one whose container had started stopped on
    # that SIGTERM, not on the SIGKILL at the end of its grace period (as PID 1 it would have dropped the
    # signal: `pod.pod_spec`). One stopped before its container started ends as 137, never having run.
    ended = {o["metadata"]["name"]: s["state"]["terminated"] for _, o in events
             for s in (o.get("status") or {}).get("containerStatuses") or [] if "terminated" in s["state"]}
    print(f"\nthe old pods' containers ended: {ended}")
    assert [t for t in ended.values() if t.get("startedAt") and t.get("exitCode") == 137] == [], ended


def test_a_hand_edited_deployment_is_restored(seeded: Seeded) -> None:
    seeded.kubectl("set", "image", "deployment/proj-default", "worker=evil:latest")
    d0 = seeded.get("deployment", "proj-default")
    assert d0 is not None
    want = seeded.image

    def restored() -> bool:
        d = seeded.get("deployment", "proj-default") or {}
        return bool(d["spec"]["template"]["spec"]["containers"][0]["image"] == want)

    wait_for(restored, 90, "image restored")


def test_beat_serves_every_schedule_of_an_app_from_one_deployment(seeded: Seeded) -> None:
    second = {"apiVersion": api.API_VERSION, "kind": "CeleryBeatSchedule", "metadata": {"name": "extra"},
              "spec": {"appRef": {"name": "proj"}, "entries": [
                  {"name": "add-every-2s", "task": "sample_tasks.tasks.add", "everySeconds": 2, "args": [1, 1]}]}}
    apply(seeded.cp, seeded.ns, [second])
    wait_for(lambda: "add-every-2s" in seeded.config()["beat_schedule"], 60, "entry merged")
    assert "add-every-30s" in seeded.config()["beat_schedule"]
    beats = json.loads(seeded.kubectl("get", "deployments", "-l", f"{api.LABEL_COMPONENT}={api.COMPONENT_BEAT}",
                                      "-o", "json"))["items"]
    assert [b["metadata"]["name"] for b in beats] == ["proj-beat"]
    assert beats[0]["spec"]["replicas"] == 1 and beats[0]["spec"]["strategy"]["type"] == "Recreate"

    # Older wins; within one second of creationTimestamp the name decides ("extra" < "later").
    clash = {**second, "metadata": {"name": "later"}}
    apply(seeded.cp, seeded.ns, [clash])

    def duplicate_reported() -> bool:
        c = condition(seeded.get("celerybeatschedule", "later"))
        return bool(c and c["status"] == "False" and c["reason"] == api.Reason.DUPLICATE_ENTRY)

    wait_for(duplicate_reported, 60, "DuplicateEntry on the later schedule")
    assert condition(seeded.get("celerybeatschedule", "extra"))["status"] == "True"  # type: ignore[index]

    for name in ("proj", "extra", "later"):
        seeded.kubectl("delete", "celerybeatschedule", name)
    wait_for(lambda: seeded.get("deployment", "proj-beat") is None, 60, "beat removed with the last schedule")


def test_cross_object_problems_become_conditions_and_events(seeded: Seeded) -> None:
    docs = [
        {"apiVersion": api.API_VERSION, "kind": "CeleryWorkerPool", "metadata": {"name": "lost"},
         "spec": {"appRef": {"name": "proj"}, "queues": ["no_such_queue"]}},
        {"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "stray"},
         "spec": {"appRef": {"name": "proj"}, "exchange": "no_such_exchange"}},
        # Older wins; within creationTimestamp's one second the name decides ("low-queue" < "zz-…").
        {"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "zz-low-duplicate"},
         "spec": {"appRef": {"name": "proj"}, "name": "low_queue", "exchange": "task"}},
        {"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "orphan"},
         "spec": {"appRef": {"name": "nobody"}}},
    ]
    apply(seeded.cp, seeded.ns, docs)
    expected = {("celeryworkerpool", "lost"): api.Reason.QUEUE_NOT_FOUND,
                ("celeryqueue", "stray"): api.Reason.EXCHANGE_NOT_FOUND,
                ("celeryqueue", "zz-low-duplicate"): api.Reason.DUPLICATE_QUEUE,
                ("celeryqueue", "orphan"): api.Reason.APP_NOT_FOUND}
    for (kind, name), reason in expected.items():
        def reported(kind: str = kind, name: str = name, reason: str = reason) -> bool:
            c = condition(seeded.get(kind, name))
            return bool(c and c["status"] == "False" and c["reason"] == reason)

        wait_for(reported, 60, f"{kind}/{name} {reason}")
    events = json.loads(seeded.kubectl("get", "events", "-o", "json"))["items"]
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
    assert ("lost", api.Reason.QUEUE_NOT_FOUND) in reasons
    assert ("orphan", api.Reason.APP_NOT_FOUND) in reasons
    # The original low_queue keeps working; the operator is still healthy.
    assert condition(seeded.get("celeryqueue", "low-queue"))["status"] == "True"  # type: ignore[index]
    assert seeded.operator.get("/healthz")[0] == 200


def test_deleting_the_app_then_its_queues_leaves_nothing_terminating(seeded: Seeded) -> None:
    seeded.kubectl("patch", "celeryqueue", "high-queue", "--type=merge", "-p",
                   json.dumps({"spec": {"deletionPolicy": "Delete"}}))
    wait_for(lambda: api.GROUP + "/finalizer" in
             (seeded.get("celeryqueue", "high-queue") or {}).get("metadata", {}).get("finalizers", []),
             30, "finalizer added for deletionPolicy Delete")
    seeded.kubectl("delete", "celeryapp", "proj", "--wait=false")
    seeded.kubectl("delete", "celeryqueues,celeryexchanges,celeryworkerpools,celerybeatschedules", "--all",
                   "--wait=false")

    def all_gone() -> bool:
        left = seeded.kubectl("get", "celery", "-o", "name").split()
        return not left

    wait_for(all_gone, 120, "every CR deleted")


def test_beat_entries_run_in_a_pool_worker(seeded_with_workers: Seeded) -> None:
    seeded = seeded_with_workers
    every2 = {"apiVersion": api.API_VERSION, "kind": "CeleryBeatSchedule", "metadata": {"name": "fast"},
              "spec": {"appRef": {"name": "proj"}, "entries": [
                  {"name": "add-every-2s", "task": "sample_tasks.tasks.add", "everySeconds": 2, "args": [20, 22]}]}}
    apply(seeded.cp, seeded.ns, [every2])
    wait_for(lambda: "add-every-2s" in seeded.config()["beat_schedule"], 60, "entry in the config")
    wait_for(lambda: seeded.template_hash("proj-beat") == seeded.template_hash("proj-default"), 30, "rolled")
    chash = seeded.template_hash("proj-default")

    def rolled_pod(component: str, pool: str | None = None) -> str | None:
        selector = f"{api.LABEL_APP}=proj,{api.LABEL_COMPONENT}={component}" + (f",{api.LABEL_POOL}={pool}"
                                                                               if pool else "")
        pods = list_objects(seeded.cp, seeded.ns, "pods", selector)
        ready = [p["metadata"]["name"] for p in pods
                 if p["metadata"].get("annotations", {}).get(api.ANNOTATION_CONFIG_HASH) == chash
                 and not p["metadata"].get("deletionTimestamp")
                 and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return ready[0] if len(ready) == 1 else None

    worker = wait_for(lambda: rolled_pod(api.COMPONENT_WORKER, "default"), 120, "the rolled default worker")
    beat = wait_for(lambda: rolled_pod(api.COMPONENT_BEAT), 120, "the rolled beat")

    def executions() -> int:
        logs = pod_logs(seeded.cp, seeded.ns, worker)
        return sum(1 for line in logs.splitlines() if "succeeded" in line and ": 42" in line)

    wait_for(lambda: executions() >= 2, 60, "two executions of the 2 s entry in the default pool's pod")
    wait_for(lambda: "Scheduler: Sending due task add-every-2s" in pod_logs(seeded.cp, seeded.ns, beat), 30,
             "the rolled beat pod logged sending it")


def test_the_operator_survives_every_invalid_object_the_api_server_admits(
        seeded: Seeded) -> None:
    from localenv.procs import REPO

    # The whole corpus in one apply, in order: kubectl applies each object on its own and goes on past a
    # rejected one, printing `<resource>.<group>/<name> created|configured|unchanged` for each admitted.
    docs = [d for f in sorted((REPO / "tests" / "invalid").glob("*.yaml"))
            for d in f.read_text().split("\n---\n") if "kind:" in d]
    r = seeded.cp.kubectl("apply", "-n", seeded.ns, "-f", "-", input="\n---\n".join(docs), check=False)
    assert r.returncode != 0 and r.stderr  # the corpus is mostly what the API server rejects
    admitted = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert len(admitted) >= 2  # the corpus's multi-document files start with admitted objects

    def all_reported() -> bool:  # the operator wrote a status for what each object is now
        items = json.loads(seeded.kubectl("get", *sorted(admitted), "-o", "json"))["items"]
        return len(items) == len(admitted) and all(
            (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"] for o in items)

    # Every admitted object is reconciled or reported; the operator keeps serving and working.
    wait_for(all_reported, 60, "a status of their generation on every admitted object")
    assert seeded.operator.proc.poll() is None
    assert seeded.operator.get("/healthz")[0] == 200
    q = {"apiVersion": api.API_VERSION, "kind": "CeleryQueue", "metadata": {"name": "after-corpus"},
         "spec": {"appRef": {"name": "proj"}, "exchange": "task", "routingKey": "after"}}
    apply(seeded.cp, seeded.ns, [q])
    wait_ready(seeded.cp, seeded.ns, "celeryqueue", "after-corpus", 60)
    assert "Traceback" not in seeded.operator.logs()


def test_managed_brokers_get_credentials_once_and_keep_them_across_restarts(
        control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images) -> None:
    app = {"apiVersion": api.API_VERSION, "kind": "CeleryApp", "metadata": {"name": "managed"},
           "spec": {"image": images.sample_tasks, "app": "sample_tasks.app",
                    "broker": {"rabbitmq": {}}, "resultBackend": {"redis": {"storage": {"size": "1Gi"}}}}}
    op = operator_factory("--namespace", namespace, "--no-leader-election")
    apply(control_plane, namespace, [app])

    def children() -> dict[str, Any] | None:
        out = {}
        for kind, name in (("statefulset", "managed-rabbitmq"), ("statefulset", "managed-result-backend"),
                           ("service", "managed-rabbitmq"), ("service", "managed-result-backend"),
                           ("secret", "managed-broker"), ("secret", "managed-result-backend")):
            obj = get(control_plane, namespace, kind, name)
            if obj is None:
                return None
            out[f"{kind}/{name}"] = obj
        return out

    found = wait_for(children, 60, "managed broker and result backend objects")
    rabbit = found["statefulset/managed-rabbitmq"]
    assert rabbit["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    container = rabbit["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]
    assert any("secretKeyRef" in (e.get("valueFrom") or {}) for e in container["env"])
    broker_secret = found["secret/managed-broker"]
    assert {"username", "password", "url"} <= broker_secret["data"].keys()
    password = broker_secret["data"]["password"]
    assert password not in json.dumps(rabbit)
    status = wait_for(lambda: (get(control_plane, namespace, "celeryapp", "managed") or {}).get("status"), 30,
                      "app status")
    assert status["brokerSecretRef"]["name"] == "managed-broker"

    op.stop(10)
    restarted = operator_factory("--namespace", namespace, "--no-leader-election", name="restarted")
    control_plane.kubectl("annotate", "celeryapp", "managed", "-n", namespace, "touch=1")
    wait_for(lambda: (metric_line(restarted, "celery_operator_reconcile_total", kind="CeleryApp",
                                  result="success") or 0) >= 1, 60, "the restarted operator's reconcile of the app")
    after = children()
    assert after is not None
    assert after["secret/managed-broker"]["data"] == broker_secret["data"]
    assert after["secret/managed-result-backend"]["data"] == found["secret/managed-result-backend"]["data"]


def test_a_queue_that_differs_on_the_broker_is_a_condition_not_a_crash_loop(
        control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory, images: Images,
        broker_vhost: Vhost, backend_db: RedisDb) -> None:
    from kombu import Connection

    with Connection(broker_vhost.local_url) as conn:  # someone declared it before, with other arguments
        conn.channel().queue_declare("low_queue", durable=True, auto_delete=False,
                                     arguments={"x-max-priority": 5})
    secret(control_plane, namespace, "broker", url=broker_vhost.url, managementUrl=broker_vhost.management_url)
    secret(control_plane, namespace, "backend", url=backend_db.url)
    op = operator_factory("--namespace", namespace, "--no-leader-election")
    docs = without_workers(sample_documents(image=images.sample_tasks))
    for d in docs:
        if d["kind"] == "CeleryQueue" and d["metadata"]["name"] == "low-queue":
            d["spec"]["maxPriority"] = 10
    apply(control_plane, namespace, docs)

    def conflict() -> bool:
        c = condition(get(control_plane, namespace, "celeryqueue", "low-queue"))
        return bool(c and c["status"] == "False" and c["reason"] == api.Reason.BROKER_CONFLICT
                    and "x-max-priority" in c["message"])

    try:
        wait_for(conflict, 60, "BrokerConflict on low-queue")
    except AssertionError as e:
        q = get(control_plane, namespace, "celeryqueue", "low-queue")
        raise AssertionError(f"{e}: {json.dumps((q or {}).get('status'))}") from None
    wait_ready(control_plane, namespace, "celeryqueue", "high-queue", 30)  # the rest still declared
    assert op.proc.poll() is None and "Traceback" not in op.logs()
