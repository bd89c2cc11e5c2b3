"""The schedule module beat and the operator share: slots, the catch-up rule, the state beat keeps.

Cron slots are checked against Celery's own reading of the fields (minute by minute, in the time
zone); the catch-up rule against its contract: over any sequence of plans, every slot is sent once or
skipped once (and counted), never both, never twice.
"""

from __future__ import annotations

import datetime
import time
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_operator import cron
from celery_operator.schedule import (
    DEADLINE_EXCEEDED,
    MAX_SKIPS,
    SUPERSEDED,
    US,
    EntryState,
    Every,
    Plan,
    Schedule,
    State,
    claim,
    from_rfc3339,
    plan,
    schedule_of,
    take_over,
    to_rfc3339,
    unclaim,
)
from tests.strategies import cron_expressions

T0 = from_rfc3339("2026-03-01T00:00:00Z")
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


def at(text: str) -> int:
    return from_rfc3339(text)


def cron_schedule(expr: str, zone: str = "UTC") -> Schedule:
    fields = cron.parse_cron(expr)
    assert fields is not None
    return schedule_of({"cron": {"minute": fields.minute, "hour": fields.hour, "day_of_month": fields.day_of_month,
                                 "month_of_year": fields.month_of_year, "day_of_week": fields.day_of_week}}, zone)


def every(seconds: float) -> Schedule:
    return schedule_of({"every_seconds": seconds})


# -- instants ---------------------------------------------------------------------------------------

def test_instants_print_as_rfc3339_utc_and_read_back_in_every_form_kubernetes_writes() -> None:
    assert to_rfc3339(at("2026-01-02T03:04:05Z")) == "2026-01-02T03:04:05Z"
    assert to_rfc3339(at("2026-01-02T03:04:05.25Z")) == "2026-01-02T03:04:05.250000Z"
    assert at("2026-01-02T04:04:05+01:00") == at("2026-01-02T03:04:05Z")
    assert at("2026-01-02T03:04:05.123456789Z") == at("2026-01-02T03:04:05.123456Z")
    for bad in ("", "2026-01-02", "2026-01-02T03:04:05", "2026-01-02T03:04:05.x1Z", "yesterday at noon"):
        with pytest.raises(ValueError, match="not an RFC 3339 time"):
            from_rfc3339(bad)


# -- slots ------------------------------------------------------------------------------------------

def test_every_n_seconds_falls_on_multiples_of_n_since_the_epoch_wherever_beat_started() -> None:
    s = every(10)
    assert to_rfc3339(s.first_after(at("2026-01-01T00:00:05Z")) or 0) == "2026-01-01T00:00:10Z"
    assert s.first_after(at("2026-01-01T00:00:10Z")) == at("2026-01-01T00:00:20Z")
    assert s.last_at_or_before(at("2026-01-01T00:00:10Z")) == at("2026-01-01T00:00:10Z")
    assert s.count(at("2026-01-01T00:00:05Z"), at("2026-01-01T00:01:05Z")) == 6
    assert every(0.5).slots(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:02Z"), 10) == [
        at("2026-01-01T00:00:00.5Z"), at("2026-01-01T00:00:01Z"), at("2026-01-01T00:00:01.5Z"),
        at("2026-01-01T00:00:02Z")]


