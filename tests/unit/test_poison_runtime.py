"""The pods' poison-task module keeps each late-acknowledged task's ledger entry in the app's Redis: written when
a run starts, a death recorded when the task comes back from a run that died, nothing without a Redis. Run
here on a fake Redis, from the module's source as the ConfigMap ships it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from celery_operator import api, poison
from celery_operator.config import module_sources
from tests.unit.taskmetrics import load_module

TASK = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class FakeRedis:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        assert ex == poison.LEDGER_TTL_SECONDS
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)

    def exists(self, key: str) -> int:
        return int(key in self.values)


class RedisBackend:  # named as Celery's: the module looks for the ledger there first
    def __init__(self, client: FakeRedis) -> None:
        self.client = client


@pytest.fixture
def runtime() -> Iterator[ModuleType]:
    """celery_operator_poison, with the modules it imports as the pods have them."""
    shipped = {"celery_operator_poison_rules": poison, "celery_operator_metrics": load_module()}
    saved = {k: sys.modules.get(k) for k in shipped}
    sys.modules.update(shipped)
    try:
        module = ModuleType("celery_operator_poison_under_test")
        exec(compile(module_sources()[api.POISON_FILE], api.POISON_FILE, "exec"), module.__dict__)
        yield module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def worker(runtime: ModuleType, tmp_path: Path, redis: FakeRedis | None) -> Any:
    backend = RedisBackend(redis) if redis is not None else object()
    app = SimpleNamespace(backend=backend, conf=SimpleNamespace(broker_url="amqp://rabbit//"))
    return runtime.Poison(app, 3, str(tmp_path / "termination-log"), str(tmp_path / "inflight"))


def entry(redis: FakeRedis) -> dict[str, Any]:
    found = poison.load_entry(redis.get(poison.LEDGER_PREFIX + TASK))
    assert found is not None
    return found


def redelivery() -> Any:
    return SimpleNamespace(id=TASK, name="t.crash",
                           message=SimpleNamespace(delivery_info={"redelivered": True}))


def test_a_late_acknowledged_task_has_a_ledger_entry_while_it_runs(runtime: ModuleType, tmp_path: Path) -> None:
    redis = FakeRedis()
    w = worker(runtime, tmp_path, redis)
    w.on_prerun(task_id=TASK, task=SimpleNamespace(name="t.crash", acks_late=True))
    run = entry(redis)["run"]
    assert (entry(redis)["name"], run["pod"], run["boot"], entry(redis)["deaths"]) == ("t.crash", w.pod, w.boot, [])
    w.on_postrun(task_id=TASK, task=SimpleNamespace(name="t.crash", acks_late=True))
    assert redis.get(poison.LEDGER_PREFIX + TASK) is None


def test_a_task_back_from_a_run_that_died_counts_a_death_and_keeps_the_earlier_ones(
        runtime: ModuleType, tmp_path: Path) -> None:
    redis = FakeRedis()
    earlier = {"name": "t.crash", "run": {"pod": "w-1", "boot": "gone", "pid": 7, "at": 1.0},
               "deaths": [{"pod": "w-0", "how": "worker container lost", "at": 0.5}]}
    redis.set(poison.LEDGER_PREFIX + TASK, json.dumps(earlier), ex=poison.LEDGER_TTL_SECONDS)
    worker(runtime, tmp_path, redis).on_received(request=redelivery())
    assert [(d["pod"], d["how"]) for d in entry(redis)["deaths"]] == [
        ("w-0", "worker container lost"), ("w-1", "worker container lost")]
    assert entry(redis)["run"] is None


def test_a_child_of_this_worker_that_died_records_how(runtime: ModuleType, tmp_path: Path) -> None:
    redis = FakeRedis()
    w = worker(runtime, tmp_path, redis)
    w.on_prerun(task_id=TASK, task=SimpleNamespace(name="t.crash", acks_late=True))
    w.child_died(TASK, "exitcode 1")
    assert [d["how"] for d in entry(redis)["deaths"]] == ["exitcode 1"]


def test_without_a_redis_the_ledger_is_neither_read_nor_written(runtime: ModuleType, tmp_path: Path) -> None:
    w = worker(runtime, tmp_path, None)
    w.on_prerun(task_id=TASK, task=SimpleNamespace(name="t.crash", acks_late=True))
    w.on_received(request=redelivery())
    w.child_died(TASK, "exitcode 1")
    assert w.redis() is None
