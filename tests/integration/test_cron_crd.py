"""One definition of a cron expression, checked against the real API server: it admits exactly the
expressions `celery_operator.cron` admits (rejecting the others with the same message), and Celery
schedules every admitted one as the operator hands it over."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from celery.schedules import crontab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_operator import api, cron
from tests.fixtures.apiserver import ApiServer
from tests.strategies import cron_expressions

pytestmark = pytest.mark.integration

BATCH = 64  # entries per submitted object; each entry's cron is judged on its own


def schedule(crons: list[str]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.SCHEDULE, "metadata": {"name": "crons"},
            "spec": {"appRef": {"name": "proj"},
                     "entries": [{"name": f"e{i}", "task": "t.add", "cron": c} for i, c in enumerate(crons)]}}


def rejected(apiserver: ApiServer, namespace: str, crons: list[str]) -> dict[int, list[str]]:
    """Entry index -> the API server's messages about its cron (none: admitted)."""
    verdict = apiserver.create(namespace, schedule(crons))
    out: dict[int, list[str]] = {}
    for path, message in verdict.causes:
        assert path.startswith("spec.entries[") and path.endswith("].cron"), (path, message)
        out.setdefault(int(path.removeprefix("spec.entries[").split("]")[0]), []).append(message)
    assert verdict.admitted == (not out), verdict.message
    return out


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(cron_expressions(), min_size=BATCH, max_size=BATCH))
def test_the_api_server_admits_exactly_what_the_operator_schedules(
        apiserver: ApiServer, namespace: str, crons: list[str]) -> None:
    server = rejected(apiserver, namespace, crons)
    for i, expr in enumerate(crons):
        problem = cron.problem(expr)
        if problem is not None:
            assert i in server, f"{expr!r} admitted, but the operator drops it: {problem}"
            assert any(problem in m for m in server[i]), (expr, problem, server[i])
            continue
        assert i not in server, f"{expr!r} rejected, but the operator would schedule it: {server[i]}"
        fields = cron.parse_cron(expr)
        assert fields is not None
        crontab(**dataclasses.asdict(fields))


@pytest.mark.parametrize("expr", ["0 0 ? * *", "@daily", "@hourly", "0 0 30 2 *", "0 22 * * fri-mon",
                                  "0 3 * * mon-fri", "0 0 31 apr,jun,sep,nov *", "0 0 29 feb *"])
def test_the_issues_examples_get_the_same_verdict_on_both_sides(
        apiserver: ApiServer, namespace: str, expr: str) -> None:
    server = rejected(apiserver, namespace, [expr])
    assert (0 in server) == (cron.problem(expr) is not None)
