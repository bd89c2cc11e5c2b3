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


def collection(cp: ControlPlane, namespace: str, kind: str) -> str:
    path = cp.collection(f"{api.plural(kind)}.{api.GROUP}", namespace)
    assert path, f"the API server serves no {kind}"
    return path


def create_admitted(cp: ControlPlane, namespace: str, objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Create each object (a POST, as `kubectl create` sends); (kind, name) of those the API server admitted.
    A refusal is the schema's or CEL's 422 (or a 409 for a name drawn twice); anything else fails the test."""
    made = []
    for obj in objs:
        status, body = cp.api_request("POST", collection(cp, namespace, obj["kind"]), obj)
        if status == 201:
            made.append((obj["kind"], obj["metadata"]["name"]))
        else:
            assert status in (409, 422), f"creating {obj['kind']}: {status} {body[:500].decode(errors='replace')}"
    return made


def unreported(cp: ControlPlane, namespace: str, made: list[tuple[str, str]]) -> list[str]:
    out = []
    for kind in {k for k, _ in made}:
        items = (cp.read(collection(cp, namespace, kind)) or {}).get("items") or []
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
    assert api.Reason.RECONCILE_ERROR not in json.dumps(control_plane.read(collection(
        control_plane, namespace, api.APP)))
    assert len(made) > len(groups), "random objects beyond the valid apps were admitted"
