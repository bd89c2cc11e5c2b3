"""`make demo`: the operator installed with helm on the local cluster, the sample topology with its own
RabbitMQ and Redis, and a producer, all in pods; then the autoscaled pool grows and shrinks.

Everything runs from the images built on this machine. The demo leaves it all running and prints what
to look at; `make down` stops the cluster.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from localenv.cluster import Cluster
from localenv.procs import REPO

NAMESPACE = "demo"
OPERATOR_NAMESPACE = "celery-operator"
RELEASE = "celery-operator"
SLOW_TASKS = 40
SLOW_SECONDS = 3


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def sample_topology(images: dict[str, str]) -> list[dict[str, Any]]:
    """sample_tasks/topology with this machine's images (the app's, RabbitMQ's and Redis')."""
    docs: list[dict[str, Any]] = []
    for f in sorted((REPO / "sample_tasks" / "topology").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    for d in docs:
        if d["kind"] == "CeleryApp":
            d["spec"]["image"] = images["sample-tasks"]
            d["spec"]["broker"]["rabbitmq"]["image"] = images["rabbitmq"]
            d["spec"]["resultBackend"]["redis"]["image"] = images["redis"]
            if "flower" in d["spec"]:
                d["spec"]["flower"]["image"] = images["flower"]
    return docs


FLOWER_SECRET = "proj-flower-auth"
FLOWER_USER = "admin"


def flower_secret(namespace: str = NAMESPACE) -> dict[str, Any]:
    """The sample app's Flower credentials (basic auth `admin:<random>`), made once per cluster."""
    password = secrets.token_urlsafe(12)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": FLOWER_SECRET, "namespace": namespace},
            "stringData": {"auth": f"{FLOWER_USER}:{password}"}}


PRODUCER = """
import celery_operator_app  # the operator's bootstrap module, from the app's config ConfigMap
app = celery_operator_app.app
r = app.send_task("sample_tasks.tasks.add", (1, 2))
print("add(1, 2) =", r.get(timeout=120), flush=True)
for _ in range({n}):
    app.send_task("sample_tasks.tasks.slow", ({seconds},))  # routed to low_queue by its `tasks`
print("sent {n} slow tasks", flush=True)
"""


def producer_job(images: dict[str, str]) -> dict[str, Any]:
    """A Job from the sample image that loads the app's generated config, as any producer can: wired by
    `celery-operator producer-patch` (the one rendering of a producer's config mount and env)."""
    from celery_operator.offline import producer_patch_files

    wiring = yaml.safe_load(producer_patch_files([REPO / "sample_tasks" / "topology"], "producer",
                                                 namespace=NAMESPACE))["spec"]["template"]["spec"]
    [wired] = wiring["containers"]
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "producer", "namespace": NAMESPACE},
        "spec": {"backoffLimit": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "producer", "image": images["sample-tasks"],
                "command": ["python3", "-c", PRODUCER.format(n=SLOW_TASKS, seconds=SLOW_SECONDS)],
                "env": [*wired["env"], {"name": "HOME", "value": "/tmp"}],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [*wired["volumeMounts"], {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [*wiring["volumes"], {"name": "tmp", "emptyDir": {}}],
        }}},
    }


def wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    raise SystemExit(f"[demo] {what}: not within {timeout:.0f}s")


