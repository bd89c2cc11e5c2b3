"""Why pods or claims are stuck, in the words the pool's and app's conditions use."""

from __future__ import annotations

from typing import Any

from celery_operator import workloads


def pod(name: str, *, waiting: str | None = None, message: str = "", unschedulable: str | None = None,
        last_exit: int | None = None, deleting: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [], "containerStatuses": []}
    if unschedulable is not None:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": unschedulable})
    if waiting is not None:
        cs: dict[str, Any] = {"name": "worker", "state": {"waiting": {"reason": waiting, "message": message}}}
        if last_exit is not None:
            cs["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error"}}
        status["containerStatuses"].append(cs)
    md: dict[str, Any] = {"name": name}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": md, "status": status}


def test_an_image_that_cannot_be_pulled_names_the_pod_and_the_fix() -> None:
    p = workloads.pod_problem([pod("w-1", waiting="ImagePullBackOff", message='Back-off pulling image "x:1"')])
    assert p is not None and p.reason == "ImagePullBackOff" and p.degraded
    assert "w-1" in p.message and "image name and tag" in p.message and 'Back-off pulling image "x:1"' in p.message


def test_a_crash_loop_carries_the_last_exit_code() -> None:
    p = workloads.pod_problem([pod("w-1", waiting="CrashLoopBackOff", last_exit=2)])
    assert p is not None and p.reason == "CrashLoopBackOff"
    assert "last exit code 2" in p.message and "kubectl logs --previous" in p.message


def test_an_unschedulable_pod_carries_the_schedulers_reason() -> None:
    p = workloads.pod_problem([pod("w-1", unschedulable="0/1 nodes are available: 1 Insufficient cpu.")])
    assert p is not None and p.reason == workloads.UNSCHEDULABLE and "Insufficient cpu" in p.message


def test_pods_starting_normally_or_terminating_are_no_problem() -> None:
    assert workloads.pod_problem([pod("w-1", waiting="ContainerCreating"), pod("w-2")]) is None
    assert workloads.pod_problem([pod("w-1", waiting="CrashLoopBackOff", deleting=True)]) is None


def test_the_first_stuck_pod_by_name_is_reported() -> None:
    p = workloads.pod_problem([pod("w-b", waiting="ErrImagePull"), pod("w-a", waiting="CrashLoopBackOff")])
    assert p is not None and p.reason == "CrashLoopBackOff"


def claim(name: str, phase: str, storage_class: str | None = None) -> dict[str, Any]:
    spec = {"storageClassName": storage_class} if storage_class else {}
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


def event(about: str, message: str, type_: str, at: str) -> dict[str, Any]:
    return {"involvedObject": {"kind": "PersistentVolumeClaim", "name": about}, "message": message, "type": type_,
            "lastTimestamp": at}


def test_a_claim_whose_storage_class_is_missing_is_degraded_with_the_binders_words() -> None:
    events = [event("data-x-0", "waiting for first consumer", "Normal", "2026-01-01T00:00:01Z"),
              event("data-x-0", 'storageclass.storage.k8s.io "nope" not found', "Warning", "2026-01-01T00:00:02Z"),
              event("data-y-0", "unrelated", "Warning", "2026-01-01T00:00:03Z")]
    p = workloads.claim_problem([claim("data-x-0", "Pending", "nope")], events)
    assert p is not None and p.reason == workloads.CLAIM_PENDING and p.degraded
    assert "'nope'" in p.message and "not found" in p.message and "storageClassName" in p.message


def test_a_claim_waiting_for_its_pod_is_progressing_not_degraded() -> None:
    events = [event("data-x-0", "waiting for first consumer to be created before binding", "Normal",
                    "2026-01-01T00:00:01Z")]
    p = workloads.claim_problem([claim("data-x-0", "Pending")], events)
    assert p is not None and not p.degraded and "default storage class" in p.message


def test_bound_claims_are_no_problem() -> None:
    assert workloads.claim_problem([claim("data-x-0", "Bound")], []) is None
