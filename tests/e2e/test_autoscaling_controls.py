"""What KEDA users rely on, on live pools of real workers: pause, fallback, scaling policies, several
queues combined, scheduled minimums."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api
from localenv.cluster import Cluster
from tests.e2e.test_autoscaling import Scaled, _setup
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import OperatorFactory, apply, celery_call, get, list_events, wait_for
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def scaled(cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path, images: Images,
           broker_vhost: Vhost, backend_db: RedisDb, request: pytest.FixtureRequest) -> Scaled:
    return _setup(cluster, namespace, operator_factory, tmp_path, images.sample_tasks, broker_vhost.url,
                  broker_vhost.management_url, backend_db.url, dict(request.param))


def events(s: Scaled, reason: str, obj: str = "low") -> list[dict[str, Any]]:
    items = list_events(s.cp, s.ns)
    found = [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == obj]
    return sorted(found, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def annotate(s: Scaled, *kv: str) -> None:
    s.cp.kubectl("annotate", "celeryworkerpool", "low", "-n", s.ns, "--overwrite", *kv)


def printed(s: Scaled) -> dict[str, str]:
    """`kubectl get celeryworkerpool low` as a user reads it: column -> value."""
    out = s.cp.kubectl("get", "celeryworkerpool", "low", "-n", s.ns).stdout.splitlines()
    return dict(zip(out[0].split(), out[1].split(), strict=False))


@pytest.mark.parametrize("scaled", [{"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 5,
                                     "scaleDownStabilizationSeconds": 0}], indirect=True)
def test_a_paused_pool_scales_nothing_keeps_a_hand_set_count_and_resumes_from_the_present(scaled: Scaled) -> None:
    s = scaled
    wait_for(lambda: s.replicas() == 1, 60, "pool at its minimum")
    annotate(s, f"{api.ANNOTATION_PAUSED}=true")
    wait_for(lambda: s.pool()["status"].get("paused") is True, 30, "status.paused")
    assert printed(s)["PAUSED"] == "true"
    wait_for(lambda: events(s, "AutoscalingPaused"), 30, "an AutoscalingPaused Event")  # posted after the status

    # A task leaves the backlog when a worker takes it (acknowledged on receipt). 30 tasks of 120 s: at most 6 are
    # taken before the first ends (3 replicas of 2), 12 by the longest the waits below allow, and the 18 or more
    # left want the maximum 4 (at 5 per replica) when the pool resumes, however slowly the steps go.
    s.publish(30, seconds=120)
    wait_for(lambda: (s.pool()["status"].get("queueDepth") or 0) + (s.pool()["status"].get("messagesInFlight") or 0)
             >= 15, 30, "the backlog measured while paused (a running task is acknowledged on receipt)")
    s.cp.kubectl("scale", "deployment", "proj-low", "-n", s.ns, "--replicas=2")  # by hand, while paused
    wait_for(lambda: s.pool()["status"].get("desiredReplicas") == 2, 30, "the status follows the hand-set count")
    assert s.replicas() == 2
    assert not events(s, api.Reason.SCALED_UP)

    annotate(s, f"{api.ANNOTATION_PAUSED_REPLICAS}=3")
    wait_for(lambda: s.replicas() == 3, 30, "paused replicas 3 set on the Deployment")

    s.cp.kubectl("annotate", "celeryworkerpool", "low", "-n", s.ns, f"{api.ANNOTATION_PAUSED}-",
                 f"{api.ANNOTATION_PAUSED_REPLICAS}-")
    wait_for(lambda: s.pool()["status"].get("paused") is False, 30, "resumed")
    wait_for(lambda: s.replicas() == 4, 60, "resumed: 18 or more messages / 5 per replica → the maximum 4")
    # The Events follow what they say (the scale, the status): awaited.
    up = wait_for(lambda: events(s, api.Reason.SCALED_UP), 30, "a ScaledUp Event")
    assert up[0]["message"].startswith("3 → 4"), "resuming continued from the paused count, not from 1"
    wait_for(lambda: events(s, "AutoscalingResumed"), 30, "an AutoscalingResumed Event")


@pytest.mark.parametrize("scaled", [{"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 5,
                                     "fallback": {"failureThreshold": 2, "replicas": 3, "behavior": "static"}}],
                         indirect=True)
def test_after_failed_polls_the_fallback_count_applies_and_clears_when_the_broker_answers(
        scaled: Scaled, broker_vhost: Vhost) -> None:
    s = scaled
    wait_for(lambda: s.replicas() == 1, 60, "pool at its minimum")
    # The app's broker Secret now names ports nothing listens on: every poll fails at once.
    good = {"url": broker_vhost.url, "managementUrl": broker_vhost.management_url}
    bad = {"url": broker_vhost.url.replace(":5672/", ":5673/"),
           "managementUrl": broker_vhost.management_url.replace(":15672", ":15673")}
    s.cp.kubectl("patch", "secret", "broker", "-n", s.ns, "--type=merge", "-p", json.dumps({"stringData": bad}))
    wait_for(lambda: s.replicas() == 3, 90, "fallback: 3 replicas after 2 failed polls")
    wait_for(lambda: (s.pool()["status"].get("failedPolls") or 0) >= 2, 30, "the failed polls in the status")
    assert events(s, api.Reason.FALLBACK_ENGAGED)

    s.cp.kubectl("patch", "secret", "broker", "-n", s.ns, "--type=merge", "-p", json.dumps({"stringData": good}))
    wait_for(lambda: s.pool()["status"].get("failedPolls") == 0, 90, "the broker answers again")
    wait_for(lambda: s.replicas() == 1, 120, "the empty queue scales the pool back to its minimum")


@pytest.mark.parametrize("scaled", [{"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 5,
                                     "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]}}],
                         indirect=True)
def test_a_scale_up_policy_grows_the_pool_one_pod_per_period(scaled: Scaled) -> None:
    s = scaled
    wait_for(lambda: s.replicas() == 1, 60, "pool at its minimum")
    # 40 / 5 per replica: the maximum 4 wanted at once, and still after the workers take their first tasks
    # (acknowledged on receipt); the policy allows one more pod per 10 s.
    s.publish(40, seconds=60)
    wait_for(lambda: s.replicas() == 4, 120, "4 replicas, one step at a time")

    def three_steps() -> list[dict[str, Any]] | None:
        found = events(s, api.Reason.SCALED_UP)
        return found if len(found) >= 3 else None

    # The poller patches the Deployment's scale before it posts the Event that says so: the last one is awaited.
    steps = wait_for(three_steps, 30, "a ScaledUp Event for each step")
    moves = [e["message"].split(":")[0] for e in steps]
    assert moves == ["1 → 2", "2 → 3", "3 → 4"]
    times = [datetime.fromisoformat(e["lastTimestamp"].replace("Z", "+00:00")) for e in steps]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(g >= 9 for g in gaps), gaps  # Event times have whole seconds


def two_queue_pool(image: str, autoscaling: dict[str, Any]) -> list[dict[str, Any]]:
    v = api.API_VERSION
    return [
        {"apiVersion": v, "kind": "CeleryQueue", "metadata": {"name": "bulk-queue"},
         "spec": {"appRef": {"name": "proj"}, "name": "bulk_queue"}},
        {"apiVersion": v, "kind": "CeleryWorkerPool", "metadata": {"name": "both"},
         "spec": {"appRef": {"name": "proj"}, "queues": ["low_queue", "bulk_queue"], "concurrency": 1,
                  "terminationGracePeriodSeconds": 30,
                  "autoscaling": {"pollIntervalSeconds": 1, "minReplicas": 1, "maxReplicas": 6,
                                  "targetMessagesPerReplica": 10, **autoscaling}}},
    ]


@pytest.mark.parametrize("scaled", [{"minReplicas": 0, "maxReplicas": 1, "targetMessagesPerReplica": 1000,
                                     "activationMessages": 1000}],
                         indirect=True)
def test_a_pool_on_two_queues_combines_them_by_max_or_by_weights(scaled: Scaled, images: Images) -> None:
    s = scaled
    apply(s.cp, s.ns, two_queue_pool(images.sample_tasks, {"queueAggregation": "Max"}))
    wait_for(lambda: get(s.cp, s.ns, "deployment", "proj-both"), 60, "the pool's Deployment")
    s.publish(20, seconds=60)
    celery_call(s.cluster, s.client_env, "publish:bulk_queue:20:60")

    def pool() -> dict[str, Any]:
        return get(s.cp, s.ns, "celeryworkerpool", "both") or {}

    wait_for(lambda: pool().get("status", {}).get("desiredReplicas") == 2, 60,
             "max(20, 20) / 10 per replica → 2 (a sum would be 4)")
    apply(s.cp, s.ns, two_queue_pool(images.sample_tasks, {"queueWeights": {"low_queue": 3, "bulk_queue": 0}}))
    wait_for(lambda: pool().get("status", {}).get("desiredReplicas") == 6, 60,
             "3 * 20 + 0 * 20 = 60 / 10 per replica → 6")
    status = pool()["status"]  # one read: two could count a message moving from ready to in flight twice
    plain = status["queueDepth"] + status.get("messagesInFlight", 0)
    assert 20 < plain <= 40, "the status shows the plain depth (40 sent), not the weighted 60"


@pytest.mark.parametrize("scaled", [{"minReplicas": 1, "maxReplicas": 4, "targetMessagesPerReplica": 5,
                                     "scaleDownStabilizationSeconds": 0,
                                     "schedules": [{"name": "every-other-minute", "cron": "*/2 * * * *",
                                                    "timezone": "Europe/Paris", "durationSeconds": 60,
                                                    "minReplicas": 3}]}],
                         indirect=True)
def test_a_scheduled_window_raises_the_minimum_while_it_lasts(scaled: Scaled) -> None:
    s = scaled
    # Every other minute starts a 60 s window at minReplicas 3 (Paris time: the same minute boundaries as UTC).
    wait_for(lambda: s.pool()["status"].get("activeSchedule"), 150, "a window is active")
    wait_for(lambda: s.replicas() == 3, 30, "the window's minimum, with an empty queue")
    wait_for(lambda: not s.pool()["status"].get("activeSchedule"), 90, "the window ended")
    wait_for(lambda: s.replicas() == 1, 30, "back to the pool's own minimum")
