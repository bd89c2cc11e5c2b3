"""A running operator fed random admitted custom resources: it stays healthy and every admitted
object gets a Ready condition for its generation within one cycle."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from celery_operator import api
from localenv.controlplane import ControlPlane
from tests.fixtures.operator import OperatorFactory, wait_for
from tests.integration.test_fuzz_crs import batches

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CYCLE_SECONDS = 60  # the operator's resync: at most this long from a change to its reconcile


def create_admitted(cp: ControlPlane, namespace: str, objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Create each object; (kind, name) of those the API server admitted."""
    made = []
    for obj in objs:
        r = cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)
        if r.returncode == 0:
            made.append((obj["kind"], obj["metadata"]["name"]))
    return made


def unreported(cp: ControlPlane, namespace: str, made: list[tuple[str, str]]) -> list[str]:
    out = []
    for kind in {k for k, _ in made}:
        items = json.loads(cp.kubectl("get", f"{api.plural(kind)}.{api.GROUP}", "-n", namespace, "-o",
                                      "json").stdout)["items"]
        by_name = {o["metadata"]["name"]: o for o in items}
        for k, name in made:
            if k != kind:
                continue
            o = by_name[name]
            ready = [c for c in (o.get("status") or {}).get("conditions") or [] if c["type"] == api.READY]
            if not ready or ready[0].get("observedGeneration") != o["metadata"]["generation"]:
                out.append(f"{kind}/{name}")
    return out


def drawn_batches(count: int) -> list[list[dict[str, Any]]]:
    """`count` batches drawn with a fixed seed (hypothesis, without shrinking: the namespace and the
    operator are real, so the test runs once on all of them)."""
    out: list[list[dict[str, Any]]] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batches())
    def collect(batch: list[dict[str, Any]]) -> None:
        out.append(batch)

    collect()
    return out


def test_every_admitted_random_object_gets_a_condition_and_the_operator_stays_healthy(
        control_plane: ControlPlane, namespace: str, operator_factory: OperatorFactory) -> None:
    groups = drawn_batches(8)
    op = operator_factory("--namespace", namespace, "--no-leader-election", name="fuzz")
    made = create_admitted(control_plane, namespace, [o for g in groups for o in g])
    try:
        wait_for(lambda: not unreported(control_plane, namespace, made), CYCLE_SECONDS + 30,
                 "a Ready condition on every admitted object", interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}: {unreported(control_plane, namespace, made)}") from None
    assert op.proc.poll() is None
    assert op.get("/healthz")[0] == 200
    assert "Traceback" not in op.logs()
    assert api.Reason.RECONCILE_ERROR not in json.dumps(json.loads(control_plane.kubectl(
        "get", "celeryapps", "-n", namespace, "-o", "json").stdout))
    assert len(made) > len(groups), "random objects beyond the valid apps were admitted"
