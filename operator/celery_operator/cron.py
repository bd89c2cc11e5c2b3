"""One definition of a cron expression: the CRD admits exactly what the operator schedules.

The grammar is standard five-field cron, restricted to what Celery's `crontab` reads the same way:

    expr  := macro | field ' '+ field ' '+ field ' '+ field ' '+ field
    field := item (',' item)*
    item  := '*' ['/' step] | value ['-' value ['/' step]]
    step  := 1..99

with values minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or jan..dec, day-of-week 0-6
(0 is Sunday) or sun..sat; names are lowercase, a one-digit value may have one leading zero; the
macros are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly. Beyond the
grammar: a range runs from low to high (Celery would wrap `5-1` around, cron rejects it), and the
day of month must occur in at least one of the months (Celery refuses `30 2`, which never runs).
Both day fields restrict together (Celery's rule: a day must match both; cron runs when either does).

`PATTERN` (the grammar) and the CEL rules of `cel_rules()` are what the CRD validates with;
`problem()` is the same definition in Python, and `parse_cron()` turns an admitted expression into
the numeric fields Celery's `crontab` takes. Tests check all three agree with the API server and
with Celery.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Celery's table (celery.schedules.CRON_DAYS_IN_MONTH): February has a 29th in leap years.
DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
STEP_MAX = 99


@dataclass(frozen=True)
class Field:
    name: str  # as messages say it
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] means low + i

    def value(self, token: str) -> int:
        return self.low + self.names.index(token) if token in self.names else int(token)


FIELDS = (Field("minute", 0, 59), Field("hour", 0, 23), Field("day-of-month", 1, 31),
          Field("month", 1, 12, MONTH_NAMES), Field("day-of-week", 0, 6, DAY_NAMES))

SYNTAX_MESSAGE = (
    "cron must be a five-field crontab 'minute hour day-of-month month day-of-week' or a macro (@yearly, "
    "@annually, @monthly, @weekly, @daily, @midnight, @hourly): fields separated by spaces, each a comma-"
    "separated list of '*', a value, a range a-b, or a step */n or a-b/n (n 1-99); values minute 0-59, hour "
    "0-23, day-of-month 1-31, month 1-12 or jan-dec, day-of-week 0-6 (0 is Sunday) or sun-sat, names in "
    "lowercase; e.g. '*/5 * * * *' or '0 3 * * mon-fri'")
RANGE_MESSAGE = ("cron ranges must go from low to high, e.g. 1-5 or mon-fri: write a range that wraps around "
                 "as two, e.g. 22-23,0-2 or sat,sun")
DATE_MESSAGE = ("cron day-of-month never occurs in the cron's months (e.g. 30 or 31 in feb, 31 in apr): choose "
                "a day that exists in at least one of the months")


def _digits(low: int, high: int, zero_led: bool = True) -> str:
    """A regex for the decimal numbers low..high (0 <= low <= high <= 99); one-digit ones may have a
    leading '0' when `zero_led`."""
    def digit(first: int, last: int) -> str:
        return str(first) if first == last else f"[{first}-{last}]"

    if (low, high, zero_led) == (1, 99, False):
        return "[1-9][0-9]?"
    alts = []
    if low <= 9:
        alts.append(f"{'0?' if zero_led else ''}{digit(low, min(high, 9))}")
    spans: list[tuple[int, int, int, int]] = []  # (first tens, last tens, first unit, last unit)
    for t in range(max(1, low // 10), high // 10 + 1):
        units = (max(low, 10 * t) - 10 * t, min(high, 10 * t + 9) - 10 * t)
        if spans and spans[-1][2:] == units == (0, 9):
            spans[-1] = (spans[-1][0], t, 0, 9)
        else:
            spans.append((t, t, *units))
    alts += [f"{digit(t0, t1)}{digit(u0, u1)}" for t0, t1, u0, u1 in spans]
    return "|".join(alts)


def _number_set(values: set[int], zero_led: bool) -> str:
    """A regex for a set of numbers 0..99: its runs of consecutive values, each as `_digits`."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return "|".join(_digits(lo, hi, zero_led) for lo, hi in runs)


def _token(f: Field, values: set[int]) -> str:
    """A regex for the ways `f` spells any of `values` (numbers, and its names)."""
    names = [n for i, n in enumerate(f.names) if f.low + i in values]
    return _group("|".join([_number_set(values, zero_led=True), *names]))


def _group(pattern: str) -> str:
    """`pattern` made one unit (for a suffix or a quantifier to follow)."""
    return f"(?:{pattern})" if "|" in pattern else pattern


STEP = _group(_digits(1, STEP_MAX, zero_led=False))