def celery_slots(expr: str, zone: str, after: int, until: int) -> list[int]:
    """Minute by minute, the local times Celery's crontab of `expr` matches (a local time repeated by a
    DST change counts once, the first time; one it skips never comes up)."""
    minute, hour, dom, month, dow = cron.MACROS.get(expr, expr).split()
    c = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    tz = ZoneInfo(zone)
    out, seen = [], set()
    t = (after // (60 * US) + 1) * 60 * US
    while t <= until:
        local = datetime.datetime.fromtimestamp(t / US, tz)
        naive = local.replace(tzinfo=None)
        if (naive not in seen and local.minute in c.minute and local.hour in c.hour and local.day in c.day_of_month
                and local.month in c.month_of_year and local.isoweekday() % 7 in c.day_of_week):
            out.append(t)
        seen.add(naive)
        t += 60 * US
    return out


@settings(max_examples=60, deadline=None)
@given(cron_expressions(), st.sampled_from(ZONES), st.integers(0, 400 * 24 * 60))
def test_cron_slots_are_the_minutes_celerys_crontab_matches_in_the_time_zone(expr: str, zone: str,
                                                                           minutes: int) -> None:
    if cron.parse_cron(expr) is None:
        return
    s = cron_schedule(expr, zone)
    after = T0 + minutes * 60 * US - 17 * US
    until = after + 2 * 86400 * US
    expected = celery_slots(expr, zone, after, until)
    assert s.slots(after, until, 10_000) == expected
    assert s.count(after, until) == len(expected)
    if expected:
        assert s.first_after(after) == expected[0]
        assert s.last_at_or_before(until) == expected[-1]


def test_a_cron_time_a_dst_change_skips_does_not_run_and_one_it_repeats_runs_once() -> None:
    s = cron_schedule("30 * * * *", "America/New_York")
    spring = s.slots(at("2026-03-08T05:00:00Z"), at("2026-03-08T09:00:00Z"), 10)  # 00:00..05:00 EST->EDT
    assert [to_rfc3339(t) for t in spring] == ["2026-03-08T05:30:00Z", "2026-03-08T06:30:00Z",
                                               "2026-03-08T07:30:00Z", "2026-03-08T08:30:00Z"]  # no 02:30
    fall = s.slots(at("2026-11-01T04:00:00Z"), at("2026-11-01T08:00:00Z"), 10)  # 00:00..03:00 EDT->EST
    assert [to_rfc3339(t) for t in fall] == ["2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z",
                                             "2026-11-01T07:30:00Z"]  # 01:30 once, 02:30 EST


def test_a_cron_that_never_matches_has_no_slot() -> None:
    s = schedule_of({"cron": {"minute": "0", "hour": "0", "day_of_month": "31", "month_of_year": "2",
                              "day_of_week": "*"}})
    assert s.first_after(T0) is None and s.last_at_or_before(T0) is None


def test_counting_a_year_of_missed_runs_is_instant() -> None:
    started = time.monotonic()
    assert every(1).count(T0, T0 + 366 * 86400 * US) == 366 * 86400
    assert cron_schedule("* * * * *", "America/New_York").count(T0, T0 + 366 * 86400 * US) == 366 * 1440 - 60
    assert time.monotonic() - started < 5


# -- the catch-up rule ------------------------------------------------------------------------------

def fresh(s: Schedule, since: str) -> EntryState:
    return EntryState(s.spec, at(since))


def test_nothing_is_due_before_the_next_slot() -> None:
    s = every(10)
    p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2026-01-01T00:00:09.9Z"), None)
    assert p == Plan((), None, at("2026-01-01T00:00:00Z")) and p.empty


def test_a_slot_beat_wakes_up_for_runs_and_nothing_is_skipped() -> None:
    s = every(10)
    for deadline in (None, 5):
        p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2026-01-01T00:00:10.003Z"), deadline)
        assert p.runs == (at("2026-01-01T00:00:10Z"),) and p.skip is None


def test_without_a_deadline_only_the_most_recent_missed_run_runs_and_older_ones_are_skipped() -> None:
    s = every(10)
    p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2026-01-01T00:01:05Z"), None)
    assert p.runs == (at("2026-01-01T00:01:00Z"),)
    assert p.skip is not None
    assert (p.skip.first, p.skip.last, p.skip.count, p.skip.reason) == (
        at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:50Z"), 5, SUPERSEDED)
    assert p.decided_through == at("2026-01-01T00:01:00Z")


def test_with_a_deadline_every_run_missed_by_at_most_the_deadline_runs_oldest_first() -> None:
    s = every(10)
    p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2026-01-01T00:01:05Z"), 30)
    # 00:00:35 is the cutoff: 00:00:40 .. 00:01:00 are at most 30 s late.
    assert p.runs == tuple(at(f"2026-01-01T00:0{t}Z") for t in ("0:40", "0:50", "1:00"))
    assert p.skip is not None
    assert (p.skip.first, p.skip.last, p.skip.count, p.skip.reason, p.skip.deadline_seconds) == (
        at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:30Z"), 3, DEADLINE_EXCEEDED, 30)


def test_runs_missed_by_more_than_the_deadline_are_all_skipped() -> None:
    s = cron_schedule("0 3 * * *")
    p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2026-01-03T09:00:00Z"), 3600)
    assert p.runs == ()
    assert p.skip is not None and p.skip.count == 3 and p.skip.last == at("2026-01-03T03:00:00Z")
    assert p.decided_through == at("2026-01-03T03:00:00Z")


def test_a_long_catch_up_is_claimed_in_bounded_plans() -> None:
    s = every(1)
    entry = fresh(s, "2026-01-01T00:00:00Z")
    now = at("2026-01-01T01:00:00Z")
    sent = []
    while not (p := plan(s, entry, now, 3600, limit=500)).empty:
        assert len(p.runs) <= 500
        sent += p.runs
        entry = claim(entry, p)
    assert sent == list(range(at("2026-01-01T00:00:01Z"), now + 1, US))


def test_a_year_long_outage_of_a_one_second_entry_is_planned_at_once_and_counted_exactly() -> None:
    s = every(1)
    started = time.monotonic()
    p = plan(s, fresh(s, "2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00.5Z"), None)
    assert p.runs == (at("2027-01-01T00:00:00Z"),)
    assert p.skip is not None and p.skip.count == 365 * 86400 - 1
    assert time.monotonic() - started < 1


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["every:7", "every:10", "every:0.5", "cron:*/2 * * * *", "cron:0,1,2,30 * * * *"]),
       st.sampled_from([None, 1, 5, 30, 600]),
       st.lists(st.integers(0, 400_000_000), min_size=1, max_size=25),
       st.sets(st.integers(0, 24), max_size=5))
def test_over_any_plans_each_slot_is_sent_once_or_skipped_once_and_the_rule_holds(
        kind: str, deadline: int | None, gaps: list[int], failures: set[int]) -> None:
    """Beat wakes up at arbitrary times (gaps in microseconds), sometimes fails to send a claimed run
    (given back); in the end every slot up to the last plan is either sent once or counted skipped."""
    what, _, arg = kind.partition(":")
    s = every(float(arg)) if what == "every" else cron_schedule(arg)
    entry = EntryState(s.spec, T0)
    now, sent, skipped = T0, [], []
    for i, gap in enumerate(gaps):
        now += gap
        while not (p := plan(s, entry, now, deadline, limit=50)).empty:
            for r in p.runs:
                assert deadline is None or now - r <= deadline * US
            if deadline is None:
                assert p.runs == (s.last_at_or_before(now),)
            if p.skip is not None:
                assert p.skip.count == s.count(p.skip.first - 1, p.skip.last)
                if deadline is not None:
                    assert now - p.skip.last > deadline * US
                skipped += s.slots(p.skip.first - 1, p.skip.last, p.skip.count)
            before, entry = entry, claim(entry, p)
            ok = len(p.runs) // 2 if i in failures and p.runs else len(p.runs)
            sent += p.runs[:ok]
            entry = unclaim(entry, before, p, ok)
            if ok < len(p.runs):
                break  # a failed send: tried again at the next wake-up
    assert len(sent) == len(set(sent)) and not set(sent) & set(skipped)
    assert sorted(sent + skipped) == s.slots(T0, entry.decided_through, 10**7)
    assert entry.skipped_runs == len(skipped)
    assert entry.last_run == (max(sent) if sent else None)


def test_a_run_that_could_not_be_sent_is_due_again_and_its_skips_stay_counted() -> None:
    s = every(10)
    before = fresh(s, "2026-01-01T00:00:00Z")
    p = plan(s, before, at("2026-01-01T00:01:05Z"), 30)
    claimed = claim(before, p)
    back = unclaim(claimed, before, p, 1)
    assert back.last_run == p.runs[0] and back.skipped_runs == 3
    again = plan(s, back, at("2026-01-01T00:01:06Z"), 30)
    assert again.runs == p.runs[1:] and again.skip is None
    assert unclaim(claimed, before, p, 0).last_run is None


def test_skip_records_are_bounded_but_the_count_is_exact() -> None:
    s = every(10)
    entry = fresh(s, "2026-01-01T00:00:00Z")
    for hour in range(1, 2 * MAX_SKIPS):
        entry = claim(entry, plan(s, entry, at("2026-01-01T00:00:00Z") + hour * 3600 * US, None))
    assert len(entry.skips) == MAX_SKIPS
    assert entry.skipped_runs == (2 * MAX_SKIPS - 1) * 359
    assert [k.total for k in entry.skips] == [359 * n for n in range(MAX_SKIPS, 2 * MAX_SKIPS)]


# -- the state ----------------------------------------------------------------------------------------

def test_beat_takes_new_entries_on_from_now_and_restarts_an_entry_whose_schedule_changed() -> None:
    ten, hourly = every(10), cron_schedule("@hourly", "Europe/Paris")
    old = State({"kept": EntryState(ten.spec, T0, T0, 4), "changed": EntryState(ten.spec, T0, T0, 2),
                 "gone": EntryState(ten.spec, T0)})
    now = T0 + 3600 * US
    new = take_over(old, {"kept": ten, "changed": hourly, "new": ten}, now)
    assert new.entries["kept"] == old.entries["kept"]
    assert new.entries["changed"] == EntryState(hourly.spec, now, T0, 2)
    assert new.entries["new"] == EntryState(ten.spec, now)
    assert "gone" not in new.entries
    assert take_over(new, {"kept": ten, "changed": hourly, "new": ten}, now + US) == new


def test_a_time_zone_change_restarts_cron_entries_but_not_interval_ones() -> None:
    assert cron_schedule("@hourly", "UTC").spec != cron_schedule("@hourly", "Europe/Paris").spec
    assert every(10).spec == schedule_of({"every_seconds": 10}, "Europe/Paris").spec


def test_the_state_survives_its_json_and_says_when_it_cannot_be_read() -> None:
    s = every(10)
    entry = claim(fresh(s, "2026-01-01T00:00:00Z"), plan(s, fresh(s, "2026-01-01T00:00:00Z"),
                                                         at("2026-01-01T00:01:05.5Z"), 30))
    state = State({"e": entry, "c": EntryState(cron_schedule("0 9 * * mon-fri", "Asia/Kolkata").spec, T0)})
    assert State.of_json(state.to_json()) == state
    assert State.of_json(None) == State() == State.of_json("")
    for bad in ("{", "[]", '{"version": 2}', '{"version": 1, "entries": {"e": {"schedule": {}}}}',
                '{"version": 1, "entries": {"e": {"schedule": {"every_seconds": 1}, "decidedThrough": "soon"}}}'):
        with pytest.raises(ValueError, match="unreadable beat state"):
            State.of_json(bad)


def test_the_next_run_follows_the_last_decided_one_by_the_schedule_beat_planned_with() -> None:
    s = every(10)
    assert EntryState(s.spec, at("2026-01-01T00:00:20Z")).next_run() == at("2026-01-01T00:00:30Z")
    assert isinstance(schedule_of(EntryState(s.spec, T0).schedule), Every)
