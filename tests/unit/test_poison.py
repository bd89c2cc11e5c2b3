"""Poison tasks: the termination message format, the ledger's rules, and the names the worker runtime
shares with the operator (celery_operator.poison, shipped to pods as celery_operator_poison_rules)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from celery_operator import api, poison, quarantine
from celery_operator.config import module_sources
from tests.unit.test_runtime import constants

PACKAGE = Path(poison.__file__).parent


def ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i)) for i in range(n)]


# -- termination message -------------------------------------------------------------------------------

def test_the_termination_message_lists_the_tasks_in_flight_by_name() -> None:
    a, b, c = ids(3)
    text = poison.termination_message("boot1", [(a, "t.add"), (b, "t.hog"), (c, "t.add")])
    parsed = poison.parse_termination_message(text)
    assert parsed == poison.InFlight("boot1", {a: "t.add", b: "t.hog", c: "t.add"}, 3)


@pytest.mark.parametrize("n", [0, 1, 50, 100, 1000])
def test_the_termination_message_never_exceeds_4_kib_and_counts_what_did_not_fit(n: int) -> None:
    tasks = [(i, f"proj.tasks.task_number_{k % 7}") for k, i in enumerate(ids(n))]
    text = poison.termination_message("0123456789abcdef", tasks)
    assert len(text.encode()) <= poison.TERMINATION_MESSAGE_LIMIT
    parsed = poison.parse_termination_message(text)
    assert parsed is not None and parsed.total == n
    assert set(parsed.tasks) <= {i for i, _ in tasks}
    if n <= 50:
        assert len(parsed.tasks) == n  # a full prefork worker's worth fits whole
    else:
        assert len(parsed.tasks) >= 80  # ids are packed up to the limit, not cut at a round number


def test_an_empty_termination_message_means_nothing_was_in_flight() -> None:
    assert poison.parse_termination_message("") is None
    assert poison.parse_termination_message(None) is None


@pytest.mark.parametrize("text", [
    "panic: runtime error: index out of range",  # a user's image writing its own
    '{"celery-operator": 2, "tasks": {}}',  # a version this operator does not know
    '{"celery-operator": 1, "tasks": {"t": "not-a-list"}}',
    '{"celery-operator": 1, "tasks": [], "n": 1}',
    '{"celery-operator": 1, "tasks": {}, "n": "3"}',
    "[1, 2]",
    '{"celery-operator": 1, "tasks": {"t": [1]}}',
])
def test_a_termination_message_that_is_not_ours_is_unparseable_not_a_crash(text: str) -> None:
    with pytest.raises(poison.Unparseable):
        poison.parse_termination_message(text)


# -- ledger --------------------------------------------------------------------------------------------

def entry(boot: str = "b1", pid: int = 10, deaths: int = 0) -> dict[str, object]:
    e = poison.started(None, "t.hog", "pod-a", boot, pid, 1.0)
    e["deaths"] = [{"pod": "pod-x", "how": "exitcode 1", "at": 0.5}] * deaths
    return e


def decide(e: dict[str, object] | None, **kw: object) -> poison.Verdict:
    args: dict[str, object] = {"boot": "b2", "pid_alive": False, "shut_down": False, "how": None,
                               "max_deaths": 2, "at": 2.0, **kw}
    return poison.delivered(e, **args)  # type: ignore[arg-type]


def test_a_task_with_no_ledger_entry_runs() -> None:
    assert decide(None) == poison.Verdict(None, False, False)


def test_a_run_whose_container_is_gone_is_a_death_named_after_its_pod() -> None:
    v = decide(entry())
    assert v.died and not v.quarantine
    assert v.entry == {"name": "t.hog", "run": None,
                       "deaths": [{"pod": "pod-a", "how": "worker container lost", "at": 2.0}]}


def test_at_max_worker_deaths_the_task_goes_to_quarantine() -> None:
    v = decide(entry(deaths=1))
    assert v.died and v.quarantine and len(v.entry["deaths"]) == 2  # type: ignore[index]
    assert decide(entry(deaths=0), max_deaths=1).quarantine


def test_a_graceful_shutdown_gives_tasks_back_without_a_death() -> None:
    v = decide(entry(deaths=1), shut_down=True)
    assert not v.died and not v.quarantine and v.entry is not None and len(v.entry["deaths"]) == 1


def test_a_dead_child_of_this_worker_is_a_death_with_how_it_died() -> None:
    v = decide(entry(boot="b2", pid=10), how="exitcode 1", pid_alive=False)
    assert v.died and v.entry is not None
    assert v.entry["deaths"][-1]["how"] == "exitcode 1" and v.entry["deaths"][-1]["pod"] == "pod-a"
    v = decide(entry(boot="b2", pid=10), pid_alive=False)
    assert v.entry is not None and v.entry["deaths"][-1]["how"] == "child process lost"


def test_a_second_delivery_while_the_run_is_alive_here_is_no_death() -> None:
    e = entry(boot="b2", pid=10)
    assert decide(e, pid_alive=True) == poison.Verdict(e, False, False)


def test_a_run_that_ended_leaves_no_entry_and_its_redelivery_runs() -> None:
    # The process running a task deletes its entry when the task ends; an entry without a run (after a
    # graceful shutdown) counts nothing new and runs the task unless it is already at the limit.
    e = {"name": "t", "run": None, "deaths": [{"pod": "p", "how": "x", "at": 0}]}
    assert decide(e) == poison.Verdict({"name": "t", "run": None, "deaths": e["deaths"]}, False, False)


@pytest.mark.parametrize("raw", [None, b"not json", b"[1]", b'{"deaths": 3}', b'{"run": 5}', b"\xff\xfe",
                                 b"{" + b" " * (poison.MAX_RECORD_BYTES + 1) + b"}"])
def test_a_ledger_record_that_is_not_ours_is_ignored(raw: bytes | None) -> None:
    assert poison.load_entry(raw) is None


def test_a_ledger_record_round_trips() -> None:
    e = entry(deaths=1)
    assert poison.load_entry(json.dumps(e).encode()) == e


# -- the runtime shares these names --------------------------------------------------------------------

def test_the_poison_rules_ship_verbatim_so_the_workers_and_the_operator_read_the_same_records() -> None:
    runtime = PACKAGE / "runtime" / api.POISON_RULES_FILE
    assert runtime.resolve() == Path(poison.__file__).resolve()
    assert module_sources()[api.POISON_RULES_FILE] == Path(poison.__file__).read_text(encoding="utf-8")


def test_the_names_the_poison_runtime_shares_with_the_operator_agree() -> None:
    found = constants(api.POISON_FILE)
    assert {k: found.get(k) for k in ("ENV_MAX_WORKER_DEATHS", "ENV_TERMINATION_LOG", "ENV_INFLIGHT_DIR",
                                      "DEFAULT_TERMINATION_LOG", "DEFAULT_INFLIGHT_DIR")} == {
        "ENV_MAX_WORKER_DEATHS": api.ENV_MAX_WORKER_DEATHS, "ENV_TERMINATION_LOG": api.ENV_TERMINATION_LOG,
        "ENV_INFLIGHT_DIR": api.ENV_INFLIGHT_DIR, "DEFAULT_TERMINATION_LOG": api.TERMINATION_LOG,
        "DEFAULT_INFLIGHT_DIR": api.INFLIGHT_DIR}


# -- the operator's report (celery_operator.quarantine) ------------------------------------------------

def pod(name: str, terminated: dict[str, object] | None, restarts: int = 1) -> dict[str, object]:
    status = {"name": "worker", "restartCount": restarts, "lastState": {"terminated": terminated} if terminated else {}}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [status]}}


def test_worker_deaths_say_how_each_container_died_and_what_it_ran() -> None:
    a, b = ids(2)
    msg = poison.termination_message("boot", [(a, "t.hog")])
    msg2 = poison.termination_message("x", [(b, "t.crash")])
    pods = [pod("w-1", {"reason": "OOMKilled", "exitCode": 137, "message": msg}),
            pod("w-2", {"reason": "Error", "exitCode": 1, "message": msg2}),
            pod("w-3", {"reason": "Error", "exitCode": 139}),
            pod("w-4", {"reason": "Completed", "exitCode": 0}),  # exited on its own: no death
            pod("w-5", {"reason": "Error", "exitCode": 143})]  # SIGTERM (a rollout): no death
    found = {d.pod: d for d in quarantine.deaths(pods)}
    assert set(found) == {"w-1", "w-2", "w-3"}
    assert found["w-1"].how == "OOMKilled" and found["w-1"].tasks == {a: "t.hog"}
    assert found["w-2"].how == "exit code 1" and found["w-2"].tasks == {b: "t.crash"}
    assert found["w-3"].how == "signal 11"
    assert quarantine.deaths_by_reason(pods) == {"OOMKilled": 1, "Error": 2}
    assert quarantine.restarts(pods) == 5


def test_a_termination_message_a_users_image_wrote_is_ignored_with_a_warning() -> None:
    warned: list[str] = []
    pods = [pod("w-1", {"reason": "Error", "exitCode": 2, "message": "Traceback (most recent call last): ..."})]
    [death] = quarantine.deaths(pods, warn=lambda fmt, *a: warned.append(fmt % a))
    assert death.tasks == {} and death.how == "exit code 2"
    assert len(warned) == 1 and "w-1" in warned[0]


def record(task_id: str, name: str = "t.hog", queue: str = "work", at: float = 1.0) -> dict[str, object]:
    e = poison.started(None, name, "w-1", "b", 1, 0.0)
    e["deaths"] = [{"pod": "w-1", "how": "worker container lost", "at": 0.5},
                   {"pod": "w-2", "how": "exitcode 1", "at": 0.7}]
    return poison.quarantine_record(e, task_id, queue, poison.quarantine_queue(queue), at)


def test_the_pool_reports_its_quarantined_tasks_once_each_with_the_pods_they_killed() -> None:
    a, b, c = ids(3)
    records = quarantine.records({a: json.dumps(record(a, at=1.0)), b: json.dumps(record(b, "t.crash", at=2.0)),
                                  c: json.dumps(record(c, queue="other")), "junk": b"not json"},
                                 warn=lambda *_: None)
    assert [r["id"] for r in records] == [b, a, c]  # newest first; the junk left out
    pods = [pod("w-1", {"reason": "OOMKilled", "exitCode": 137})]
    report = quarantine.pool_report(["work"], records, pods, reported=[a], max_deaths=2)
    assert report.fields == {"recentWorkerDeaths": 1, "quarantinedTasks": 2, "quarantinedTaskIds": [b, a]}
    assert report.condition.status and report.condition.reason == api.Reason.TASKS_QUARANTINED
    assert "t.crash" in report.condition.message and "t.hog" in report.condition.message
    [event] = report.events  # `a` was reported before
    assert event[0] == "Warning" and b in event[2] and "w-1 (OOMKilled)" in event[2] and "w-2 (exitcode 1)" in event[2]
    assert quarantine.by_task(records) == {"t.hog": 2, "t.crash": 1}
    listed = quarantine.app_list(records)
    assert listed[0] == {"id": b, "name": "t.crash", "queue": "work", "quarantineQueue": "work.quarantine",
                         "deaths": 2, "pods": ["w-1", "w-2"]}


def test_a_pool_with_nothing_in_quarantine_says_so() -> None:
    report = quarantine.pool_report(["work"], [], [], reported=[], max_deaths=2)
    assert not report.condition.status and report.events == ()
    assert report.fields["quarantinedTasks"] == 0


@pytest.mark.parametrize(("value", "picks", "skips"), [
    ("all", [{"name": "a", "id": "1"}], []),
    ("task=t.hog,t.crash", [{"name": "t.hog", "id": "1"}], [{"name": "t.add", "id": "2"}]),
    ("id=1", [{"name": "x", "id": "1"}], [{"name": "x", "id": "2"}]),
])
def test_a_replay_takes_all_some_task_names_or_some_ids(value: str, picks: list[dict[str, str]],
                                                       skips: list[dict[str, str]]) -> None:
    sel = quarantine.parse_selector(value)
    assert all(sel(r) for r in picks) and not any(sel(r) for r in skips)


@pytest.mark.parametrize("value", ["task=", "name=x", "ids"])
def test_an_unreadable_replay_annotation_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="expected all"):
        quarantine.parse_selector(value)


def test_the_operator_and_the_workers_name_quarantine_queues_alike() -> None:
    assert poison.QUARANTINE_SUFFIX == api.QUARANTINE_SUFFIX
    assert poison.quarantine_queue("work") == "work" + api.QUARANTINE_SUFFIX
