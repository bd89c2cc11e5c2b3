"""Run a Deployment's pods as local processes: the kubelet the local control plane does not have.

    with PodRunner(kubeconfig) as runner:
        pods = runner.run_deployment("ns", "my-workers")      # spec.replicas processes
        pods[0].wait_for_log("ready.", timeout_seconds=30)
        runner.scale("ns", "my-workers", 3)                    # or runner.follow(...) to track it
    # every process is gone here (also at interpreter exit, via atexit)

What is faithful (what the kubelet and a container runtime would do):

- argv: ``command`` replaces the image ENTRYPOINT, ``args`` its CMD, with ``$(VAR)`` expanded
  against the container's env; the image side comes from ``images.py`` (image -> venv + its
  Dockerfile's ENTRYPOINT/CMD/ENV). An image not in that table is an error.
- env: exactly image ENV + ``HOSTNAME`` + ``envFrom`` + ``env`` (literal values with ``$(VAR)``
  expansion, ``secretKeyRef``/``configMapKeyRef`` read from the API server, ``fieldRef``,
  ``resourceFieldRef``); nothing of the runner's own environment leaks in (see ``podspec.py``).
- volumes: ConfigMap, Secret, downwardAPI and projected volumes are written like the kubelet's
  atomic writer (``..data`` symlink, key symlinks, ``items``, modes) and mounted read-only;
  emptyDir, hostPath and PVCs (a per-runner directory per claim) are mounted read-write;
  ``subPath``/``subPathExpr`` are supported. Each container process gets private mount and UTS
  namespaces (``podinit.py``): volumes are bind-mounted at their ``mountPath`` and the hostname
  is the pod's, so Celery's ``%h`` differs per replica.
- missing mount points (``/etc/celery-operator`` on this host) are never created on the host:
  inside the namespace their nearest existing ancestor is overlaid with a tmpfs copy of itself
  whose entries are bind mounts of the originals, and the directory is made in that tmpfs. The
  process sees the host's files plus the mount, as in a container whose image has the same files;
  the host sees nothing, even if the runner is SIGKILLed (nothing to clean up but ``/tmp``).
  Chosen over "create and remove later" because that cannot be made safe when two runners share
  a mount point, or when the runner dies.
- ``serviceAccountName`` with ``service_account=True``: a TokenRequest token, the API server's CA
  and the namespace at ``/var/run/secrets/kubernetes.io/serviceaccount``, and
  ``KUBERNETES_SERVICE_HOST``/``_PORT`` pointing at the local API server, so in-cluster config
  works. ``automountServiceAccountToken: false`` is honoured.
- stop: SIGTERM to each container's main process, SIGKILL to its whole process group after the
  pod's ``terminationGracePeriodSeconds`` (capped by ``max_grace_seconds``); whatever a main
  process that ended left in its group is killed then too, as when a container's PID 1 exits.
- init containers run to completion, in order, before the containers start.
- ``run_deployment`` again, ``scale`` or ``follow`` reconcile like a ReplicaSet controller: scale
  down stops the newest pods; a changed template rolls out (RollingUpdate: new pods first; Recreate:
  old pods first). Pod names are ``<deployment>-<template hash>-<5 random>``.
- nothing outlives the runner: ``close()``/``with``/atexit stop pods gracefully; if the runner is
  SIGKILLed its pods get SIGKILL too (PR_SET_PDEATHSIG), and the next runner removes the
  temporary directory it left.

What differs: processes run as the current user (root here), not ``runAsUser``: the venv's
interpreter lives under ``/root`` (mode 0700), so another uid could not even start Python; the
rest of ``securityContext`` (readOnlyRootFilesystem, capabilities, seccomp) is not applied either.
Network is the host's (pod IP 127.0.0.1; no service links other than ``KUBERNETES_*``).
No probes, no restarts (``Pod.exit_codes`` tells a container that ended), no resource limits,
no preStop hooks, no live update of mounted ConfigMaps. Needs root (namespaces and mounts).

Status (``report_status=True``, the default; ``podstatus.py``): each local pod of a Deployment
claims one Pod object of the Deployment's ReplicaSet (created by kube-controller-manager, never
scheduled) and reports it Running and Ready through ``pods/status``, as a kubelet would, so
``Deployment.status.readyReplicas`` counts the local pods (``Pod.pod_object`` names it). A stopped
pod's object is reported not ready, one whose processes ended Succeeded/Failed. Pod objects are
otherwise left alone: the runner still starts pods itself, not per Pod object.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localenv import images as images_mod
from localenv.images import ImageEnv
from localenv.podspec import (
    Body,
    PodInfo,
    PodSpecError,
    container_argv,
    container_env,
    expand,
    volume_files,
)
from localenv.podstatus import StatusReporter
from localenv.procs import pid_alive

__all__ = ["Pod", "PodRunner", "PodSpecError", "RunningContainer"]

PODINIT = Path(__file__).with_name("podinit.py")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_GRACE_SECONDS = 30
WORKDIR_PREFIX = "podrunner-"
OWNER_FILE = "owner.pid"
# Like the ReplicaSet controller's generated names (no vowels, no look-alike digits).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _suffix(n: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(n))


def template_hash(template: Body) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_NAME_ALPHABET[b % len(_NAME_ALPHABET)] for b in digest[:10])


def _reap_stale_workdirs(base: Path) -> None:
    """Remove what runners killed with SIGKILL left in ``base`` (their pods died with them)."""
    for d in base.glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((d / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not a runner's, or one being created right now
        if not pid_alive(owner):
            shutil.rmtree(d, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    """Whether any live process is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@dataclass
