"""Windows of scheduled minimums: when a cron's window is open, the smallest gap between its firings (DST
included), and the CRD's overlap rules agree with it."""

from __future__ import annotations

import datetime
import re

import pytest

from celery_operator import cron


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(("expr", "tz", "duration", "now", "start"), [
    ("0 9 * * *", "UTC", 3600, utc(2026, 1, 1, 9, 0), utc(2026, 1, 1, 9, 0)),
    ("0 9 * * *", "UTC", 3600, utc(2026, 1, 1, 9, 59, 59), utc(2026, 1, 1, 9, 0)),
    ("0 9 * * *", "UTC", 3600, utc(2026, 1, 1, 10, 0), None),
    ("0 9 * * *", "UTC", 3600, utc(2026, 1, 1, 8, 59), None),
    ("30 23 * * *", "UTC", 7200, utc(2026, 1, 2, 1, 0), utc(2026, 1, 1, 23, 30)),  # across midnight
    ("0 9 * * *", "Europe/Paris", 600, utc(2026, 1, 1, 8, 5), utc(2026, 1, 1, 8, 0)),  # UTC+1
    ("0 9 * * *", "Europe/Paris", 600, utc(2026, 7, 1, 7, 5), utc(2026, 7, 1, 7, 0)),  # UTC+2
    ("30 2 * * *", "Europe/Paris", 3600, utc(2026, 3, 29, 1, 0), None),  # 02:30 does not exist that day
    ("30 2 * * *", "Europe/Paris", 3600, utc(2026, 3, 28, 1, 45), utc(2026, 3, 28, 1, 30)),
    ("30 2 * * *", "Europe/Paris", 3600, utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 0, 30)),  # first 02:30
    ("30 2 * * *", "Europe/Paris", 3600, utc(2026, 10, 25, 1, 45), None),  # the repeated 02:30 does not fire
])
def test_window_start(expr: str, tz: str, duration: int, now: float, start: float | None) -> None:
    assert cron.window_start(expr, tz, duration, now) == start


@pytest.mark.parametrize(("expr", "tz", "gap"), [
    ("* * * * *", "UTC", 60),
    ("*/7 * * * *", "UTC", 240),  # :56 to the next :00
    ("30 * * * *", "UTC", 3600),
    ("@daily", "UTC", 86400),
    ("0 9 * * mon-fri", "UTC", 86400),
    ("@weekly", "UTC", 7 * 86400),
    ("0 0 29 2 *", "UTC", 1461 * 86400),  # leap days, four years apart at best
    ("0 9 * * *", "Europe/Paris", 23 * 3600),  # the spring-forward night is an hour short
    ("30 1,3 * * *", "America/New_York", 3600),  # 01:30 to 03:30 across the change
    ("30 * * * *", "Australia/Lord_Howe", 1800),  # a 30-minute DST change
])
def test_smallest_gap_counts_dst_changes(expr: str, tz: str, gap: int) -> None:
    found = cron.smallest_gap(expr, tz, 2026)
    assert found is not None and found.seconds == gap


def test_overlap_problem_names_the_dst_change_and_the_fix() -> None:
    text = cron.overlap_problem("0 9 * * *", "Europe/Paris", 23 * 3600, 2026)
    assert text is not None and "UTC offset change" in text and cron.OVERLAP_FIX in text
    assert cron.overlap_problem("0 9 * * *", "Europe/Paris", 23 * 3600 - 60, 2026) is None


def test_an_unknown_time_zone_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        cron.smallest_gap("0 9 * * *", "Mars/Olympus_Mons", 2026)


def _cel_rejects(expr: str, duration: int) -> bool:
    """The overlap rules as the API server evaluates them (RE2 `matches` is a search, like re.search)."""
    for rule, _ in cron.overlap_cel_rules():
        pattern = re.search(r"matches\('(.*)'\)", rule)
        bound = re.search(r"durationSeconds < (\d+)", rule)
        assert pattern is not None and bound is not None
        if re.search(pattern.group(1), expr) and not duration < int(bound.group(1)):
            return True
    return False


@pytest.mark.parametrize("expr", ["* 8-17 * * *", "*/1 * * * mon", "0 * * * *", "@hourly", "15 */1 1 * *",
                                  "@daily", "@midnight", "0 3 * * *", "@weekly", "0 6 * * mon", "0 6 * * 1",
                                  "0 9 * * mon-fri", "0,30 9 * * *", "0 0 1 * *", "0 9 1-7 * mon", "5 4 * * sun"])
def test_cel_rejects_only_windows_that_overlap_on_an_ordinary_day(expr: str) -> None:
    """Sound: whatever CEL rejects overlaps in UTC too (the wall-clock gap occurs every ordinary day); and for
    the shapes it reads it rejects exactly the durations that reach the UTC gap."""
    gap = cron.smallest_gap(expr, "UTC", 2026)
    assert gap is not None
    for duration in (60, gap.seconds - 1, gap.seconds, gap.seconds + 1):
        if _cel_rejects(expr, duration):
            assert duration >= gap.seconds, (expr, duration)