def run(state: dict[str, Any]) -> int:
    cluster = Cluster.attach(state)
    cluster.refresh_images()
    cp = cluster.control_plane
    images = {n: cluster.image(n) for n in ("operator", "sample-tasks", "rabbitmq", "redis", "flower")}

    def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
        return cp.kubectl(*args, input=input, check=check, timeout=300).stdout

    def replicas() -> int:
        return int(json.loads(kubectl("get", "deployment", "proj-low", "-n", NAMESPACE, "-o", "json"))["spec"]
                   .get("replicas", 0))

    repo, tag = images["operator"].rsplit(":", 1)
    # CRDs that tests applied to this cluster are adopted by the release (Helm's documented way).
    for f in sorted((REPO / "crds").glob("*.yaml")):
        crd = f"crd/{yaml.safe_load(f.read_text())['metadata']['name']}"
        if kubectl("get", crd, check=False):
            kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")
            kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={RELEASE}",
                    f"meta.helm.sh/release-namespace={OPERATOR_NAMESPACE}")
    say(f"helm install {RELEASE} (operator image {images['operator']})")
    helm = [str(cp.bin_dir / "helm"), "upgrade", "--install", RELEASE, str(REPO / "charts" / "celery-operator"),
            "-n", OPERATOR_NAMESPACE, "--create-namespace", "--set", f"image.repository={repo}",
            "--set", f"image.tag={tag}", "--wait", "--timeout", "5m"]
    subprocess.run(helm, env=cp.env(), check=True, stdout=subprocess.DEVNULL)
    kubectl("create", "namespace", NAMESPACE, check=False)
    if not kubectl("get", "secret", FLOWER_SECRET, "-n", NAMESPACE, "--ignore-not-found"):
        kubectl("create", "-f", "-", input=json.dumps(flower_secret()))
    say("applying sample_tasks/topology (managed RabbitMQ and Redis, three pools, beat)")
    kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(sample_topology(images)))
    say("waiting for the app to be Ready (RabbitMQ and Redis start, queues are declared)")
    kubectl("wait", "--for=condition=Ready", "celeryapp/proj", "-n", NAMESPACE, "--timeout=300s")
    kubectl("wait", "--for=condition=Ready", "celeryworkerpool/default", "celeryworkerpool/high",
            "-n", NAMESPACE, "--timeout=300s")
    kubectl("wait", "--for=condition=FlowerReady", "celeryapp/proj", "-n", NAMESPACE, "--timeout=300s")
    print(kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
    print(kubectl("get", "celery", "-n", NAMESPACE))

    say(f"a producer Job sends add(1, 2) and {SLOW_TASKS} slow tasks of {SLOW_SECONDS}s (routed to low_queue)")
    kubectl("delete", "job", "producer", "-n", NAMESPACE, "--ignore-not-found")
    kubectl("apply", "-f", "-", input=json.dumps(producer_job(images)))
    kubectl("wait", "--for=condition=Complete", "job/producer", "-n", NAMESPACE, "--timeout=300s")
    print(kubectl("logs", "job/producer", "-n", NAMESPACE))

    low = wait(lambda: replicas() if replicas() > 1 else 0, 120, "the low pool scaling up")
    say(f"the low pool scaled from 0 to {low}; waiting for it to drain and shrink back")
    peak = low
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        n = replicas()
        peak = max(peak, n)
        if n == 0:
            break
        time.sleep(5)
    else:
        raise SystemExit("[demo] the low pool did not shrink back to 0 within 10 minutes")
    say(f"the low pool grew to {peak} replicas and shrank back to 0")
    print(kubectl("get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=CeleryWorkerPool"))
    print(f"""
The demo is running on the local cluster. Try:
  export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH
  kubectl get celery -n {NAMESPACE}                 # apps, exchanges, queues, pools, schedules and their READY/REASON
  kubectl get pods -n {NAMESPACE}                   # RabbitMQ, Redis, workers and beat, run by the kubelet
  kubectl describe celeryworkerpool low -n {NAMESPACE}   # autoscaling status and ScaledUp/ScaledDown events
  kubectl logs -n {NAMESPACE} deploy/proj-beat      # beat sending add-every-30s
  kubectl logs -n {OPERATOR_NAMESPACE} deploy/{RELEASE}
  kubectl -n {OPERATOR_NAMESPACE} port-forward svc/{RELEASE}-metrics 8080 & curl -s localhost:8080/metrics
Flower (workers, tasks, queues), behind basic auth:
  kubectl -n {NAMESPACE} port-forward svc/proj-flower 5555 &    # then open http://localhost:5555
  kubectl -n {NAMESPACE} get secret {FLOWER_SECRET} -o jsonpath='{{.data.auth}}' | base64 -d; echo   # user:password
  kubectl get celeryapp proj -n {NAMESPACE} -o jsonpath='{{.status.flower}}'; echo   # its in-cluster URL and state
  kubectl delete job producer -n {NAMESPACE}; make demo   # run the producer again
`make down` stops everything.""")
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads((REPO / ".local" / "state.json").read_text())))
