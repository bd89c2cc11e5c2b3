"""The app's beat Deployment."""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.models import SecretKeyRef
from celery_operator.render import beat
from tests.unit import crs


def render() -> dict[str, Any]:
    return beat.deployment(crs.seed(), SecretKeyRef("proj-broker", "url"), None, "h1", None)


def test_beat_is_one_replica_recreated_never_two() -> None:
    dep = render()
    assert dep["metadata"]["name"] == "proj-beat"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["selector"]["matchLabels"] == {api.LABEL_APP: "proj", api.LABEL_COMPONENT: "beat"}
    assert dep["metadata"]["labels"][api.LABEL_COMPONENT] == "beat"
    assert api.LABEL_POOL not in dep["metadata"]["labels"]


def test_beat_runs_the_bootstrap_with_its_schedule_in_tmp() -> None:
    [c] = render()["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["celery", "-A", api.BOOTSTRAP_MODULE, "beat", "--loglevel", "INFO",
                            "--schedule", "/tmp/celerybeat-schedule"]
    assert "livenessProbe" not in c
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env[api.ENV_BROKER_URL]["valueFrom"] == {"secretKeyRef": {"name": "proj-broker", "key": "url"}}


def test_beat_pods_roll_on_config_change() -> None:
    annotations = render()["spec"]["template"]["metadata"]["annotations"]
    assert annotations[api.ANNOTATION_CONFIG_HASH] == "h1"


def test_beat_serves_its_sent_count_on_the_metrics_port() -> None:
    dep = render()
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": api.METRICS_PORT_NAME, "containerPort": api.METRICS_PORT, "protocol": "TCP"}]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(api.METRICS_PORT)
    env = {e["name"] for e in c["env"]}
    assert api.ENV_POOL not in env and api.ENV_PROMETHEUS_MULTIPROC_DIR not in env