class RunningContainer:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Pod:
    """One pod's processes; ``name`` is also its hostname (and ``HOSTNAME``)."""

    info: PodInfo
    directory: Path
    containers: dict[str, RunningContainer] = field(default_factory=dict)
    owner: tuple[str, str] | None = None  # (namespace, deployment)
    template_hash: str = ""
    started_at: float = field(default_factory=time.monotonic)
    pod_object: str | None = None  # the API server's Pod object this pod reports its status in

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def namespace(self) -> str:
        return self.info.namespace

    @property
    def hostname(self) -> str:
        return self.info.hostname

    @property
    def grace_seconds(self) -> float:
        g = self.info.spec.get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE_SECONDS if g is None else g)

    def container(self, name: str | None = None) -> RunningContainer:
        if name is None:
            if len(self.containers) != 1:
                raise ValueError(f"pod {self.name} has containers {sorted(self.containers)}: name one")
            return next(iter(self.containers.values()))
        return self.containers[name]

    def logs(self, container: str | None = None) -> str:
        """The container's stdout and stderr so far (like ``kubectl logs``)."""
        return self.container(container).logs()

    def wait_for_log(self, pattern: str, timeout_seconds: float = 30.0, container: str | None = None) -> str:
        """Wait until the log matches the regex ``pattern``; returns the log. Fails fast if it exits."""
        c = self.container(container)
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_seconds
        while True:
            text = c.logs()
            if rx.search(text):
                return text
            if not c.running():
                raise RuntimeError(f"{self.name}/{c.name} exited with {c.process.returncode} before "
                                   f"logging {pattern!r}:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}/{c.name} did not log {pattern!r} in "
                                   f"{timeout_seconds}s:\n{text[-4000:]}")
            time.sleep(0.2)

    def running(self) -> bool:
        return any(c.running() for c in self.containers.values())

    @property
    def exit_codes(self) -> dict[str, int | None]:
        return {n: c.process.poll() for n, c in self.containers.items()}

    def send_term(self) -> None:
        for c in self.containers.values():
            if c.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGTERM)

    def kill(self) -> None:
        for c in self.containers.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.process.wait(timeout=10)


