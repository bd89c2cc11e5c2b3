"""PURE: why a workload's pods are not running, from what the kubelet and the scheduler report.

The kubelet writes a waiting container's reason (ErrImagePull, CrashLoopBackOff, ...) into the pod's
status; the scheduler writes `PodScheduled=False, reason=Unschedulable`; a claim that cannot bind
stays `Pending` and its Events say why. These become the pool's (or the app's, for managed brokers)
conditions, with a message that says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Body = dict[str, Any]

# Waiting reasons that mean "this will not start by itself", with what to do about each.
WAITING_HINTS: dict[str, str] = {
    "ErrImagePull": "the image cannot be pulled: check the image name and tag, and imagePullSecrets",
    "ImagePullBackOff": "the image cannot be pulled: check the image name and tag, and imagePullSecrets",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "InvalidImageName": "the image name is not valid",
    "CreateContainerConfigError": "the container's configuration refers to something missing "
                                  "(a Secret or ConfigMap key in env or envFrom?)",
    "CreateContainerError": "the runtime cannot create the container",
    "RunContainerError": "the runtime cannot start the container (command not found in the image?)",
    "CrashLoopBackOff": "the container keeps exiting: see `kubectl logs --previous` of the pod",
}
UNSCHEDULABLE = "Unschedulable"
CLAIM_PENDING = "ClaimPending"


@dataclass(frozen=True)
class WorkloadProblem:
    reason: str
    message: str
    degraded: bool = True  # False: it may yet resolve by itself (Progressing instead)


def _name(obj: Body) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def _last_exit(status: Body) -> str:
    term = (status.get("lastState") or {}).get("terminated") or {}
    if not term:
        return ""
    return f" (last exit code {term.get('exitCode')}, {term.get('reason', 'Error')})"


def pod_problem(pods: list[Body]) -> WorkloadProblem | None:
    """The first reason (by pod name) one of `pods` cannot run, or None when none is stuck."""
    for pod in sorted(pods, key=_name):
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == UNSCHEDULABLE:
                why = str(c.get("message", ""))
                hint = "a claim of the pod is not bound" if "PersistentVolumeClaim" in why else \
                    "lower the requested resources, or add nodes"
                return WorkloadProblem(UNSCHEDULABLE, f"pod {_name(pod)} cannot be scheduled: {why} ({hint})")
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in WAITING_HINTS:
                detail = waiting.get("message") or ""
                return WorkloadProblem(
                    reason, f"pod {_name(pod)}, container {cs.get('name')}: {reason}{_last_exit(cs)}: "
                    f"{WAITING_HINTS[reason]}" + (f" ({detail})" if detail else ""))
    return None


def claim_problem(claims: list[Body], events: list[Body]) -> WorkloadProblem | None:
    """A Pending claim, with the latest Event about it (the provisioner's or the binder's reason)."""
    for claim in sorted(claims, key=_name):
        if (claim.get("status") or {}).get("phase") != "Pending":
            continue
        name = _name(claim)
        about = [e for e in events if (e.get("involvedObject") or {}).get("name") == name
                 and (e.get("involvedObject") or {}).get("kind") == "PersistentVolumeClaim"]
        about.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        why = f": {about[-1].get('message')}" if about else ""
        storage_class = (claim.get("spec") or {}).get("storageClassName")
        sc = f" (storage class {storage_class!r})" if storage_class else " (the default storage class)"
        failing = bool(about) and about[-1].get("type") == "Warning"
        hint = ": fix the storage's storageClassName (delete the claim if it must change)" if failing else ""
        return WorkloadProblem(CLAIM_PENDING, f"PersistentVolumeClaim {name} is not bound{sc}{why}{hint}",
                               degraded=failing)
    return None
