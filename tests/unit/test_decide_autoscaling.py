"""What a pool's status says about pause, fallback, schedules and depth, and the Events of their transitions."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator import api, decide
from celery_operator.brokers.base import DepthReport, QueueDepth
from celery_operator.endpoints import Endpoint
from celery_operator.models import CeleryApp, CeleryQueue, CeleryWorkerPool, SecretKeyRef
from celery_operator.topology import Topology

from .test_decide import APP, NS, POOL, QUEUE

AUTOSCALING = {"minReplicas": 1, "maxReplicas": 10, "targetMessagesPerReplica": 10, "activationMessages": 0,
               "pollIntervalSeconds": 10, "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 300,
               "scaleDownDrainSeconds": 60, "countInFlight": True}
DEPLOYMENT = {"spec": {"selector": {"matchLabels": {"a": "b"}}}, "status": {"replicas": 2, "readyReplicas": 2}}


def pool_body(annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None,
              **autoscaling: Any) -> dict[str, Any]:
    b = copy.deepcopy(POOL)
    b["metadata"]["annotations"] = annotations or {}
    if autoscaling:
        b["spec"]["autoscaling"] = {**AUTOSCALING, **autoscaling}
    if status is not None:
        b["status"] = status
    return b


def pool_status(b: dict[str, Any], **kw: Any) -> decide.Desired:
    topo = Topology.of(CeleryApp.of(APP), (), [CeleryQueue.of(QUEUE)], [CeleryWorkerPool.of(b)], ())
    f = decide.Facts(namespace=NS, app_name="proj", bodies={(api.APP, "proj"): APP, (api.QUEUE, "work"): QUEUE,
                                                             (api.POOL, "w"): b},
                     topology=topo, broker=Endpoint(ref=SecretKeyRef("broker", "url"), url="amqp://b//"),
                     children={("Deployment", "proj-w"): DEPLOYMENT}, **kw)
    return decide.statuses(f)[(api.POOL, "w")]


def condition(d: decide.Desired, type_: str) -> tuple[bool, str]:
    c = next(c for c in d.conditions if c.type == type_)
    return c.status, c.reason


REPORT = DepthReport(source="management", queues={"work": QueueDepth("work", 37, 3, 1)})


def test_a_pool_without_autoscaling_shows_its_desired_replicas_and_its_queues_depth() -> None:
    d = pool_status(pool_body(), poll=decide.Poll(True, None, REPORT))
    assert (d.fields["desiredReplicas"], d.fields["queueDepth"], d.fields["messagesInFlight"]) == (2, 37, 3)
    assert d.fields["paused"] is False and d.fields["failedPolls"] == 0
    assert condition(d, api.AUTOSCALING_PAUSED) == (False, api.Reason.AUTOSCALING_ACTIVE)


def test_pausing_is_announced_once_with_its_source() -> None:
    first = pool_status(pool_body({api.ANNOTATION_PAUSED: "true"}, maxReplicas=10))
    assert first.fields["paused"] is True
    assert condition(first, api.AUTOSCALING_PAUSED) == (True, api.Reason.AUTOSCALING_PAUSED)
    assert [e.reason for e in first.events] == [api.Reason.AUTOSCALING_PAUSED]
    again = pool_status(pool_body({api.ANNOTATION_PAUSED: "true"}, {"paused": True}, maxReplicas=10))
    assert again.events == ()


def test_resuming_is_announced_once() -> None:
    d = pool_status(pool_body(None, {"paused": True}, maxReplicas=10))
    assert [e.reason for e in d.events] == [api.Reason.AUTOSCALING_RESUMED] and d.fields["paused"] is False


def test_a_malformed_paused_replicas_annotation_is_a_warning_and_a_condition_not_a_crash() -> None:
    d = pool_status(pool_body({api.ANNOTATION_PAUSED_REPLICAS: "lots"}, maxReplicas=10))
    assert condition(d, api.AUTOSCALING_PAUSED) == (True, api.Reason.INVALID_PAUSE_ANNOTATION)
    assert [(e.type, e.reason) for e in d.events] == [("Normal", api.Reason.AUTOSCALING_PAUSED),
                                                     ("Warning", api.Reason.INVALID_PAUSE_ANNOTATION)]


def test_a_schedule_overlapping_itself_across_a_dst_change_is_a_warning() -> None:
    schedules = [{"name": "mornings", "cron": "0 9 * * *", "timezone": "Europe/Paris", "durationSeconds": 23 * 3600,
                  "minReplicas": 2}]
    d = pool_status(pool_body(maxReplicas=10, schedules=schedules), scale={"w": decide.PoolScale(desired=2)})
    assert condition(d, api.READY) == (True, api.Reason.SCHEDULE_OVERLAPS)
    assert "schedule mornings" in next(c.message for c in d.conditions if c.type == api.READY)


def test_a_schedule_in_an_unknown_time_zone_is_a_warning() -> None:
    schedules = [{"name": "x", "cron": "0 9 * * *", "timezone": "Mars/Base", "durationSeconds": 600,
                  "minReplicas": 2}]
    d = pool_status(pool_body(maxReplicas=10, schedules=schedules), scale={"w": decide.PoolScale(desired=2)})
    assert condition(d, api.READY) == (True, api.Reason.INVALID_SCHEDULE)


def test_the_degraded_message_says_when_the_fallback_applies_and_failed_polls_are_counted() -> None:
    d = pool_status(pool_body(maxReplicas=10, fallback={"failureThreshold": 2, "replicas": 3, "behavior": "static"}),
                    poll=decide.Poll(False, "connection refused", None, 4),
                    scale={"w": decide.PoolScale(desired=3, fallback=True, schedule=None)})
    assert condition(d, api.DEGRADED) == (True, api.Reason.BROKER_UNREACHABLE)
    message = next(c.message for c in d.conditions if c.type == api.DEGRADED)
    assert "fallback (static, 3 replicas) after 4 failed polls" in message
    assert d.fields["failedPolls"] == 4


def test_the_active_schedule_is_in_status() -> None:
    d = pool_status(pool_body(maxReplicas=10), scale={"w": decide.PoolScale(desired=5, schedule="business")})
    assert d.fields["activeSchedule"] == "business" and d.fields["desiredReplicas"] == 5


def test_a_wait_no_longer_known_is_cleared_from_status_not_left_as_it_was() -> None:
    known = pool_status(pool_body(maxReplicas=10, targetWaitSeconds=30),
                        scale={"w": decide.PoolScale(desired=2, wait_seconds=41)})
    assert known.fields["waitSeconds"] == 41
    unknown = pool_status(pool_body(maxReplicas=10, targetWaitSeconds=30, status={"waitSeconds": 41}),
                          scale={"w": decide.PoolScale(desired=2, wait_seconds=None)})
    # null in the merge patch removes the field; leaving it out would keep the last wait as if current
    assert "waitSeconds" in unknown.fields and unknown.fields["waitSeconds"] is None