def _field_pattern(f: Field) -> str:
    token = _token(f, set(range(f.low, f.high + 1)))
    item = f"(?:[*](?:/{STEP})?|{token}(?:-{token}(?:/{STEP})?)?)"
    return f"{item}(?:,{item})*"


# The grammar: a regex Python (re.fullmatch) and CEL (RE2, anchored) read the same way.
PATTERN = "|".join(MACROS) + "|" + " +".join(f"(?:{_field_pattern(f)})" for f in FIELDS)
CEL_PATTERN = f"^(?:{PATTERN})$"
_GRAMMAR = re.compile(PATTERN)


def _items(f: Field, text: str) -> list[tuple[int, int, int]]:
    """(low, high, step) of each item of a field that matched the grammar."""
    out = []
    for item in text.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            low, high = f.low, f.high
        else:
            first, _, last = span.partition("-")
            low = f.value(first)
            high = f.value(last) if last else low
        out.append((low, high, int(step) if step else 1))
    return out


def _fields(expr: str) -> list[str] | None:
    if not _GRAMMAR.fullmatch(expr):
        return None
    return MACROS.get(expr, expr).split()


def problem(expr: str) -> str | None:
    """Why `expr` is not a cron expression of this definition (the CRD's message), or None."""
    fields = _fields(expr)
    if fields is None:
        return SYNTAX_MESSAGE
    items = [_items(f, text) for f, text in zip(FIELDS, fields, strict=True)]
    if any(low > high for field in items for low, high, _ in field):
        return RANGE_MESSAGE
    days, months = ({v for low, high, step in field for v in range(low, high + 1, step)} for field in items[2:4])
    if not any(d <= DAYS_IN_MONTH[m] for m in months for d in days):
        return DATE_MESSAGE
    return None


@dataclass(frozen=True)
class CronFields:
    """The keyword arguments of Celery's `crontab`, names replaced by numbers (any Celery reads them)."""

    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str


def parse_cron(expr: str) -> CronFields | None:
    """The five fields of an admitted cron expression (or macro), or None when `problem` has one."""
    fields = _fields(expr)
    if fields is None or problem(expr) is not None:
        return None
    numeric = []
    for f, text in zip(FIELDS, fields, strict=True):
        for i, name in enumerate(f.names):
            text = text.replace(name, str(f.low + i))
        numeric.append(text)
    return CronFields(*numeric)


# -- the same rules as RE2 patterns for CEL (the CRD's x-kubernetes-validations on a cron string) ---------
# Each is one `matches` over the string: list functions on a string of up to 128 characters, in a list of
# up to 256 entries, would exceed the API server's CEL cost budget.