def _stop_pods(pods: list[Pod], cap_seconds: float) -> None:
    """SIGTERM every pod at once, then SIGKILL each one's groups after its own grace period."""
    for p in pods:
        p.send_term()
    start = time.monotonic()
    pending = list(pods)
    while pending:
        now = time.monotonic()
        still = []
        for p in pending:
            if not p.running() or now - start >= min(p.grace_seconds, cap_seconds):
                p.kill()  # also reaps whatever the main process left in its group
            else:
                still.append(p)
        pending = still
        if pending:
            time.sleep(0.05)


class _Spawner:
    """One long-lived daemon thread that starts every process.

    podinit's PR_SET_PDEATHSIG fires when the *thread* that spawned it ends, so that thread must
    live exactly as long as the runner: not a caller's short-lived thread, and not a pool thread
    that interpreter shutdown joins (and so SIGKILLs the pods) before atexit stops them gracefully.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="podrunner-spawn", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                fut.set_result(fn())
            except Exception as e:  # noqa: BLE001 -- re-raised in the caller's thread
                fut.set_exception(e)

    def run(self, fn: Any) -> Any:
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)


@dataclass
class _Followed:
    namespace: str
    name: str
    service_account: bool
    template: Body
    replicas: int
    recreate: bool = False


def _recreate(deployment: Body) -> bool:
    return bool((deployment["spec"].get("strategy") or {}).get("type") == "Recreate")


class PodRunner:
    """Runs pod templates read from the API server as local processes (see the module docstring)."""

    def __init__(self, kubeconfig: str | os.PathLike[str], *, max_grace_seconds: float = 30.0,
                 images: Mapping[str, ImageEnv] | None = None, workdir: str | os.PathLike[str] | None = None,
                 init_timeout_seconds: float = 120.0, report_status: bool = True) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the pod runner needs root: it uses mount namespaces and bind mounts")
        self.kubeconfig = Path(kubeconfig)
        self.api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.max_grace_seconds = max_grace_seconds
        self.init_timeout_seconds = init_timeout_seconds
        self.images = dict(images) if images is not None else images_mod.default_images()
        _reap_stale_workdirs(Path(workdir or tempfile.gettempdir()))
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=workdir))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        self._lock = threading.RLock()
        self._reconciling = threading.Lock()  # one reconcile at a time: no duplicate pods
        self._pods: list[Pod] = []
        self._deployments: dict[tuple[str, str], _Followed] = {}
        self._follow_stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._spawner = _Spawner()
        self._closed = False
        self._reporter = StatusReporter(self.core, self.apps) if report_status else None
        self._finalizer = weakref.finalize(self, PodRunner._cleanup, self._pods, self.workdir,
                                           self.max_grace_seconds, self._reporter)
        atexit.register(self._finalizer)

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop following, stop every pod, remove the runner's temporary files."""
        if self._closed:
            return
        self._closed = True
        self._follow_stop.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
        self._finalizer()
        self._spawner.stop()
        self.api_client.close()  # type: ignore[no-untyped-call]

    @staticmethod
    def _cleanup(pods: list[Pod], workdir: Path, grace: float, reporter: StatusReporter | None = None) -> None:
        tracked = reporter.untrack(list(pods)) if reporter is not None else []
        _stop_pods(list(pods), grace)
        pods.clear()
        shutil.rmtree(workdir, ignore_errors=True)
        if reporter is not None:  # bounded: the API server may be gone already
            reporter.stopped(tracked, time.monotonic() + 5.0)
            reporter.close(timeout_seconds=2.0)

    def stop_all(self, grace_seconds: float | None = None) -> None:
        """SIGTERM all pods, SIGKILL after each pod's terminationGracePeriodSeconds (capped)."""
        with self._lock:
            pods = list(self._pods)
            self._pods.clear()
            self._deployments.clear()
        tracked = self._reporter.untrack(pods) if self._reporter is not None else []
        _stop_pods(pods, self.max_grace_seconds if grace_seconds is None else grace_seconds)
        for p in pods:
            shutil.rmtree(p.directory, ignore_errors=True)
        if self._reporter is not None:
            self._reporter.stopped(tracked)

    def stop_pod(self, pod: Pod, grace_seconds: float | None = None) -> None:
        with self._lock:
            if pod in self._pods:
                self._pods.remove(pod)
        tracked = self._reporter.untrack([pod]) if self._reporter is not None else []
        _stop_pods([pod], self.max_grace_seconds if grace_seconds is None else grace_seconds)
        shutil.rmtree(pod.directory, ignore_errors=True)
        if self._reporter is not None:
            self._reporter.stopped(tracked)

    def pods(self, namespace: str | None = None, deployment: str | None = None) -> list[Pod]:
        with self._lock:
            return [p for p in self._pods
                    if (namespace is None or p.namespace == namespace)
                    and (deployment is None or (p.owner is not None and p.owner[1] == deployment))]

    # --- Deployments ----------------------------------------------------------------------------

    def read_deployment(self, namespace: str, name: str) -> Body:
        return _raw(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))

    def wait_for_deployment(self, namespace: str, name: str, timeout_seconds: float = 60.0) -> Body:
        """The Deployment, once it exists (an operator may not have written it yet)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                return self.read_deployment(namespace, name)
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def run_deployment(self, namespace: str, name: str, replicas: int | None = None, *,
                       service_account: bool = False) -> list[Pod]:
        """Run the Deployment's pods: ``replicas`` of them, or ``spec.replicas`` (default 1).

        Calling it again reconciles: a changed pod template replaces every pod, a changed count
        starts or stops pods (newest stopped first).
        """
        dep = self.read_deployment(namespace, name)
        want = replicas if replicas is not None else dep["spec"].get("replicas", 1)
        state = _Followed(namespace, name, service_account, dep["spec"]["template"], int(want),
                          _recreate(dep))
        return self._reconcile(state)

    def scale(self, namespace: str, name: str, replicas: int) -> list[Pod]:
        """Run ``replicas`` pods of a Deployment this runner already runs (its last-read template)."""
        with self._lock:
            state = self._deployments.get((namespace, name))
        if state is None:
            return self.run_deployment(namespace, name, replicas)
        state.replicas = replicas
        return self._reconcile(state)

    def follow(self, namespace: str, name: str, *, interval_seconds: float = 1.0,
               service_account: bool = False, wait_seconds: float = 0.0) -> list[Pod]:
        """Run the Deployment now and keep tracking its replicas and template in the background.

        This is what an autoscaler test wants: whatever writes ``spec.replicas`` is obeyed within
        ``interval_seconds`` (the first ``follow`` call's). A deleted Deployment's pods are stopped.
        ``wait_seconds`` waits for a Deployment that does not exist yet.
        """
        if wait_seconds:
            self.wait_for_deployment(namespace, name, wait_seconds)
        pods = self.run_deployment(namespace, name, service_account=service_account)
        with self._lock:
            if self._follower is None:
                self._follower = threading.Thread(target=self._follow_loop, args=(interval_seconds,),
                                                  name="podrunner-follow", daemon=True)
                self._follower.start()
        return pods

    def _follow_loop(self, interval: float) -> None:
        while not self._follow_stop.wait(interval):
            with self._lock:
                followed = list(self._deployments.values())
            for state in followed:
                try:
                    dep = self.read_deployment(state.namespace, state.name)
                except ApiException as e:
                    if e.status == 404:
                        self._forget(state)
                    continue
                except Exception as e:  # noqa: BLE001 -- an API hiccup must not end following
                    print(f"podrunner: reading {state.namespace}/{state.name}: {e}", file=sys.stderr)
                    continue
                new = _Followed(state.namespace, state.name, state.service_account,
                                dep["spec"]["template"], int(dep["spec"].get("replicas", 1)), _recreate(dep))
                try:
                    self._reconcile(new)
                except Exception as e:  # noqa: BLE001 -- reported, retried next interval
                    print(f"podrunner: reconciling {state.namespace}/{state.name}: {e}", file=sys.stderr)

    def _forget(self, state: _Followed) -> None:
        with self._lock:
            self._deployments.pop((state.namespace, state.name), None)
            pods = [p for p in self._pods if p.owner == (state.namespace, state.name)]
        for p in pods:
            self.stop_pod(p)

    def _reconcile(self, state: _Followed) -> list[Pod]:
        with self._reconciling:
            return self._reconcile_locked(state)

    def _reconcile_locked(self, state: _Followed) -> list[Pod]:
        key = (state.namespace, state.name)
        h = template_hash(state.template)
        with self._lock:
            if self._closed:
                raise RuntimeError("the pod runner is closed")
            self._deployments[key] = state
            mine = [p for p in self._pods if p.owner == key]
        stale = [p for p in mine if p.template_hash != h]
        current = sorted((p for p in mine if p.template_hash == h), key=lambda p: p.started_at)
        for p in current[state.replicas:][::-1]:  # scale down: newest first
            self.stop_pod(p)
        if state.recreate:  # strategy Recreate: old pods are gone before new ones start
            for p in stale:
                self.stop_pod(p)
        for _ in range(state.replicas - len(current)):
            pod_name = f"{state.name}-{h}-{_suffix()}"
            self._start_pod(state.namespace, state.template, pod_name,
                            service_account=state.service_account, owner=key, pod_template_hash=h)
        for p in stale:  # RollingUpdate: new pods first (no readiness here to wait for), then the old go
            self.stop_pod(p)
        return self.pods(state.namespace, state.name)

    # --- pods -----------------------------------------------------------------------------------

    def run_pod_template(self, namespace: str, pod_template_spec: Body, name: str, *,
                         service_account: bool = False) -> Pod:
        """Run one pod named ``name`` from a pod template (``{"metadata": ..., "spec": ...}``)."""
        return self._start_pod(namespace, pod_template_spec, name, service_account=service_account)

    def _lookup_in(self, namespace: str) -> Any:
        cache: dict[tuple[str, str], Body | None] = {}

        def lookup(kind: str, name: str) -> Body | None:
            if (kind, name) not in cache:
                read = self.core.read_namespaced_secret if kind == "Secret" else self.core.read_namespaced_config_map
                try:
                    cache[(kind, name)] = _raw(read(name, namespace, _preload_content=False))
                except ApiException as e:
                    if e.status != 404:
                        raise
                    cache[(kind, name)] = None
            return cache[(kind, name)]

        return lookup

    def _token(self, pod: PodInfo, projection: Body | None = None, timeout_seconds: float = 30.0) -> bytes:
        """A TokenRequest token for the pod's service account (waits for the account to exist)."""
        spec: Body = {"expirationSeconds": int((projection or {}).get("expirationSeconds", 3607))}
        if projection and projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                create: Any = self.core.create_namespaced_service_account_token
                resp = _raw(create(pod.service_account_name, pod.namespace, body, _preload_content=False))
                token: str = resp["status"]["token"]
                return token.encode()
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise PodSpecError(f"TokenRequest for serviceaccount {pod.namespace}/"
                                       f"{pod.service_account_name}: {e.status} {e.reason}") from e
                time.sleep(0.5)

    def _ca_crt(self) -> bytes:
        cfg = self.api_client.configuration
        if cfg.ssl_ca_cert:
            return Path(cfg.ssl_ca_cert).read_bytes()
        raise PodSpecError(f"{self.kubeconfig} names no certificate authority")

    def _start_pod(self, namespace: str, template: Body, name: str, *, service_account: bool = False,
                   owner: tuple[str, str] | None = None, pod_template_hash: str = "") -> Pod:
        meta = template.get("metadata") or {}
        spec: Body = json.loads(json.dumps(template["spec"]))
        labels = dict(meta.get("labels") or {})
        if pod_template_hash:
            labels["pod-template-hash"] = pod_template_hash
        info = PodInfo(name=name, namespace=namespace, uid=str(uuid.uuid4()), spec=spec, labels=labels,
                       annotations=dict(meta.get("annotations") or {}))
        directory = self.workdir / f"{namespace}_{name}"
        directory.mkdir(parents=True)
        pod = Pod(info=info, directory=directory, owner=owner, template_hash=pod_template_hash)
        try:
            self._populate(pod, service_account)
        except BaseException:
            _stop_pods([pod], 0)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if owner is not None and self._reporter is not None:
            self._reporter.track(pod, owner[1], template)
        return pod

    def _populate(self, pod: Pod, service_account: bool) -> None:
        info, spec = pod.info, pod.info.spec
        lookup = self._lookup_in(info.namespace)
        for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
            images_mod.image_env(c["image"], self.images)  # unknown images fail before anything runs
        volumes = self._materialize_volumes(pod, lookup, service_account)
        service_env: dict[str, str] = {}
        automount = spec.get("automountServiceAccountToken", True) is not False
        if service_account and automount:
            server = urlsplit(self.api_client.configuration.host)
            port = str(server.port or 443)
            service_env = {"KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
                           "KUBERNETES_SERVICE_PORT": port, "KUBERNETES_SERVICE_PORT_HTTPS": port,
                           "KUBERNETES_PORT": f"tcp://{server.hostname}:{port}"}
        for c in spec.get("initContainers") or []:
            if c.get("restartPolicy") == "Always":  # a sidecar: runs alongside, started first
                self._spawn(pod, c, lookup, volumes, service_env)
                continue
            rc = self._spawn(pod, c, lookup, volumes, service_env)
            try:
                code = rc.process.wait(timeout=self.init_timeout_seconds)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                raise RuntimeError(f"init container {c['name']} of {pod.name} ended with {code}:\n"
                                   f"{rc.logs()[-4000:]}")
            del pod.containers[c["name"]]
        for c in spec["containers"]:
            self._spawn(pod, c, lookup, volumes, service_env)
        with self._lock:
            self._pods.append(pod)

    def _materialize_volumes(self, pod: Pod, lookup: Any, service_account: bool) -> dict[str, tuple[Path, bool]]:
        """Write every volume under the pod's directory: name -> (host path, read-only)."""
        spec = pod.info.spec
        volumes = list(spec.get("volumes") or [])
        if (service_account and spec.get("automountServiceAccountToken", True) is not False
                and not any(_mounts_at(c, SERVICE_ACCOUNT_DIR) for c in spec["containers"])):
            volumes.append({"name": "kube-api-access-local", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}})
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
                c.setdefault("volumeMounts", []).append(
                    {"name": "kube-api-access-local", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})

        ca = None

        def lookup_with_ca(kind: str, name: str) -> Body | None:
            # kube-root-ca.crt is published by a controller that may lag; the kubeconfig's CA is the same.
            nonlocal ca
            if kind == "ConfigMap" and name == "kube-root-ca.crt":
                ca = ca or self._ca_crt().decode()
                return {"data": {"ca.crt": ca}}
            found: Body | None = lookup(kind, name)
            return found

        out: dict[str, tuple[Path, bool]] = {}
        for v in volumes:
            vname = v["name"]
            root = pod.directory / "volumes" / _SAFE.sub("_", vname)
            if "emptyDir" in v:
                root.mkdir(parents=True)
                root.chmod(0o777)
                out[vname] = (root, False)
            elif "hostPath" in v:
                hp = Path(v["hostPath"]["path"])
                kind = v["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    hp.mkdir(parents=True, exist_ok=True)
                if not hp.exists():
                    raise PodSpecError(f"hostPath {hp} does not exist")
                out[vname] = (hp, False)
            elif "persistentVolumeClaim" in v:
                claim = self.workdir / "claims" / pod.namespace / v["persistentVolumeClaim"]["claimName"]
                claim.mkdir(parents=True, exist_ok=True)
                out[vname] = (claim, bool(v["persistentVolumeClaim"].get("readOnly")))
            else:
                files = volume_files(v, pod.info, lookup_with_ca, lambda p: self._token(pod.info, p))
                write_atomic_volume(root, files)
                out[vname] = (root, True)
        return out

    def _spawn(self, pod: Pod, c: Body, lookup: Any, volumes: Mapping[str, tuple[Path, bool]],
               service_env: Mapping[str, str]) -> RunningContainer:
        image = images_mod.image_env(c["image"], self.images)
        pod_env = container_env(c, pod.info, lookup, service_env)
        env = {"HOSTNAME": pod.hostname, "HOME": "/root", **image.base_env(), **pod_env}
        argv = container_argv(c, image.entrypoint, image.cmd, pod_env)
        mounts = []
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise PodSpecError(f"container {c['name']}: volumeMount names unknown volume {m['name']!r}")
            source, read_only = volumes[m["name"]]
            sub = m.get("subPath") or (expand(m["subPathExpr"], pod_env) if m.get("subPathExpr") else "")
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise PodSpecError(f"subPath {sub!r} must be relative and stay inside the volume")
                target = source / sub
                if not target.exists() and not target.is_symlink():
                    target.mkdir(parents=True)  # the kubelet creates a missing subPath as a directory
                source = target.resolve()
            mounts.append({"source": str(source), "target": m["mountPath"],
                           "read_only": read_only or bool(m.get("readOnly"))})
        mounts.sort(key=lambda m: len(Path(m["target"]).parts))  # parents first, like containerd
        stage = pod.directory / f"stage-{_SAFE.sub('_', c['name'])}"
        stage.mkdir()
        log_path = pod.directory / f"{_SAFE.sub('_', c['name'])}.log"
        spawn_spec = {
            "parent_pid": os.getpid(), "hostname": pod.hostname, "stage": str(stage), "mounts": mounts,
            "working_dir": c.get("workingDir") or image.working_dir, "argv": argv, "env": env,
            # What the image would carry in its own root filesystem: a volume (e.g. an emptyDir on
            # /tmp) must not hide it when the checkout happens to live under that mountPath.
            "image_paths": [str(image.venv), str(images_mod.REPO_ROOT)],
        }
        spec_path = pod.directory / f"{_SAFE.sub('_', c['name'])}.spawn.json"
        spec_path.write_text(json.dumps(spawn_spec))

        def popen() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as log:
                return subprocess.Popen(
                    [sys.executable, "-I", str(PODINIT), str(spec_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd="/", env={"PATH": images_mod.SYSTEM_PATH})

        process = self._spawner.run(popen)
        rc = RunningContainer(name=c["name"], process=process, log_path=log_path, argv=argv, env=env)
        pod.containers[c["name"]] = rc
        return rc


def _raw(response: Any) -> Body:
    """The JSON body of a ``_preload_content=False`` call: plain dicts, as the API server wrote them."""
    body: Body = json.loads(response.data)
    return body


def _mounts_at(container: Body, path: str) -> bool:
    return any(os.path.normpath(m["mountPath"]) == path for m in container.get("volumeMounts") or [])


def write_atomic_volume(root: Path, files: list[Any]) -> None:
    """Lay files out like the kubelet's atomic writer: ``..<ts>/`` holds them, ``..data`` points
    there, and each top-level name is a symlink through ``..data``."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{random.randrange(10**9)}"
    stamp.mkdir()
    tops: set[str] = set()
    for f in files:
        rel = Path(f.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise PodSpecError(f"volume item path {f.path!r} must be relative")
        dest = stamp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.content)
        dest.chmod(f.mode)
        tops.add(rel.parts[0])
    stamp.chmod(0o755)
    (root / "..data").symlink_to(stamp.name)
    for top in sorted(tops):
        (root / top).symlink_to(f"..data/{top}")
