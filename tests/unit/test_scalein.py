"""The scale-in's choice of pods and their deletion costs (pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from celery_operator import api, scalein
from celery_operator.scalein import VICTIM_COST, Load, Worker, plan


def pod(name: str, *, ready: bool = True, cost: int | None = None, hostname: str | None = None,
        deleting: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "annotations": {}}
    if cost is not None:
        md["annotations"][api.ANNOTATION_POD_DELETION_COST] = str(cost)
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = {"hostname": hostname} if hostname else {}
    return {"metadata": md, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def busy(*ids: str, reserved: tuple[str, ...] = ()) -> Load:
    return Load(active=ids, reserved=reserved)


IDLE = Load()


def worker(name: str, load: Load | None, *, ready: bool = True, cost: int | None = None,
           solo: bool = False) -> Worker:
    return Worker(pod=name, node=f"p@{name}", ready=ready, load=load, cost=cost, silent_busy=solo)


def test_the_idle_pods_go_and_only_their_costs_and_the_busy_ones_are_written() -> None:
    ws = [worker("a", busy("t1")), worker("b", IDLE), worker("c", busy("t2")), worker("d", IDLE)]
    p = plan(ws, 2)
    assert [w.pod for w in p.victims] == ["b", "d"]
    assert p.costs == {"b": VICTIM_COST, "d": VICTIM_COST, "a": 1000, "c": 1000}
    assert p.busy_victims == () and p.interrupted_if_removed_now == 0
    assert p.describe() == "removing b (idle), d (idle)"


def test_not_ready_pods_then_silent_ones_go_before_idle_workers() -> None:
    ws = [worker("idle", IDLE), worker("silent", None), worker("starting", None, ready=False),
          worker("busy", busy("t"))]
    assert [w.pod for w in plan(ws, 4).order] == ["starting", "silent", "idle", "busy"]


def test_with_no_idle_worker_the_least_busy_go_and_must_be_drained() -> None:
    ws = [worker("a", busy("t1", "t2")), worker("b", busy("t3", reserved=("r1",))), worker("c", busy("t4"))]
    p = plan(ws, 2)
    assert [w.pod for w in p.victims] == ["c", "b"]
    assert [w.pod for w in p.busy_victims] == ["c", "b"]
    assert p.interrupted_if_removed_now == 2
    assert p.costs == {"c": VICTIM_COST, "b": VICTIM_COST, "a": 2000}
    assert "b (1 running, 1 reserved)" in p.describe()


def test_reserved_messages_weigh_less_than_a_running_task() -> None:
    ws = [worker("runs", busy("t")), worker("holds", busy(reserved=("r1", "r2", "r3")))]
    assert [w.pod for w in plan(ws, 1).victims] == ["holds"]


def test_a_silent_solo_worker_counts_as_running_a_task() -> None:
    ws = [worker("solo-busy", None, solo=True), worker("solo-idle", IDLE, solo=True)]
    p = plan(ws, 1)
    assert [w.pod for w in p.victims] == ["solo-idle"]
    assert p.costs == {"solo-idle": VICTIM_COST, "solo-busy": 1000}


def test_costs_already_in_place_are_not_written_again_and_stale_ones_are_cleared() -> None:
    ws = [worker("a", IDLE, cost=VICTIM_COST), worker("b", IDLE, cost=VICTIM_COST), worker("c", busy("t"), cost=1000)]
    p = plan(ws, 1)
    assert [w.pod for w in p.victims] == ["a"]
    assert p.costs == {"b": None}  # a survivor that is idle needs no annotation


def test_when_no_worker_answers_the_replicaset_chooses_and_old_costs_are_removed() -> None:
    ws = [worker("a", None, cost=VICTIM_COST), worker("b", None), worker("c", None, cost=1000)]
    p = plan(ws, 1)
    assert p.blind
    assert p.costs == {"a": None, "c": None}
    assert "the ReplicaSet picks" in p.describe()


def test_removing_nothing_or_more_than_exist() -> None:
    ws = [worker("a", IDLE), worker("b", busy("t"))]
    assert plan(ws, 0).victims == ()
    assert [w.pod for w in plan(ws, 5).victims] == ["a", "b"]


def test_workers_of_pods_map_node_names_and_skip_pods_being_deleted() -> None:
    long_name = "proj-" + "x" * 60 + "-7d9f8b6c5d-abcde"
    pods = [pod("p1", cost=5), pod("p2", ready=False), pod("gone", deleting=True), pod("named", hostname="host-1"),
            pod(long_name)]
    host = long_name[:63].rstrip("-.")
    loads = {"pool@p1": busy("t"), "pool@host-1": IDLE, f"pool@{host}": IDLE}
    ws = {w.pod: w for w in scalein.workers(pods, "pool", loads)}
    assert set(ws) == {"p1", "p2", "named", long_name}
    assert ws["p1"].load == busy("t") and ws["p1"].cost == 5 and ws["p1"].ready
    assert ws["p2"].load is None and not ws["p2"].ready
    assert ws["named"].node == "pool@host-1" and ws["named"].load == IDLE
    assert ws[long_name].node == f"pool@{host}" and len(host) <= 63
    assert scalein.nodes(pods, "pool") == {w.node: w.pod for w in ws.values()}


def test_drained_once_every_victim_holds_nothing() -> None:
    victims = [worker("a", busy("t")), worker("b", busy(reserved=("r",)))]
    assert not scalein.drained({"p@a": IDLE, "p@b": busy(reserved=("r",))}, victims)
    assert scalein.drained({"p@a": IDLE, "p@b": IDLE}, victims)
    assert scalein.drained({"p@a": IDLE}, victims)  # b stopped answering: nothing left to wait for


def test_victims_whose_scale_in_was_called_off_get_their_work_back_as_cost() -> None:
    ws = [worker("a", busy("t1"), cost=VICTIM_COST), worker("b", busy(reserved=("r",)), cost=VICTIM_COST),
          worker("c", None, cost=VICTIM_COST)]
    assert scalein.kept_costs(ws) == {"a": scalein.ACTIVE_WEIGHT, "b": 1, "c": None}


loads = st.one_of(st.none(), st.builds(lambda a, r: Load(tuple(f"t{i}" for i in range(a)),
                                                         tuple(f"r{i}" for i in range(r))),
                                       st.integers(0, 3), st.integers(0, 3)))


@st.composite
def pools(draw: st.DrawFn) -> list[Worker]:
    n = draw(st.integers(1, 8))
    return [worker(f"w{i}", draw(loads), ready=draw(st.booleans()),
                   cost=draw(st.one_of(st.none(), st.integers(-5, 3000)))) for i in range(n)]


@given(pools(), st.integers(0, 10))
def test_the_replicaset_sees_the_victims_strictly_cheapest(ws: list[Worker], remove: int) -> None:
    """After the costs are written, every victim costs less than every survivor of equal readiness,
    and a survivor never holds less work than a victim of its readiness that answered."""
    p = plan(ws, remove)
    if p.blind:
        return
    after = {w.pod: p.costs.get(w.pod, w.cost) for w in ws}
    victims = {w.pod for w in p.victims}
    assert len(victims) == min(remove, len(ws))
    for v in p.victims:
        for s in ws:
            if s.pod in victims or s.ready != v.ready:
                continue
            assert (after[v.pod] or 0) < (after[s.pod] or 0)
            if not v.silent and not s.silent:
                assert (v.running, v.reserved) <= (s.running, s.reserved)
