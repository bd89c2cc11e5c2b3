"""One definition of a cron expression (`celery_operator.cron`), checked against Celery itself:
what the definition admits, Celery schedules (and reads as meant); what Celery refuses, it rejects.
That the API server admits exactly what `problem` admits is tests/integration/test_cron_crd.py."""

from __future__ import annotations

import dataclasses
import datetime
import re
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from hypothesis import example, given, settings
from hypothesis import strategies as st

from celery_operator import cron
from celery_operator.config.celeryconfig import beat_entry_data
from celery_operator.models import BeatEntry
from tests.strategies import cron_expressions

WHEN = [datetime.datetime(2026, 2, 27, 23, 59, tzinfo=ZoneInfo("UTC")),
        datetime.datetime(2027, 12, 31, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))]


def celery_reading(expr: str) -> crontab:
    """Celery's crontab of the expression's raw fields (as `crontab.from_string` splits them)."""
    minute, hour, dom, month, dow = cron.MACROS.get(expr, expr).split()
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)


def expanded(c: crontab) -> tuple[set[int], ...]:
    return c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week


@settings(max_examples=600, deadline=None)
@given(cron_expressions())
@example("0 0 ? * *")
@example("@daily")
@example("0 0 30 2 *")
@example("99 * * * *")
@example("0 0 31 2-5/2 *")
def test_what_the_definition_admits_celery_schedules_and_what_celery_refuses_it_rejects(expr: str) -> None:
    fields = cron.parse_cron(expr)
    assert (fields is None) == (cron.problem(expr) is not None)
    if fields is None:
        return
    entry = BeatEntry("e", "t", expr, None, [], {}, None, None, None)
    schedule = crontab(**beat_entry_data(entry)["schedule"]["cron"])  # what the bootstrap module builds
    assert schedule == crontab(**dataclasses.asdict(fields))
    for now in WHEN:  # Celery finds the next run: within the 28 years that repeat the calendar
        at_now = crontab(nowfun=lambda now=now: now, **dataclasses.asdict(fields))
        assert datetime.timedelta(0) <= at_now.remaining_estimate(now) <= datetime.timedelta(days=28 * 366)
    # Names replaced by numbers mean what Celery reads the names as.
    assert expanded(schedule) == expanded(celery_reading(expr))


@settings(max_examples=600, deadline=None)
@given(cron_expressions())
def test_an_expression_celery_refuses_is_rejected(expr: str) -> None:
    try:
        celery_reading(expr)
    except (ValueError, KeyError, IndexError):
        assert cron.problem(expr) is not None
    except Exception:  # noqa: BLE001 - anything else Celery raises counts as refusing too
        assert cron.problem(expr) is not None


@given(st.text(max_size=60))
def test_random_text_is_either_rejected_or_parsed(text: str) -> None:
    assert (cron.parse_cron(text) is None) == (cron.problem(text) is not None)


@pytest.mark.parametrize(
    ("expr", "fields"),
    [
        ("*/5 * * * *", ("*/5", "*", "*", "*", "*")),
        ("0 3 * * mon-fri", ("0", "3", "*", "*", "1-5")),
        ("0 0 1 jan,jul *", ("0", "0", "1", "1,7", "*")),
        ("@daily", ("0", "0", "*", "*", "*")),
        ("@weekly", ("0", "0", "*", "*", "0")),
        ("0  3 * * *", ("0", "3", "*", "*", "*")),
        ("05 4 29 feb sun", ("05", "4", "29", "2", "0")),
    ],
)
def test_admitted_expressions_give_numeric_celery_fields(expr: str, fields: tuple[str, ...]) -> None:
    got = cron.parse_cron(expr)
    assert got is not None
    assert dataclasses.astuple(got) == fields


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 0 ? * *", cron.SYNTAX_MESSAGE),
        ("* * * *", cron.SYNTAX_MESSAGE),
        ("* * * * * *", cron.SYNTAX_MESSAGE),
        (" * * * * *", cron.SYNTAX_MESSAGE),
        ("60 * * * *", cron.SYNTAX_MESSAGE),
        ("* * * * 7", cron.SYNTAX_MESSAGE),
        ("*/0 * * * *", cron.SYNTAX_MESSAGE),
        ("5/15 * * * *", cron.SYNTAX_MESSAGE),
        ("0 3 * * MON", cron.SYNTAX_MESSAGE),
        ("@reboot", cron.SYNTAX_MESSAGE),
        ("0 0 * * fri-mon", cron.RANGE_MESSAGE),
        ("30-10 * * * *", cron.RANGE_MESSAGE),
        ("0 0 30 2 *", cron.DATE_MESSAGE),
        ("0 0 31 apr,jun,sep,nov *", cron.DATE_MESSAGE),
        ("0 0 30-31 feb *", cron.DATE_MESSAGE),
    ],
)
def test_rejected_expressions_get_the_crds_message(expr: str, message: str) -> None:
    assert cron.problem(expr) == message
    assert cron.parse_cron(expr) is None


def test_the_crds_rules_embed_each_pattern_as_a_plain_cel_string() -> None:
    """A backslash would be read as an escape by CEL and a quote would end the literal."""
    for cel, _ in cron.cel_rules():
        pattern = cel.split("matches('", 1)[1].rsplit("')", 1)[0]
        assert "\\" not in pattern and "'" not in pattern
        re.compile(pattern)
