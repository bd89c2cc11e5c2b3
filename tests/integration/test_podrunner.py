"""The local pod runner against the real local API server: env, volumes, hostname, lifecycle."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localenv.images import SAMPLE_TASKS_IMAGE, UnknownImageError, image_env
from localenv.podrunner import Pod, PodRunner, group_alive
from localenv.podspec import PodSpecError
from localenv.procs import REPO

pytestmark = pytest.mark.integration

IMAGE = f"{SAMPLE_TASKS_IMAGE}:test"

# Prints one JSON line describing what the process sees, then idles until stopped.
REPORT = r"""
import json, os, socket, sys, time
def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError as e:
        return f"error: {e.strerror}"
def writable(p):
    try:
        with open(p, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
print(json.dumps({
    "argv": sys.argv[1:], "env": dict(os.environ), "hostname": socket.gethostname(), "cwd": os.getcwd(),
    "config": read("/etc/celery-operator/celery.json"),
    "config_listing": sorted(os.listdir("/etc/celery-operator")),
    "secret": read("/var/run/secrets/podrunner-test/password"),
    "subpath": read("/etc/podrunner-test.conf"),
    "secret_writable": writable("/var/run/secrets/podrunner-test/new"),
    "scratch_writable": writable("/scratch/file"),
    "etc_hosts_visible": os.path.exists("/etc/hosts"),
    "tmp_listing": os.listdir("/tmp"),
    "tmp_writable": writable("/tmp/file"),
}), flush=True)
time.sleep(600)
"""


def apply(kubectl: Any, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": list(objects)}))


def deployment(name: str, pod_spec: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}


def report_of(pod: Pod) -> dict[str, Any]:
    text = pod.wait_for_log(r"(?m)^\{.*\}$", timeout_seconds=60)
    line = next(ln for ln in text.splitlines() if ln.startswith("{"))
    report: dict[str, Any] = json.loads(line)
    return report


@pytest.fixture
def runner(control_plane: Any) -> Any:
    with PodRunner(control_plane.kubeconfig, max_grace_seconds=10) as r:
        yield r


def test_pods_see_the_env_and_volumes_the_kubelet_would_give_them(kubectl: Any, namespace: str,
                                                                    runner: PodRunner) -> None:
    host_paths = [Path("/etc/celery-operator"), Path("/scratch"), Path("/etc/podrunner-test.conf"),
                  Path("/run/secrets/podrunner-test")]
    assert not any(p.exists() for p in host_paths), "test precondition: mount points absent on the host"
    apply(kubectl, namespace,
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
           "data": {"password": base64.b64encode(b"s3cr3t").decode(), "url": base64.b64encode(b"amqp://x").decode()}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
           "data": {"LEVEL": "debug", "celery.json": '{"worker_concurrency": 2}', "app.conf": "key=value\n"}},
          deployment("reporter", replicas=2, pod_spec={
              "terminationGracePeriodSeconds": 2,
              "containers": [{
                  "name": "main", "image": IMAGE,
                  "command": ["python", "-c", REPORT], "args": ["$(GREETING)", "$$(GREETING)", "$(UNDEFINED)"],
                  "workingDir": "/scratch",
                  "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                  "env": [
                      {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                      {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                      {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                      {"name": "BROKER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "url"}}},
                      {"name": "GREETING", "value": "hi-$(POD_NAME)-$(CFG_LEVEL)"},
                  ],
                  "volumeMounts": [
                      {"name": "config", "mountPath": "/etc/celery-operator"},
                      {"name": "creds", "mountPath": "/var/run/secrets/podrunner-test"},
                      {"name": "scratch", "mountPath": "/scratch"},
                      {"name": "config", "mountPath": "/etc/podrunner-test.conf", "subPath": "app.conf"},
                      # Covers the host's /tmp, where the runner keeps the volumes above: as the
                      # operator's worker pods do (readOnlyRootFilesystem + an emptyDir on /tmp).
                      {"name": "tmp", "mountPath": "/tmp"},
                  ],
              }],
              "volumes": [
                  {"name": "config", "configMap": {"name": "settings", "items": [
                      {"key": "celery.json", "path": "celery.json"}, {"key": "app.conf", "path": "app.conf"}]}},
                  {"name": "creds", "secret": {"secretName": "creds",
                                               "items": [{"key": "password", "path": "password"}]}},
                  {"name": "scratch", "emptyDir": {}},
                  {"name": "tmp", "emptyDir": {}},
              ],
          }))

    pods = runner.run_deployment(namespace, "reporter")

    assert len(pods) == 2
    reports = {p.name: report_of(p) for p in pods}
    assert not any(p.exists() for p in host_paths), "mount points must not appear on the host"
    for name, r in reports.items():
        assert name.startswith("reporter-")
        assert r["hostname"] == name
        greeting = f"hi-{name}-debug"
        assert r["argv"] == [greeting, "$(GREETING)", "$(UNDEFINED)"]
        assert r["env"]["GREETING"] == greeting
        assert r["env"]["POD_NAME"] == name == r["env"]["HOSTNAME"]
        assert r["env"]["POD_NAMESPACE"] == namespace
        assert r["env"]["POD_IP"] == "127.0.0.1"
        assert r["env"]["BROKER"] == "amqp://x"
        assert r["env"]["CFG_LEVEL"] == "debug"
        assert r["env"]["PATH"].split(":")[0] == str(Path(".venv/bin").resolve())
        # Nothing of the runner's environment leaks into the pod.
        assert set(r["env"]) == {"HOSTNAME", "HOME", *image_env(IMAGE).base_env(),
                                 "CFG_LEVEL", "CFG_celery.json", "CFG_app.conf", "POD_NAME", "POD_NAMESPACE",
                                 "POD_IP", "BROKER", "GREETING"}
        assert r["cwd"] == "/scratch"
        assert r["config"] == '{"worker_concurrency": 2}'
        # Laid out like the kubelet's atomic writer: keys are symlinks through ..data.
        assert [n for n in r["config_listing"] if not n.startswith("..")] == ["app.conf", "celery.json"]
        assert "..data" in r["config_listing"]
        assert r["secret"] == "s3cr3t"
        assert r["subpath"] == "key=value\n"
        assert r["secret_writable"] is False
        assert r["scratch_writable"] is True
        assert r["etc_hosts_visible"] is True
        # An emptyDir starts empty, hiding the host's /tmp; only the image's own files (this checkout
        # and its venv, which a real image carries in its root) stay reachable when they live there.
        assert r["tmp_listing"] == ([REPO.parts[2]] if REPO.parts[1] == "tmp" else [])
        assert r["tmp_writable"] is True
    assert len({r["hostname"] for r in reports.values()}) == 2


def test_stop_all_kills_whole_process_groups_after_the_grace_period(kubectl: Any, namespace: str,
                                                                    control_plane: Any) -> None:
    # The main process ignores SIGTERM and has a child: both must be gone once the runner exits.
    script = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "p = subprocess.Popen(['sleep', '600']); print('child', p.pid, flush=True); time.sleep(600)")
    apply(kubectl, namespace, deployment("stubborn", {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", script]}]}))
    with PodRunner(control_plane.kubeconfig, max_grace_seconds=10) as runner:
        (pod,) = runner.run_deployment(namespace, "stubborn")
        child = int(pod.wait_for_log(r"child \d+").split()[-1])
        main = pod.container().pid
        workdir = runner.workdir
        assert group_alive(main)
        started = time.monotonic()
        runner.stop_all()
        took = time.monotonic() - started
        assert 1.0 <= took < 6.0, f"SIGKILL should follow terminationGracePeriodSeconds=1, took {took:.1f}s"
        assert not group_alive(main)
        assert not os.path.exists(f"/proc/{child}/cmdline") or not _running(child)
    assert not workdir.exists()


def test_leaving_the_runner_stops_every_pod(kubectl: Any, namespace: str, control_plane: Any) -> None:
    apply(kubectl, namespace, deployment("sleeper", replicas=2, pod_spec={
        "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}]}))
    with PodRunner(control_plane.kubeconfig, max_grace_seconds=10) as runner:
        pods = runner.run_deployment(namespace, "sleeper")
        pids = [p.container().pid for p in pods]
        assert all(group_alive(pid) for pid in pids)
    assert not any(group_alive(pid) for pid in pids)


RUNNER_SCRIPT = """
import sys
from localenv.podrunner import PodRunner
runner = PodRunner(sys.argv[1], max_grace_seconds=10)
(pod,) = runner.run_deployment(sys.argv[2], "graceful")
pod.wait_for_log("started")
print(pod.container().pid, runner.workdir, flush=True)
if sys.argv[3] == "hang":
    import time; time.sleep(600)
# else: fall off the end without close(): atexit must stop the pod
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_pods_do_not_outlive_the_runner_process(kubectl: Any, namespace: str, control_plane: Any,
                                               tmp_path: Path, how: str) -> None:
    """A runner that exits without close() stops its pods gracefully; a SIGKILLed one takes them along."""
    script = ("import signal, sys, time\n"
              "def term(*_):\n    open('/out/status', 'w').write('terminated'); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term); print('started', flush=True); time.sleep(600)")
    apply(kubectl, namespace, deployment("graceful", {
        "containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", script],
                        "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
        "volumes": [{"name": "out", "hostPath": {"path": str(tmp_path)}}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(Path(d).resolve()) for d in ("dev", "sample_tasks"))}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER_SCRIPT, str(control_plane.kubeconfig), namespace,
                             "hang" if how == "sigkill" else "exit"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        pid_text, workdir = proc.stdout.readline().split()
        pid = int(pid_text)
        if how == "sigkill":
            assert group_alive(pid)
            proc.kill()
        assert proc.wait(timeout=60) is not None
        _wait(lambda: not group_alive(pid), 10, "the pod to end with its runner")
    finally:
        proc.kill()
        proc.wait()
    status = tmp_path / "status"
    if how == "exit":
        assert status.read_text() == "terminated", "atexit stops pods with SIGTERM first"
        assert not Path(workdir).exists()
    else:
        assert not status.exists(), "a killed runner's pods are SIGKILLed (no handler ran)"
        assert Path(workdir).exists()
        PodRunner(control_plane.kubeconfig).close()
        assert not Path(workdir).exists(), "the next runner removes what a killed one left behind"


def test_follow_obeys_replicas_and_template_written_to_the_deployment(kubectl: Any, namespace: str,
                                                                     runner: PodRunner) -> None:
    # Written a moment after follow() starts: follow waits for it, as for an operator's Deployment.
    later = threading.Timer(1.0, apply, (kubectl, namespace, deployment("scaled", replicas=1, pod_spec={
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}]})))
    later.start()
    (first,) = runner.follow(namespace, "scaled", interval_seconds=0.5, wait_seconds=30)
    later.join()
    kubectl("scale", "-n", namespace, "deployment/scaled", "--replicas=3")
    _wait(lambda: len(runner.pods(namespace, "scaled")) == 3, 30, "3 pods")
    assert first in runner.pods(namespace, "scaled"), "scaling up keeps the running pod"

    kubectl("set", "env", "-n", namespace, "deployment/scaled", "ROLLOUT=2")
    _wait(lambda: {p.container().env.get("ROLLOUT") for p in runner.pods(namespace, "scaled")} == {"2"}
          and len(runner.pods(namespace, "scaled")) == 3, 30, "a rollout to the new template")
    assert not group_alive(first.container().pid), "the old template's pods are stopped"

    kubectl("scale", "-n", namespace, "deployment/scaled", "--replicas=0")
    _wait(lambda: not runner.pods(namespace, "scaled"), 30, "no pods")


