"""The kubelet's status reporting for the pod runner: local pods show up as Ready Pod objects.

kube-controller-manager creates the Pod objects of a Deployment's ReplicaSet; without a kubelet
they stay Pending (no nodeName) and ``Deployment.status.readyReplicas`` stays 0. For each local
pod the runner starts for a Deployment, ``StatusReporter`` claims one of those Pod objects (of the
ReplicaSet whose template is the one the local pod runs) and writes its status through the
``pods/status`` subresource as a kubelet would: Running, Ready, one running status per container.
When the local pod stops or its processes end, the Pod object is reported not ready (Succeeded or
Failed if the processes ended on their own). The API server accepts status on an unscheduled
Pod, so no Node or binding is needed.

Note: the ReplicaSet's ``pod-template-hash`` label is the controller's own hash, not the runner's
``template_hash``; the current ReplicaSet is found by its template instead.

A claim is also written to the Pod object as an annotation (runner pid + local pod name, with an
optimistic-lock patch), so two runners (even in two processes) never report the same Pod object,
and a claim of a dead runner process may be taken over.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv.procs import pid_alive

if TYPE_CHECKING:
    from localenv.podrunner import Pod

Body = dict[str, Any]

CLAIM_ANNOTATION = "localenv.celery-operator.dev/local-pod"
HASH_LABEL = "pod-template-hash"
RETRY_SECONDS = 0.5
REQUEST_TIMEOUT = 5.0
WARN_AFTER_SECONDS = 30.0

# Pod objects claimed by any runner of this process: (namespace, name).
_claimed: set[tuple[str, str]] = set()
_claimed_lock = threading.Lock()


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(response: Any) -> Body:
    body: Body = json.loads(response.data)
    return body


def _controller_uid(obj: Body) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            uid: str = ref["uid"]
            return uid
    return None


def _without_hash(template: Body) -> Body:
    t: Body = json.loads(json.dumps(template))
    labels = (t.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return t


@dataclass
class _Tracked:
    pod: Pod
    deployment: str
    template: Body
    started_wall: float
    since: float = field(default_factory=time.monotonic)
    pod_object: str | None = None  # the claimed Pod object's name
    reported: str = ""  # last state written: "ready", "not-ready", "ended"
    warned: bool = False


class StatusReporter:
    """Claims Pod objects for local pods and keeps their status; never raises into the runner."""

    def __init__(self, core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
        self.core = core
        self.apps = apps
        self._lock = threading.RLock()
        self._tracked: dict[int, _Tracked] = {}  # id(local pod) -> tracking
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the runner calls ------------------------------------------------------------------

    def track(self, pod: Pod, deployment: str, template: Body) -> None:
        """A local pod of ``deployment`` started: claim a Pod object for it (in the background)."""
        started_wall = time.time() - (time.monotonic() - pod.started_at)
        with self._lock:
            if self._stop.is_set():
                return
            self._tracked[id(pod)] = _Tracked(pod, deployment, template, started_wall)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="podrunner-status", daemon=True)
                self._thread.start()
        self._wake.set()

    def untrack(self, pods: list[Pod]) -> list[_Tracked]:
        """Pods the runner is about to stop: no longer watched (their end is not their own)."""
        with self._lock:
            return [t for p in pods if (t := self._tracked.pop(id(p), None)) is not None]

    def stopped(self, tracked: list[_Tracked], deadline: float | None = None) -> None:
        """Report the Pod objects of stopped local pods not ready, and release them."""
        for t in tracked:
            if deadline is not None and time.monotonic() > deadline:
                break
            self._end(t, on_its_own=False, deadline=deadline)

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Stop the background loop; report every Pod object still claimed not ready (bounded)."""
        deadline = time.monotonic() + timeout_seconds
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            rest = list(self._tracked.values())
            self._tracked.clear()
        self.stopped(rest, deadline)

    # --- background loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RETRY_SECONDS)
            self._wake.clear()
            with self._lock:
                tracked = list(self._tracked.values())
            for t in tracked:
                if self._stop.is_set():
                    return
                try:
                    self._step(t)
                except Exception as e:  # noqa: BLE001 -- status is best effort; retried next round
                    print(f"podrunner: status of {t.pod.namespace}/{t.pod.name}: {e}", file=sys.stderr)

    def _step(self, t: _Tracked) -> None:
        exits = t.pod.exit_codes
        if t.pod_object is None:
            if all(code is not None for code in exits.values()):
                with self._lock:  # ended before it was claimed: nothing to report
                    self._tracked.pop(id(t.pod), None)
                return
            self._claim(t)
            return
        if all(code is not None for code in exits.values()):
            with self._lock:
                if self._tracked.pop(id(t.pod), None) is None:
                    return  # the runner is stopping it and reports that
            self._end(t, on_its_own=True)
        elif any(code is not None for code in exits.values()):
            if t.reported != "not-ready":  # a container ended, the pod's other containers run on
                self._patch_status(t, self._status(t, ready=False))
                t.reported = "not-ready"
        elif t.reported != "ready":  # claimed, but writing the status failed: again
            self._patch_status(t, self._status(t, ready=True))
            t.reported = "ready"

    def _claim(self, t: _Tracked) -> None:
        ns = t.pod.namespace
        rs = self._replica_set(ns, t.deployment, t.template)
        if rs is not None:
            for candidate in self._candidates(ns, rs):
                with self._lock:
                    if id(t.pod) not in self._tracked:
                        return  # stopped meanwhile
                    if self._take(ns, candidate, t.pod.name):
                        t.pod_object = t.pod.pod_object = candidate["metadata"]["name"]
                        self._patch_status(t, self._status(t, ready=True))  # if refused: next round
                        t.reported = "ready"
                        return
        if not t.warned and time.monotonic() - t.since > WARN_AFTER_SECONDS:
            t.warned = True
            print(f"podrunner: no Pod object of deployment {ns}/{t.deployment} to report {t.pod.name} "
                  f"in for {WARN_AFTER_SECONDS:.0f}s; still trying", file=sys.stderr)

    def _replica_set(self, ns: str, deployment: str, template: Body) -> Body | None:
        """The Deployment's ReplicaSet whose template is the one the local pod runs."""
        sets = _raw(self.apps.list_namespaced_replica_set(ns, _preload_content=False,
                                                          _request_timeout=REQUEST_TIMEOUT))["items"]
        want = _without_hash(template)
        for rs in sets:
            owners = rs["metadata"].get("ownerReferences") or []
            if not any(o.get("controller") and o.get("kind") == "Deployment" and o.get("name") == deployment
                       for o in owners):
                continue
            if _without_hash(rs["spec"]["template"]) == want:
                return rs
        return None

    def _candidates(self, ns: str, rs: Body) -> list[Body]:
        h = (rs["metadata"].get("labels") or {}).get(HASH_LABEL)
        selector = f"{HASH_LABEL}={h}" if h else None
        pods = _raw(self.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False,
                                                  _request_timeout=REQUEST_TIMEOUT))["items"]
        out = []
        for p in pods:
            meta = p["metadata"]
            if (_controller_uid(p) != rs["metadata"]["uid"] or meta.get("deletionTimestamp")
                    or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")):
                continue
            with _claimed_lock:
                if (ns, meta["name"]) in _claimed:
                    continue
            claim = (meta.get("annotations") or {}).get(CLAIM_ANNOTATION)
            if claim:
                pid_text = claim.split("/", 1)[0]
                pid = int(pid_text) if pid_text.isdigit() else 0
                if pid != os.getpid() and pid_alive(pid):
                    continue  # another live runner's
            out.append(p)
        out.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return out

    def _take(self, ns: str, pod_object: Body, local_name: str) -> bool:
        name = pod_object["metadata"]["name"]
        with _claimed_lock:
            if (ns, name) in _claimed:
                return False
            _claimed.add((ns, name))
        body = {"metadata": {"resourceVersion": pod_object["metadata"]["resourceVersion"],
                             "annotations": {CLAIM_ANNOTATION: f"{os.getpid()}/{local_name}"}}}
        try:  # the resourceVersion makes this a compare-and-swap: a racing runner gets 409
            self.core.patch_namespaced_pod(name, ns, body, _request_timeout=REQUEST_TIMEOUT,
                                           _preload_content=False)
            return True
        except ApiException as e:
            with _claimed_lock:
                _claimed.discard((ns, name))
            if e.status not in (404, 409):
                print(f"podrunner: claiming Pod {ns}/{name}: {e.status} {e.reason}", file=sys.stderr)
            return False

    # --- status bodies --------------------------------------------------------------------------

    def _status(self, t: _Tracked, *, ready: bool, phase: str | None = None) -> Body:
        spec = t.pod.info.spec
        now = _rfc3339(time.time())
        start = _rfc3339(t.started_wall)
        flag = "True" if ready else "False"
        conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": start},
                      {"type": "Initialized", "status": "True", "lastTransitionTime": start}]
        for kind in ("ContainersReady", "Ready"):
            cond = {"type": kind, "status": flag, "lastTransitionTime": start if ready else now}
            if not ready:
                cond["reason"] = "PodCompleted" if phase else "ContainersNotReady"
            conditions.append(cond)
        statuses = []
        for c in spec["containers"]:
            rc = t.pod.containers.get(c["name"])
            code = rc.process.poll() if rc is not None else None
            status: Body = {"name": c["name"], "image": c["image"], "imageID": "",
                            "containerID": f"local://{rc.pid}" if rc is not None else "",
                            "ready": ready and code is None, "started": code is None, "restartCount": 0}
            if code is None:
                status["state"] = {"running": {"startedAt": start}}
            else:
                exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N
                status["state"] = {"terminated": {"exitCode": exit_code, "startedAt": start, "finishedAt": now,
                                                  "reason": "Completed" if exit_code == 0 else "Error"}}
            statuses.append(status)
        body: Body = {"phase": phase or "Running", "startTime": start, "hostIP": "127.0.0.1",
                      "hostIPs": [{"ip": "127.0.0.1"}], "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                      "conditions": conditions, "containerStatuses": statuses}
        init = list(spec.get("initContainers") or [])
        if init:
            body["initContainerStatuses"] = [
                {"name": c["name"], "image": c["image"], "imageID": "", "restartCount": 0,
                 "ready": c.get("restartPolicy") == "Always" and ready,
                 "started": c.get("restartPolicy") == "Always" and ready,
                 "state": ({"running": {"startedAt": start}} if c.get("restartPolicy") == "Always" and ready
                           else {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start,
                                                "finishedAt": start}})}
                for c in init]
        return {"status": body}

    def _patch_status(self, t: _Tracked, body: Body, deadline: float | None = None) -> None:
        assert t.pod_object is not None
        timeout = REQUEST_TIMEOUT if deadline is None else max(0.1, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
        self.core.patch_namespaced_pod_status(t.pod_object, t.pod.namespace, body, _request_timeout=timeout,
                                              _preload_content=False)

    def _end(self, t: _Tracked, *, on_its_own: bool, deadline: float | None = None) -> None:
        """Report the local pod's end on its Pod object (best effort) and release the claim."""
        if t.pod_object is None:
            return
        ns, name = t.pod.namespace, t.pod_object
        phase = None
        if on_its_own:
            codes = t.pod.exit_codes.values()
            phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        try:
            self._patch_status(t, self._status(t, ready=False, phase=phase), deadline)
            t.reported = "ended"
            if not on_its_own:  # still usable: a later local pod may report in it
                self.core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {CLAIM_ANNOTATION: None}}},
                                               _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
        except Exception as e:  # noqa: BLE001 -- best effort: the namespace may be gone already
            if not (isinstance(e, ApiException) and e.status == 404):
                print(f"podrunner: reporting the end of {ns}/{t.pod.name} on Pod {name}: {e}", file=sys.stderr)
        finally:
            with _claimed_lock:
                _claimed.discard((ns, name))