def _descending_ranges() -> str:
    """A pattern found in an expression that has a range from high to low.

    A range's ends are of one field and a name has one value (month and day names differ), so one
    pattern serves every field of an expression that matches the grammar: numbers by their digits,
    names (with numbers) per field.
    """
    top = max(f.high for f in FIELDS)
    alts = [f"{_digits(10, top)}-0?[0-9]"]  # two digits, then one
    alts += [f"{t}[0-9]-{_digits(10, 10 * t - 1, zero_led=False)}" for t in range(2, top // 10 + 1)]
    alts += [f"{t}{u}-{t}{_digits(0, u - 1, zero_led=False)}" for t in range(1, top // 10 + 1)
             for u in range(1, 10) if 10 * t + u <= top]
    alts += [f"0?{u}-0?{_digits(0, u - 1, zero_led=False)}" for u in range(1, 10)]
    for f in (f for f in FIELDS if f.names):
        for i, name in enumerate(f.names):
            if i:
                high = f"(?:{_number_set({f.low + i}, zero_led=True)}|{name})"
                alts.append(f"{high}-(?:{'|'.join(f.names[:i])})")
                alts.append(f"{name}-(?:{_number_set(set(range(f.low, f.low + i)), zero_led=True)})")
    return f"(^|[ ,])(?:{'|'.join(alts)})($|[ ,/])"


def _items_within(f: Field, allowed: set[int]) -> str:
    """A pattern for the fields of `f` (lists of ascending items) whose values all lie in `allowed`."""
    every = set(range(1, STEP_MAX + 1))

    def steps(low: int, high: int) -> frozenset[int]:
        return frozenset(s for s in every if set(range(low, high + 1, s)) <= allowed)

    def stepped(ok: frozenset[int]) -> str:
        if ok == every:
            return f"(?:/{STEP})?"
        numbers = f"/{_group(_number_set(set(ok), zero_led=False))}"
        return f"(?:{numbers})?" if 1 in ok else numbers

    alts = []
    if ok := steps(f.low, f.high):
        alts.append(f"[*]{stepped(ok)}")
    for low in sorted(allowed):
        by_steps: dict[frozenset[int], set[int]] = {}
        for high in range(low, f.high + 1):
            if ok := steps(low, high):
                by_steps.setdefault(ok, set()).add(high)
        ends = "|".join(f"{_token(f, highs)}{stepped(ok)}" for ok, highs in by_steps.items())
        alts.append(f"{_token(f, {low})}(?:-(?:{ends}))?")
    item = f"(?:{'|'.join(alts)})"
    return f"{item}(?:,{item})*"


def _never_occurring() -> str:
    """A pattern matching expressions whose day of month is in none of their months.

    That is: for the most days `c` of any of the months, every day of month is above `c`.
    """
    day_of_month, month = FIELDS[2], FIELDS[3]
    alts = []
    for most in sorted(set(DAYS_IN_MONTH.values()) - {max(DAYS_IN_MONTH.values())}):
        days = set(range(most + 1, day_of_month.high + 1))
        months = {m for m, n in DAYS_IN_MONTH.items() if n <= most}
        alts.append(f"{_items_within(day_of_month, days)} +{_items_within(month, months)}")
    return f"^[^ ]+ +[^ ]+ +(?:{'|'.join(alts)}) "


def cel_rules() -> list[tuple[str, str]]:
    """(CEL expression, message) pairs the CRD checks a cron string with, in `problem`'s order.

    The last two assume the grammar holds (when it does not, the first rule already rejects)."""
    return [(f"self.matches('{CEL_PATTERN}')", SYNTAX_MESSAGE),
            (f"!self.matches('{_descending_ranges()}')", RANGE_MESSAGE),
            (f"!self.matches('{_never_occurring()}')", DATE_MESSAGE)]


# -- windows of scheduled minimums (CeleryWorkerPool spec.autoscaling.schedules) -----------------------------
# A window opens at each firing of a cron (as beat reads it: `schedule.Cron`, in the schedule's time zone,
# DST included) and lasts its durationSeconds. A window must end before the next firing ("overlaps itself"
# otherwise). The CRD rejects that for the cron shapes whose smallest gap a regex can tell on an ordinary day
# (`overlap_cel_rules`); `smallest_gap` finds every other case exactly, for the operator to report.

_MINUTE_VALUE = _token(FIELDS[0], set(range(60)))
_HOUR_VALUE = _token(FIELDS[1], set(range(24)))
_DOW_VALUE = _token(FIELDS[4], set(range(7)))
_EVERY = "[*](?:/1)?"
OVERLAP_FIX = "shorten durationSeconds or use a cron that fires less often"


def overlap_cel_rules() -> list[tuple[str, str]]:
    """(CEL, message) pairs on an autoscaling schedule (`self.cron`, `self.durationSeconds`): for cron shapes
    that fire every minute, hour, day or week on an ordinary day, a window as long as that gap overlaps the
    next one. Sound in every time zone (the gap occurs on any day without a DST change); a DST change that
    shortens a gap further is the operator's to find (`smallest_gap`)."""
    shapes = [
        ("every minute (minute field *)", 60, f"^{_EVERY} "),
        ("every hour (@hourly, or one minute and hour *)", 3600, f"^(?:@hourly$|(?:{_MINUTE_VALUE}) +{_EVERY} )"),
        ("every day (@daily, @midnight, or one minute and one hour, other fields *)", 86400,
         f"^(?:@daily|@midnight|(?:{_MINUTE_VALUE}) +(?:{_HOUR_VALUE}) +{_EVERY} +{_EVERY} +{_EVERY})$"),
        ("every week (@weekly, or one minute, one hour and one day of week, other fields *)", 7 * 86400,
         f"^(?:@weekly|(?:{_MINUTE_VALUE}) +(?:{_HOUR_VALUE}) +{_EVERY} +{_EVERY} +(?:{_DOW_VALUE}))$"),
    ]
    return [(f"!self.cron.matches('{pattern}') || self.durationSeconds < {gap}",
             f"spec.autoscaling.schedules[].durationSeconds must be less than {gap} when cron fires {what}: each "
             f"window would overlap the next one; {OVERLAP_FIX}")
            for what, gap, pattern in shapes]


def cron_schedule(expr: str, timezone: str) -> Any:
    """The `schedule.Cron` of an admitted expression in `timezone`; ValueError when either is not valid."""
    from celery_operator import schedule

    fields = parse_cron(expr)
    if fields is None:
        raise ValueError(problem(expr) or SYNTAX_MESSAGE)
    try:
        return schedule.schedule_of({"cron": {"minute": fields.minute, "hour": fields.hour,
                                              "day_of_month": fields.day_of_month,
                                              "month_of_year": fields.month_of_year,
                                              "day_of_week": fields.day_of_week}}, timezone)
    except (KeyError, ValueError, OSError) as e:  # zoneinfo: ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"unknown time zone {timezone!r}") from e


def window_start(expr: str, timezone: str, duration_seconds: int, now: float) -> float | None:
    """The firing (epoch seconds) whose window holds `now` (the latest one: its window ends last), or None
    outside every window. ValueError for an invalid cron or time zone."""
    from celery_operator.schedule import US

    c = cron_schedule(expr, timezone)
    t = int(now * US)
    fired = c.last_at_or_before(t)
    if fired is None or t >= fired + duration_seconds * US:
        return None
    return float(fired / US)


@lru_cache(maxsize=256)
def _day_distance(dom: str, month: str, dow: str) -> int | None:
    """The fewest days between two consecutive matching days (Celery's rule: both day fields match), over a
    whole 400-year Gregorian cycle; None when at most one day matches per cycle."""
    import datetime

    from celery_operator.schedule import _field

    doms, months, dows = _field(dom, 1, 31), _field(month, 1, 12), _field(dow, 0, 6)
    day, step = datetime.date(2000, 1, 1), datetime.timedelta(days=1)
    last: int | None = None
    first: int | None = None
    best: int | None = None
    for i in range(146097 * 2):  # two cycles: the wrap from one to the next counts too
        if day.month in months and day.day in doms and (day.weekday() + 1) % 7 in dows:
            if last is not None:
                best = i - last if best is None else min(best, i - last)
                if best == 1:
                    return 1
            if first is None:
                first = i
            elif i - first >= 146097:
                break
            last = i
        day += step
    return best


@lru_cache(maxsize=64)
def _offset_changes(timezone: str, year: int) -> tuple[int, ...]:
    """The instants (epoch seconds) at which the zone's UTC offset changes from `year` on, for 28 years (the
    calendar's weekday-date pattern repeats within that: every rule 'the second Sunday of March' takes each
    of its dates)."""
    import datetime

    from celery_operator.schedule import _zone

    tz = _zone(timezone)
    if tz is datetime.UTC:
        return ()
    start = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)

    def offset(s: int) -> datetime.timedelta | None:
        return (start + datetime.timedelta(seconds=s)).astimezone(tz).utcoffset()

    out = []
    day = 86400
    for d in range(28 * 366):
        a, b = d * day, (d + 1) * day
        if offset(a) == offset(b):
            continue
        while b - a > 60:  # the first minute with the new offset
            mid = (a + b) // 120 * 60
            if mid <= a:
                break
            if offset(mid) == offset(a):
                a = mid
            else:
                b = mid
        out.append(int(start.timestamp()) + b)
    return tuple(out)


@dataclass(frozen=True)
class Gap:
    seconds: int
    at: float | None = None  # the earlier firing of the pair (epoch seconds), when it is one DST change's


def smallest_gap(expr: str, timezone: str, year: int) -> Gap | None:
    """The smallest time between two consecutive firings of `expr` in `timezone` (None if it fires at most once
    in 400 years). Exact: the wall-clock gaps over a whole 400-year cycle, and the real gap across every UTC
    offset change of the zone in the 28 years from `year` (its DST rules as the zone database has them now).
    ValueError for an invalid cron or time zone."""
    from celery_operator.schedule import US, _cron_sets

    c = cron_schedule(expr, timezone)
    minutes, hours, _, _, _ = _cron_sets(c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week)
    times = sorted(h * 60 + m for h in hours for m in minutes)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    days = _day_distance(c.day_of_month, c.month_of_year, c.day_of_week)
    if days is not None:
        gaps.append(days * 1440 - (times[-1] - times[0]))
    best = Gap(min(gaps) * 60) if gaps else None
    if best is not None and best.seconds == 60:
        return best  # no two minutes are closer
    for change in _offset_changes(timezone, year):
        before = c.last_at_or_before(change * US - 1)
        after = c.first_after(change * US - 1)
        if before is not None and after is not None and (best is None or (after - before) // US < best.seconds):
            best = Gap(int((after - before) // US), before / US)
    return best


def overlap_problem(expr: str, timezone: str, duration_seconds: int, year: int) -> str | None:
    """Why a window of `duration_seconds` from each firing overlaps the next firing, or None. ValueError for an
    invalid cron or time zone."""
    gap = smallest_gap(expr, timezone, year)
    if gap is None or duration_seconds < gap.seconds:
        return None
    from celery_operator.schedule import US, to_rfc3339

    where = (f" (across the UTC offset change after {to_rfc3339(int(gap.at * US))} in {timezone})"
             if gap.at is not None else "")
    return (f"durationSeconds {duration_seconds} reaches the next firing of cron {expr!r}: two firings are as close "
            f"as {gap.seconds} s{where}; {OVERLAP_FIX}")
