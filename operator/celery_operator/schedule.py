"""PURE, standard library only: when beat runs each entry, the catch-up rule, and the state beat keeps.

One module for both sides. The operator imports it as `celery_operator.schedule` (the statuses and
metrics of beat entries); the app's ConfigMap ships its source unchanged as `celery_operator_schedule.py`,
which the beat pod's scheduler (`celery_operator_beat.py`) imports. So beat and the operator compute the
same runs. It must run on the Python of users' images (3.9 and later) with nothing but the standard
library: no package imports, no syntax or library newer than 3.9.

Time is an integer number of microseconds since the Unix epoch (UTC), an "instant", so that each
scheduled run (a "slot") has one exact identity.

Slots of an entry:
- `every_seconds: p`: the multiples of p since the Unix epoch (for 10 s: :00, :10, :20, ...), wherever
  beat started, so a restart neither shifts nor repeats them.
- `cron`: the minutes whose five fields match in the app's time zone. As in Celery, a day must match
  both day fields. A local time a DST change skips does not run that day; one it repeats runs once
  (the first time).

The catch-up rule, per entry, each time beat plans: the slots after the entry's `decidedThrough` up to
now are due.
- Without a deadline (`startingDeadlineSeconds` unset), the most recent due slot runs, however late;
  older ones are skipped (CronJob's default, and what Celery's own scheduler does after a restart).
- With a deadline D, each due slot missed by at most D seconds runs, oldest first; slots missed by
  more are skipped.
Skipped slots are counted and recorded as a `Skip`: the contiguous range of slots one plan skipped.

The state (JSON, the ConfigMap key STATE_KEY): `{"version": 1, "entries": {name: EntryState}}`, each
entry holding the schedule it was planned with, `decidedThrough` (the latest slot decided: run or
skipped), `lastRunTime` (the latest slot sent), `skippedRuns` (how many slots were skipped in all)
and the last MAX_SKIPS `skips`.
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import json
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from typing import Any

STATE_KEY = "state.json"
STATE_VERSION = 1
US = 1_000_000  # microseconds per second
MINUTE = 60 * US
MAX_SKIPS = 10  # skip records kept per entry (the counts are exact whatever their number)
MAX_RUNS_PER_PLAN = 100  # runs one plan claims at most; a longer catch-up continues in the next plan
CRON_SEARCH_DAYS = 366 * 50  # a cron that matches no minute in 50 years never runs
DEADLINE_EXCEEDED = "StartingDeadlineExceeded"  # missed by more than startingDeadlineSeconds
SUPERSEDED = "Superseded"  # missed, and a later slot of the entry ran instead (no deadline: latest only)
_UTC = datetime.timezone.utc  # datetime.UTC is 3.11+, this module runs on 3.9+


# -- instants ---------------------------------------------------------------------------------------

def to_rfc3339(t: int) -> str:
    """An instant as RFC 3339 in UTC (`Z`), with microseconds only when it has some."""
    seconds, micros = divmod(t, US)
    text = datetime.datetime.fromtimestamp(seconds, _UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


def from_rfc3339(text: str) -> int:
    """An instant from RFC 3339 (`Z` or an offset, fraction optional); ValueError when it is not one."""
    if not isinstance(text, str) or len(text) < 20:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    body = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    main, offset = body[:-6], body[-6:]
    if offset[0] not in "+-" or offset[3] != ":":
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date_time, _, fraction = main.partition(".")
    if fraction and (not fraction.isdigit() or len(fraction) > 9):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    try:
        parsed = datetime.datetime.strptime(date_time + offset.replace(":", ""), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return calendar.timegm(parsed.utctimetuple()) * US + micros


# -- schedules ----------------------------------------------------------------------------------------

class Schedule:
    """The slots of one entry."""

    @property
    def spec(self) -> dict[str, Any]:
        """What identifies the slots (kept in the state, to tell a changed schedule)."""
        raise NotImplementedError

    def first_after(self, t: int) -> int | None:
        """The first slot after `t`, or None when there is none."""
        raise NotImplementedError

    def last_at_or_before(self, t: int) -> int | None:
        """The latest slot at or before `t`, or None when there is none."""
        raise NotImplementedError

    def count(self, after: int, until: int) -> int:
        """How many slots lie in (after, until]."""
        raise NotImplementedError

    def slots(self, after: int, until: int, limit: int) -> list[int]:
        """The first `limit` slots in (after, until], in order."""
        out: list[int] = []
        t = self.first_after(after)
        while t is not None and t <= until and len(out) < limit:
            out.append(t)
            t = self.first_after(t)
        return out


@dataclass(frozen=True)
class Every(Schedule):
    """Every `period` microseconds, counted from the Unix epoch."""

    period: int

    @property
    def spec(self) -> dict[str, Any]:
        return {"every_seconds": self.period / US}

    def first_after(self, t: int) -> int:
        return (t // self.period + 1) * self.period

    def last_at_or_before(self, t: int) -> int:
        return (t // self.period) * self.period

    def count(self, after: int, until: int) -> int:
        return max(0, until // self.period - after // self.period)


def _field(text: str, low: int, high: int) -> frozenset[int]:
    """The values of one numeric cron field (`*`, `a`, `a-b`, `*/n`, `a-b/n`, comma-separated), as
    `celery_operator.cron.parse_cron` writes it."""
    values: set[int] = set()
    for item in str(text).split(","):
        span, _, step = item.partition("/")
        if span == "*":
            first, last = low, high
        else:
            a, _, b = span.partition("-")
            first = int(a)
            last = int(b) if b else (high if step else first)
        values.update(range(first, last + 1, int(step) if step else 1))
    if not values or min(values) < low or max(values) > high:
        raise ValueError(f"cron field {text!r} is not within {low}-{high}")
    return frozenset(values)


@cache
def _zone(name: str) -> datetime.tzinfo:
    if name in ("UTC", "Etc/UTC", "Z", ""):
        return _UTC
    import zoneinfo  # 3.9+

    return zoneinfo.ZoneInfo(name)


@dataclass(frozen=True)
class Cron(Schedule):
    """The minutes whose fields match in `timezone` (Celery's crontab: both day fields must match)."""

    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str
    timezone: str = "UTC"

    @property
    def spec(self) -> dict[str, Any]:
        return {"cron": {"minute": self.minute, "hour": self.hour, "day_of_month": self.day_of_month,
                         "month_of_year": self.month_of_year, "day_of_week": self.day_of_week},
                "timezone": self.timezone}

    @property
    def _sets(self) -> tuple[frozenset[int], frozenset[int], frozenset[int], frozenset[int], frozenset[int]]:
        return _cron_sets(self.minute, self.hour, self.day_of_month, self.month_of_year, self.day_of_week)

    def _matches(self, day: datetime.date) -> bool:
        _, _, doms, months, dows = self._sets
        return day.month in months and day.day in doms and (day.weekday() + 1) % 7 in dows

    def _day(self, day: datetime.date) -> tuple[int, ...]:
        """The slots of one local day, in order (none when the day does not match)."""
        return _day_slots(self, day) if self._matches(day) else ()

    def _local_day(self, t: int) -> datetime.date:
        return datetime.datetime.fromtimestamp(t // US, _UTC).astimezone(_zone(self.timezone)).date()

    def first_after(self, t: int) -> int | None:
        day = self._local_day(t)
        for _ in range(CRON_SEARCH_DAYS):
            slots = self._day(day)
            i = bisect.bisect_right(slots, t)
            if i < len(slots):
                return slots[i]
            day += datetime.timedelta(days=1)
        return None

    def last_at_or_before(self, t: int) -> int | None:
        day = self._local_day(t)
        for _ in range(CRON_SEARCH_DAYS):
            slots = self._day(day)
            i = bisect.bisect_right(slots, t)
            if i:
                return slots[i - 1]
            day -= datetime.timedelta(days=1)
        return None

    def count(self, after: int, until: int) -> int:
        if until <= after:
            return 0
        minutes, hours, _, _, _ = self._sets
        per_day = len(minutes) * len(hours)
        day, last = self._local_day(after), self._local_day(until)
        total = 0
        while day <= last:
            if self._matches(day):
                start, end, regular = _day_bounds(self.timezone, day)
                if regular and after < start and end <= until:
                    total += per_day  # the whole day is in the range and has no DST change
                else:
                    slots = _day_slots(self, day)
                    total += bisect.bisect_right(slots, until) - bisect.bisect_right(slots, after)
            day += datetime.timedelta(days=1)
        return total


@cache
def _cron_sets(minute: str, hour: str, dom: str, month: str,
               dow: str) -> tuple[frozenset[int], frozenset[int], frozenset[int], frozenset[int], frozenset[int]]:
    return (_field(minute, 0, 59), _field(hour, 0, 23), _field(dom, 1, 31), _field(month, 1, 12),
            _field(dow, 0, 6))


def _instant(dt: datetime.datetime) -> int:
    return calendar.timegm(dt.utctimetuple()) * US


@lru_cache(maxsize=4096)
def _day_bounds(timezone: str, day: datetime.date) -> tuple[int, int, bool]:
    """(first, last minute's instant, whether the day's UTC offset is the same all day)."""
    tz = _zone(timezone)
    first = datetime.datetime(day.year, day.month, day.day, 0, 0, tzinfo=tz)
    last = datetime.datetime(day.year, day.month, day.day, 23, 59, tzinfo=tz)
    return _instant(first), _instant(last), first.utcoffset() == last.utcoffset()


@lru_cache(maxsize=512)
def _day_slots(cron: Cron, day: datetime.date) -> tuple[int, ...]:
    minutes, hours, _, _, _ = cron._sets
    tz = _zone(cron.timezone)
    start, _, regular = _day_bounds(cron.timezone, day)
    if regular:
        return tuple(start + (h * 60 + m) * MINUTE for h in sorted(hours) for m in sorted(minutes))
    out = set()
    for h in hours:
        for m in minutes:
            local = datetime.datetime(day.year, day.month, day.day, h, m)
            aware = local.replace(tzinfo=tz)  # fold=0: a repeated time is its first occurrence
            if aware.astimezone(_UTC).astimezone(tz).replace(tzinfo=None) != local:
                continue  # skipped by a DST change
            out.add(_instant(aware))
    return tuple(sorted(out))


def schedule_of(spec: dict[str, Any], timezone: str = "UTC") -> Schedule:
    """The schedule of a generated config's beat entry (`{"every_seconds": p}` or `{"cron": {...}}`, cron
    read in `timezone`), or of a state's stored spec (which names its own time zone)."""
    if "every_seconds" in spec:
        period = round(float(spec["every_seconds"]) * US)
        if period <= 0:
            raise ValueError(f"every_seconds must be positive: {spec['every_seconds']!r}")
        return Every(period)
    c = spec["cron"]
    cron = Cron(str(c["minute"]), str(c["hour"]), str(c["day_of_month"]), str(c["month_of_year"]),
                str(c["day_of_week"]), str(spec.get("timezone", timezone)))
    _ = cron._sets  # ValueError now rather than when first used
    _zone(cron.timezone)
    return cron


# -- the state --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Skip:
    """Slots one plan skipped: `count` slots from `first` to `last`; `total` is the entry's skippedRuns
    once they were counted (so a reader knows which skips it has seen)."""

    first: int
    last: int
    count: int
    reason: str  # DEADLINE_EXCEEDED or SUPERSEDED
    decided_at: int
    deadline_seconds: int | None = None
    total: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first": to_rfc3339(self.first), "last": to_rfc3339(self.last), "count": self.count,
                               "reason": self.reason, "decidedAt": to_rfc3339(self.decided_at), "total": self.total}
        if self.deadline_seconds is not None:
            out["deadlineSeconds"] = self.deadline_seconds
        return out

    @classmethod
    def of_json(cls, d: dict[str, Any]) -> Skip:
        deadline = d.get("deadlineSeconds")
        return cls(from_rfc3339(d["first"]), from_rfc3339(d["last"]), int(d["count"]), str(d["reason"]),
                   from_rfc3339(d["decidedAt"]), int(deadline) if deadline is not None else None, int(d["total"]))


@dataclass(frozen=True)
class EntryState:
    schedule: dict[str, Any]  # Schedule.spec of the schedule planned with
    decided_through: int
    last_run: int | None = None
    skipped_runs: int = 0
    skips: tuple[Skip, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schedule": self.schedule, "decidedThrough": to_rfc3339(self.decided_through),
                               "skippedRuns": self.skipped_runs, "skips": [s.to_json() for s in self.skips]}
        if self.last_run is not None:
            out["lastRunTime"] = to_rfc3339(self.last_run)
        return out

    @classmethod
    def of_json(cls, d: dict[str, Any]) -> EntryState:
        schedule = d["schedule"]
        if not isinstance(schedule, dict):
            raise ValueError("schedule is not an object")
        schedule_of(schedule)  # a spec this module cannot read is an unreadable state
        last = d.get("lastRunTime")
        return cls(schedule, from_rfc3339(d["decidedThrough"]), from_rfc3339(last) if last is not None else None,
                   int(d.get("skippedRuns") or 0), tuple(Skip.of_json(s) for s in d.get("skips") or ()))

    def next_run(self) -> int | None:
        """The next slot after the last one decided, by the schedule it was planned with."""
        return schedule_of(self.schedule).first_after(self.decided_through)


@dataclass(frozen=True)
class State:
    entries: dict[str, EntryState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION,
                           "entries": {n: e.to_json() for n, e in sorted(self.entries.items())}},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def of_json(cls, text: str | None) -> State:
        """The state a ConfigMap holds (empty when it holds none); ValueError when it cannot be read."""
        if not text:
            return cls()
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {d.get('version') if isinstance(d, dict) else d!r}")
            return cls({str(n): EntryState.of_json(e) for n, e in (d.get("entries") or {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"unreadable beat state: {e}") from None


def take_over(state: State, schedules: dict[str, Schedule], now: int) -> State:
    """The state a beat starts from: entries it does not know start at `now` (nothing of them is due
    yet); an entry whose schedule changed starts afresh at `now` (runs of the old schedule are not
    caught up), keeping its last run and skip count; entries no longer configured are dropped."""
    out: dict[str, EntryState] = {}
    for name, schedule in schedules.items():
        known = state.entries.get(name)
        if known is None:
            out[name] = EntryState(schedule.spec, now)
        elif known.schedule != schedule.spec:
            out[name] = replace(known, schedule=schedule.spec, decided_through=now)
        else:
            out[name] = known
    return State(out)


# -- the catch-up rule ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What to do now for one entry: the slots to send (in order), the slots skipped, and the slot
    decided through once they are claimed."""

    runs: tuple[int, ...]
    skip: Skip | None
    decided_through: int

    @property
    def empty(self) -> bool:
        return not self.runs and self.skip is None


def plan(schedule: Schedule, entry: EntryState, now: int, deadline_seconds: int | None,
         limit: int = MAX_RUNS_PER_PLAN) -> Plan:
    """Apply the catch-up rule to the slots in (entry.decided_through, now]."""
    start = entry.decided_through
    latest = schedule.last_at_or_before(now)
    if latest is None or latest <= start:
        return Plan((), None, start)
    if deadline_seconds is None:
        older = schedule.count(start, latest) - 1
        skip = None
        if older > 0:
            first, last = schedule.first_after(start), schedule.last_at_or_before(latest - 1)
            assert first is not None and last is not None
            skip = Skip(first, last, older, SUPERSEDED, now)
        return Plan((latest,), skip, latest)
    cutoff = now - deadline_seconds * US  # a slot before it was missed by more than the deadline
    last_skipped = schedule.last_at_or_before(cutoff - 1)
    skip, run_from = None, start
    if last_skipped is not None and last_skipped > start:
        first = schedule.first_after(start)
        assert first is not None
        skip = Skip(first, last_skipped, schedule.count(start, last_skipped), DEADLINE_EXCEEDED, now,
                    deadline_seconds)
        run_from = last_skipped
    runs = tuple(schedule.slots(run_from, latest, limit))
    return Plan(runs, skip, runs[-1] if runs else run_from)


def claim(entry: EntryState, p: Plan) -> EntryState:
    """The entry once `p` is decided: its runs claimed (about to be sent) and its skips counted."""
    skips, skipped = entry.skips, entry.skipped_runs
    if p.skip is not None:
        skipped += p.skip.count
        skips = (*skips, replace(p.skip, total=skipped))[-MAX_SKIPS:]
    return replace(entry, decided_through=p.decided_through,
                   last_run=p.runs[-1] if p.runs else entry.last_run, skipped_runs=skipped, skips=skips)


def unclaim(claimed: EntryState, before: EntryState, p: Plan, sent: int) -> EntryState:
    """The entry when only the first `sent` runs of `p` went out: the others are due again (their
    skips stay decided)."""
    if sent >= len(p.runs):
        return claimed
    return replace(claimed, decided_through=p.runs[sent] - 1,
                   last_run=p.runs[sent - 1] if sent else before.last_run)
