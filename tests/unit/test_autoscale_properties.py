"""Property tests of the autoscaling policy (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from celery_operator.autoscale import History, Recommendation, decide, measured_depth
from celery_operator.models import Autoscaling
from celery_operator.waits import Wait

NOW = 10_000.0


@st.composite
def policies(draw: st.DrawFn, wait_target: bool | None = False) -> Autoscaling:
    """Depth-only policies by default; `wait_target=None` draws any combination of the two targets,
    `True` always has a wait target."""
    low = draw(st.integers(0, 5))
    high = draw(st.integers(max(low, 1), max(low, 1) + 12))
    kind = "depth" if wait_target is False else draw(
        st.sampled_from(["wait", "both"] if wait_target else ["depth", "wait", "both"]))
    depth_target = None if kind == "wait" else draw(st.integers(1, 50))
    wait_target_seconds = None if kind == "depth" else draw(st.integers(1, 600))
    return Autoscaling(
        min_replicas=low,
        max_replicas=high,
        target_messages_per_replica=depth_target,
        activation_messages=draw(st.integers(0, 60)),
        poll_interval_seconds=10,
        scale_up_stabilization_seconds=draw(st.sampled_from([0, 0, 15, 60, 120])),
        scale_down_stabilization_seconds=draw(st.sampled_from([0, 30, 300, 600])),
        count_in_flight=draw(st.booleans()),
        target_wait_seconds=wait_target_seconds,
        scale_down_drain_seconds=60,
    )


@dataclass(frozen=True)
class State:
    policy: Autoscaling
    current: int
    history: History | None


@st.composite
def states(draw: st.DrawFn) -> State:
    p = draw(policies())
    pairs = draw(st.lists(
        st.tuples(st.floats(0, 700), st.integers(p.min_replicas, p.max_replicas)), max_size=8))
    history = draw(st.one_of(st.none(), st.just(History.of_pairs([(NOW - age, n) for age, n in pairs]))))
    return State(p, draw(st.integers(0, p.max_replicas + 5)), history)


ready_counts = st.integers(0, 2_000)
in_flight_counts = st.one_of(st.none(), st.integers(0, 500))


@given(states(), ready_counts, in_flight_counts)
def test_known_depth_never_leaves_min_max(s: State, ready: int, in_flight: int | None) -> None:
    d = decide(s.policy, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    assert s.policy.min_replicas <= d.desired <= s.policy.max_replicas


@given(states(), in_flight_counts)
def test_missing_depth_holds_current_raised_to_min_and_nothing_else(s: State, in_flight: int | None) -> None:
    d = decide(s.policy, ready=None, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    assert d.desired == max(s.current, s.policy.min_replicas)
    # The held count is remembered as this poll's recommendation, and nothing a window still reaches is lost.
    keep = max(s.policy.scale_up_stabilization_seconds, s.policy.scale_down_stabilization_seconds)
    assert d.history is not None
    if keep > 0:
        assert d.history.entries[-1] == Recommendation(NOW, d.desired)
    before = s.history.entries if s.history is not None else ()
    assert {r for r in before if 0 <= NOW - r.at < keep} <= set(d.history.entries)
    assert "broker unreachable" in d.reason
    # The only way out of [min, max]: a current count above max is held, never scaled down.
    outside = not s.policy.min_replicas <= d.desired <= s.policy.max_replicas
    assert outside == (s.current > s.policy.max_replicas)


@given(states(), ready_counts, ready_counts, in_flight_counts)
def test_more_ready_messages_never_give_fewer_replicas(
    s: State, a: int, b: int, in_flight: int | None
) -> None:
    low, high = sorted((a, b))
    d_low = decide(s.policy, ready=low, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    d_high = decide(s.policy, ready=high, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    assert d_low.desired <= d_high.desired


@given(states(), ready_counts, in_flight_counts, in_flight_counts)
def test_more_in_flight_messages_never_give_fewer_replicas(
    s: State, ready: int, a: int | None, b: int | None
) -> None:
    low, high = sorted((a or 0, b or 0))
    d_low = decide(s.policy, ready=ready, in_flight=low, current=s.current, now=NOW, history=s.history)
    d_high = decide(s.policy, ready=ready, in_flight=high, current=s.current, now=NOW, history=s.history)
    unknown = decide(s.policy, ready=ready, in_flight=None, current=s.current, now=NOW, history=s.history)
    assert unknown.desired <= d_low.desired <= d_high.desired


@given(states(), ready_counts, in_flight_counts)
def test_never_scales_down_below_a_recommendation_inside_the_down_window(
    s: State, ready: int, in_flight: int | None
) -> None:
    d = decide(s.policy, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    window = s.policy.scale_down_stabilization_seconds
    # A first decision (history None) counts the current replica count as recommended just now.
    seed = min(max(s.current, s.policy.min_replicas), s.policy.max_replicas)
    seeded = s.history if s.history is not None else History.of_pairs([(NOW, seed)])
    recent = seeded.within(NOW, window)
    for n in recent:
        assert d.desired >= min(s.current, n)


@given(states(), ready_counts, in_flight_counts)
def test_moves_only_toward_the_raw_recommendation(s: State, ready: int, in_flight: int | None) -> None:
    d = decide(s.policy, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history)
    assert d.raw is not None
    if d.direction == "up":
        assert d.desired <= d.raw
    if d.direction == "down":
        assert d.desired >= d.raw


@given(states(), ready_counts, in_flight_counts)
def test_scales_from_zero_only_above_activation(s: State, ready: int, in_flight: int | None) -> None:
    p = s.policy
    d = decide(p, ready=ready, in_flight=in_flight, current=0, now=NOW, history=s.history)
    depth = measured_depth(p, ready, in_flight)
    if p.min_replicas == 0 and depth <= p.activation_messages:
        assert d.desired == 0
    if p.min_replicas == 0 and depth > p.activation_messages and p.scale_up_stabilization_seconds == 0:
        assert d.desired >= 1


@given(
    policies(),
    st.lists(st.tuples(st.floats(0.5, 120), ready_counts, in_flight_counts), min_size=1, max_size=30),
)
def test_simulated_pool_does_not_flap_inside_the_down_window(
    p: Autoscaling, steps: list[tuple[float, int, int | None]]
) -> None:
    """Feed each decision back as the next current count: within scaleDownStabilizationSeconds of a
    recommendation N, the pool is never scaled down below N, and never leaves [min, max]."""
    now, current, history = 0.0, p.min_replicas, None
    recommended: list[tuple[float, int]] = []
    for dt, ready, in_flight in steps:
        now += dt
        d = decide(p, ready=ready, in_flight=in_flight, current=current, now=now, history=history)
        assert p.min_replicas <= d.desired <= p.max_replicas
        if d.direction == "down":
            for at, n in recommended:
                if now - at < p.scale_down_stabilization_seconds:
                    assert d.desired >= n, (at, n, now, d)
        assert d.raw is not None
        recommended.append((now, d.raw))
        current, history = d.desired, d.history


# -- with targetWaitSeconds ------------------------------------------------------------------------------

waits_ = st.one_of(st.none(), st.builds(Wait, st.floats(0, 5_000), st.sampled_from(["timestamp", "drain_rate"])))
workers_ = st.one_of(st.none(), st.integers(0, 20))


@st.composite
def wait_states(draw: st.DrawFn) -> State:
    p = draw(policies(wait_target=True))
    return State(p, draw(st.integers(0, p.max_replicas + 5)), draw(st.none()))


@given(wait_states(), ready_counts, in_flight_counts, waits_, workers_)
def test_with_a_wait_target_known_depth_never_leaves_min_max(
        s: State, ready: int, in_flight: int | None, wait: Wait | None, workers: int | None) -> None:
    d = decide(s.policy, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history,
               wait=wait, workers=workers)
    assert s.policy.min_replicas <= d.desired <= s.policy.max_replicas


@given(wait_states(), ready_counts, in_flight_counts, st.floats(0, 5_000), st.floats(0, 5_000), workers_)
def test_a_longer_wait_never_gives_fewer_replicas(
        s: State, ready: int, in_flight: int | None, a: float, b: float, workers: int | None) -> None:
    low, high = sorted((a, b))
    kw = {"ready": ready, "in_flight": in_flight, "current": s.current, "now": NOW, "history": s.history,
          "workers": workers}
    assert decide(s.policy, wait=Wait(low, "timestamp"), **kw).raw <= decide(  # type: ignore[operator]
        s.policy, wait=Wait(high, "timestamp"), **kw).raw


@given(wait_states(), ready_counts, in_flight_counts, workers_)
def test_an_unknown_wait_never_recommends_fewer_than_now_unless_the_pool_idles(
        s: State, ready: int, in_flight: int | None, workers: int | None) -> None:
    p = s.policy
    d = decide(p, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history, wait=None,
               workers=workers)
    idle = p.min_replicas == 0 and measured_depth(p, ready, in_flight) <= p.activation_messages
    assert d.raw is not None
    if not idle:
        assert d.raw >= min(max(s.current, p.min_replicas, 1), p.max_replicas)


@given(wait_states(), ready_counts, in_flight_counts, st.floats(0, 5_000), workers_)
def test_while_tasks_wait_longer_than_the_target_the_pool_never_shrinks(
        s: State, ready: int, in_flight: int | None, seconds: float, workers: int | None) -> None:
    p = s.policy
    assert p.target_wait_seconds is not None
    d = decide(p, ready=ready, in_flight=in_flight, current=s.current, now=NOW, history=s.history,
               wait=Wait(seconds, "timestamp"), workers=workers)
    idle = p.min_replicas == 0 and measured_depth(p, ready, in_flight) <= p.activation_messages
    if seconds > p.target_wait_seconds and not idle and s.current <= p.max_replicas:
        assert d.direction != "down"


@given(policies(wait_target=None),
       st.lists(st.tuples(st.floats(0.5, 120), ready_counts, in_flight_counts, waits_, workers_), min_size=1,
                max_size=30))
def test_simulated_pool_on_any_targets_does_not_flap_inside_the_down_window(
    p: Autoscaling,
    steps: list[tuple[float, int, int | None, Wait | None, int | None]],
) -> None:
    now, current, history = 0.0, p.min_replicas, None
    recommended: list[tuple[float, int]] = []
    for dt, ready, in_flight, wait, workers in steps:
        now += dt
        d = decide(p, ready=ready, in_flight=in_flight, current=current, now=now, history=history, wait=wait,
                   workers=workers)
        assert p.min_replicas <= d.desired <= p.max_replicas
        if d.direction == "down":
            for at, n in recommended:
                if now - at < p.scale_down_stabilization_seconds:
                    assert d.desired >= n, (at, n, now, d)
        assert d.raw is not None
        recommended.append((now, d.raw))
        current, history = d.desired, d.history