def test_running_pods_are_reported_ready_so_the_deployment_counts_them(kubectl: Any, namespace: str,
                                                                      control_plane: Any) -> None:
    apply(kubectl, namespace, deployment("counted", replicas=2, pod_spec={
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}]}))

    def status() -> dict[str, Any]:
        out = kubectl("get", "-n", namespace, "deployment/counted", "-o", "json").stdout
        result: dict[str, Any] = json.loads(out).get("status") or {}
        return result

    with PodRunner(control_plane.kubeconfig, max_grace_seconds=10) as runner:
        pods = runner.run_deployment(namespace, "counted")
        _wait(lambda: status().get("readyReplicas") == 2, 60, "readyReplicas == 2")
        names = {p.pod_object for p in pods}
        assert None not in names and len(names) == 2, "each local pod reports in its own Pod object"
        objects = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        reported = {o["metadata"]["name"]: o for o in objects if o["metadata"]["name"] in names}
        assert len(reported) == 2
        for o in reported.values():
            st = o["status"]
            assert st["phase"] == "Running" and st["podIP"] == "127.0.0.1" and st.get("startTime")
            assert {c["type"]: c["status"] for c in st["conditions"]} == {
                "PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
            (cs,) = st["containerStatuses"]
            assert cs["name"] == "main" and cs["image"] == IMAGE and cs["ready"] and cs["started"]
            assert "running" in cs["state"] and cs["restartCount"] == 0
            assert o["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"

        runner.stop_all()
        _wait(lambda: not status().get("readyReplicas"), 60, "readyReplicas back to 0")


def test_service_account_token_authenticates_in_cluster_clients(namespace: str, runner: PodRunner) -> None:
    script = ("from kubernetes import client, config; config.load_incluster_config(); "
              "r = client.AuthenticationV1Api().create_self_subject_review("
              "{'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}); "
              "print('user', r.status.user_info.username, flush=True)")
    template = {"metadata": {"labels": {"app": "sa"}},
                "spec": {"containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", script]}]}}
    pod = runner.run_pod_template(namespace, template, "sa-check", service_account=True)
    assert f"user system:serviceaccount:{namespace}:default" in pod.wait_for_log(r"user \S+", 60)
    assert not Path("/var/run/secrets/kubernetes.io").exists()


def test_unknown_image_fails_before_anything_runs(namespace: str, runner: PodRunner) -> None:
    template = {"spec": {"containers": [{"name": "main", "image": "docker.io/library/nginx:1.27"}]}}
    with pytest.raises(UnknownImageError, match="nginx"):
        runner.run_pod_template(namespace, template, "nginx")
    assert runner.pods() == []


def test_missing_secret_is_a_pod_spec_error(namespace: str, runner: PodRunner) -> None:
    template = {"spec": {"containers": [{"name": "main", "image": IMAGE, "command": ["true"], "env": [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}]}}
    with pytest.raises(PodSpecError, match="absent"):
        runner.run_pod_template(namespace, template, "no-secret")
    assert runner.pods() == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
