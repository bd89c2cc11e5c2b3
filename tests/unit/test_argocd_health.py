"""deploy/argocd/health.lua, run in a Lua 5.1 sandbox like Argo CD's gopher-lua, on realistic objects."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from lupa import lua51

from celery_operator import api
from localenv.procs import REPO

SCRIPT = (REPO / "deploy" / "argocd" / "health.lua").read_text()
T0 = "2026-11-24T02:00:00Z"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    g = lua.globals()
    for unsafe in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "package", "debug"):
        g[unsafe] = None
    g.obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    assert hs is not None, "the script returned nothing"
    status, message = hs["status"], hs["message"]
    assert status in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
    assert isinstance(message, str)
    return status, message


def condition(type_: str, status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": T0}


def resource(kind: str, spec: dict[str, Any], status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": api.API_VERSION, "kind": kind,
        "metadata": {"name": "orders", "namespace": "shop", "generation": generation,
                     "uid": "5b0f7c1e-0000-4000-8000-000000000001", "creationTimestamp": T0},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


SPECS: dict[str, dict[str, Any]] = {
    api.APP: {"image": "ghcr.io/celery-operator/sample-tasks:0.1.0", "app": "sample_tasks.app",
              "broker": {"rabbitmq": {"image": "rabbitmq:4.1-management"}}},
    api.EXCHANGE: {"appRef": {"name": "orders"}, "type": "topic", "durable": True},
    api.QUEUE: {"appRef": {"name": "orders"}, "exchange": "orders", "routingKey": "orders.#"},
    api.POOL: {"appRef": {"name": "orders"}, "queues": ["orders"], "replicas": 2,
               "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetMessagesPerReplica": 20}},
    api.SCHEDULE: {"appRef": {"name": "orders"}, "timezone": "UTC",
                   "entries": [{"name": "cleanup", "task": "sample_tasks.add", "cron": "*/5 * * * *"}]},
}

HEALTHY_STATUS: dict[str, dict[str, Any]] = {
    api.APP: {"observedGeneration": 2, "brokerService": "orders-broker",
              "conditions": [condition(api.READY, "True", api.Reason.RECONCILED, "broker reachable")]},
    api.EXCHANGE: {"conditions": [condition(api.READY, "True", api.Reason.DECLARED, "exchange declared")]},
    api.QUEUE: {"messages": 12, "consumers": 4,
                "conditions": [condition(api.READY, "True", api.Reason.DECLARED, "queue declared")]},
    api.POOL: {"replicas": 3, "readyReplicas": 3, "desiredReplicas": 3, "queueDepth": 40,
               "conditions": [condition(api.READY, "True", api.Reason.DEPLOYMENT_READY, "3/3 replicas ready"),
                              condition(api.PROGRESSING, "False", api.Reason.DEPLOYMENT_READY)]},
    api.SCHEDULE: {"conditions": [condition(api.READY, "True", api.Reason.RECONCILED, "beat running")]},
}


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_ready_true_for_the_current_generation_is_healthy(kind: str) -> None:
    status, message = health(resource(kind, SPECS[kind], HEALTHY_STATUS[kind]))
    assert status == "Healthy"
    assert message


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_a_resource_without_status_is_progressing(kind: str) -> None:
    assert health(resource(kind, SPECS[kind], None))[0] == "Progressing"


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_ready_computed_for_an_older_generation_is_progressing(kind: str) -> None:
    assert health(resource(kind, SPECS[kind], HEALTHY_STATUS[kind], generation=3))[0] == "Progressing"


def test_a_stale_top_level_observed_generation_is_progressing() -> None:
    status = copy.deepcopy(HEALTHY_STATUS[api.APP])
    status["observedGeneration"] = 1
    for c in status["conditions"]:
        del c["observedGeneration"]
    assert health(resource(api.APP, SPECS[api.APP], status))[0] == "Progressing"


def test_status_without_a_ready_condition_is_progressing() -> None:
    assert health(resource(api.QUEUE, SPECS[api.QUEUE], {"conditions": []}))[0] == "Progressing"
    assert health(resource(api.QUEUE, SPECS[api.QUEUE], {}))[0] == "Progressing"


@pytest.mark.parametrize(("kind", "reason"), [
    (api.APP, api.Reason.BROKER_UNREACHABLE),
    (api.APP, api.Reason.SECRET_NOT_FOUND),
    (api.QUEUE, api.Reason.BROKER_CONFLICT),
    (api.QUEUE, api.Reason.EXCHANGE_NOT_FOUND),
    (api.POOL, api.Reason.QUEUE_NOT_FOUND),
    (api.SCHEDULE, api.Reason.INVALID_SPEC),
    (api.EXCHANGE, api.Reason.DUPLICATE_EXCHANGE),
])
def test_ready_false_for_a_lasting_reason_is_degraded_with_reason_and_message(kind: str, reason: str) -> None:
    status = {"conditions": [condition(api.READY, "False", reason, "needs a human")]}
    verdict, message = health(resource(kind, SPECS[kind], status))
    assert verdict == "Degraded"
    assert reason in message
    assert "needs a human" in message


@pytest.mark.parametrize(("kind", "reason"), [
    (api.POOL, api.Reason.DEPLOYMENT_PROGRESSING),
    (api.QUEUE, api.Reason.APP_NOT_READY),
])
def test_ready_false_while_work_is_under_way_is_progressing(kind: str, reason: str) -> None:
    status = {"conditions": [condition(api.READY, "False", reason, "1/3 replicas ready")]}
    assert health(resource(kind, SPECS[kind], status))[0] == "Progressing"


def test_progressing_condition_true_makes_not_ready_progressing() -> None:
    status = {"conditions": [condition(api.READY, "False", "Rollout", "rolling out"),
                             condition(api.PROGRESSING, "True", api.Reason.DEPLOYMENT_PROGRESSING)]}
    assert health(resource(api.POOL, SPECS[api.POOL], status))[0] == "Progressing"


def test_degraded_condition_wins_over_progressing() -> None:
    status = {"conditions": [condition(api.READY, "False", api.Reason.DEPLOYMENT_PROGRESSING),
                             condition(api.PROGRESSING, "True", api.Reason.DEPLOYMENT_PROGRESSING),
                             condition(api.DEGRADED, "True", api.Reason.BROKER_UNREACHABLE, "no broker")]}
    verdict, message = health(resource(api.POOL, SPECS[api.POOL], status))
    assert verdict == "Degraded"
    assert api.Reason.BROKER_UNREACHABLE in message


def test_ready_unknown_is_progressing() -> None:
    status = {"conditions": [condition(api.READY, "Unknown", "Reconciling")]}
    assert health(resource(api.APP, SPECS[api.APP], status))[0] == "Progressing"


def test_conditions_without_observed_generation_are_taken_as_current() -> None:
    status = {"conditions": [{"type": api.READY, "status": "True", "reason": api.Reason.RECONCILED}]}
    obj = resource(api.APP, SPECS[api.APP], status)
    del obj["metadata"]["generation"]
    assert health(obj) == ("Healthy", api.Reason.RECONCILED)


def test_transient_reasons_named_by_the_script_are_real_operator_reasons() -> None:
    table = re.search(r"local transient = \{(.*?)\}", SCRIPT, re.S)
    assert table is not None
    named = set(re.findall(r"(\w+) = true", table.group(1)))
    reasons = {v for k, v in vars(api.Reason).items() if k.isupper()}
    assert named
    assert named <= reasons
    condition_types = set(re.findall(r'find_condition\([^,]+, "(\w+)"\)', SCRIPT))
    assert condition_types == {api.READY, api.PROGRESSING, api.DEGRADED}
