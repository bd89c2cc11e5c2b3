"""Metric families that write their own text: the same text as prometheus-client's, kept per series."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_operator.series import Counter, Family, Gauge, Histogram

# Label values the escaping must get right: backslash, newline, double quote, non-ASCII.
ODD = ("a\\b", "line\nbreak", 'say "hi"', "café ✓", "")


class _Only:
    def __init__(self, family: Family) -> None:
        self.family = family

    def collect(self):  # type: ignore[no-untyped-def]
        return self.family.collect()


def library_text(family: Family) -> bytes:
    return generate_latest(_Only(family))  # type: ignore[arg-type]


def families(r: CollectorRegistry) -> tuple[Gauge, Counter, Histogram, Gauge, Histogram]:
    # Label names out of alphabetical order (the exposition sorts them, `le` among them).
    g = Gauge("g", "A gauge.\nWith a \\ in its help.", ("queue", "app", "zone"), registry=r)
    c = Counter("c_total", "A counter.", ("pool", "direction"), registry=r)
    h = Histogram("h_seconds", "A histogram.", ("namespace", "app"), buckets=(0.1, 1, 2.5), registry=r)
    bare = Gauge("bare", "No labels.", registry=r)
    hk = Histogram("hk_seconds", "le sorts after kind.", ("kind",), buckets=(1,), registry=r)
    return g, c, h, bare, hk


def fill(g: Gauge, c: Counter, h: Histogram, bare: Gauge, hk: Histogram) -> None:
    for i, odd in enumerate(ODD):
        g.set((odd, f"app{i}", "z"), i * 1.5)
        c.inc((odd, "up"), i + 1)
        h.observe((odd, "a"), 0.05 * i)
        h.observe((odd, "a"), 3.0)
    g.set(("big", "a", "z"), 1.7e9)
    g.set(("inf", "a", "z"), math.inf)
    bare.set((), 1)
    hk.observe(("CeleryApp",), 1.0)  # on a bound: counted in that bucket (le is "less or equal")


def test_each_family_writes_the_same_text_as_prometheus_client_writes_from_its_samples() -> None:
    fs = families(CollectorRegistry())
    fill(*fs)
    for family in fs:
        assert family.text() == library_text(family), family.name


def test_a_changed_series_is_written_again_and_the_others_are_kept() -> None:
    g, c, h, bare, hk = fs = families(CollectorRegistry())
    fill(*fs)
    before = {f.name: f.text() for f in fs}
    g.set(("big", "a", "z"), 2.0)
    c.inc(("a\\b", "up"))
    h.observe(("café ✓", "a"), 0.5)
    for family in fs:
        assert family.text() == library_text(family), family.name
    assert b'g{app="a",queue="big",zone="z"} 2.0' in g.text()
    assert bare.text() is before["bare"]  # nothing changed: the same bytes, not written again
    assert hk.text() is before["hk_seconds"]


def test_setting_a_gauge_to_the_value_it_holds_keeps_its_text() -> None:
    g, *_ = families(CollectorRegistry())
    g.set(("q", "a", "z"), 3)
    text = g.text()
    g.set(("q", "a", "z"), 3.0)
    assert g.text() is text


def test_removed_series_leave_the_text_and_the_registry() -> None:
    r = CollectorRegistry()
    g, c, h, _, _ = fs = families(r)
    fill(*fs)
    assert g.remove_matching(app="app1")
    assert not g.remove_matching(app="app1")
    assert h.remove_matching(namespace='say "hi"', app="a")  # all labels: one series
    assert c.remove(("a\\b", "up"))
    for family in fs:
        assert family.text() == library_text(family), family.name
    assert r.get_sample_value("g", {"queue": "line\nbreak", "app": "app1", "zone": "z"}) is None
    assert r.get_sample_value("h_seconds_count", {"namespace": 'say "hi"', "app": "a"}) is None
    assert r.get_sample_value("h_seconds_count", {"namespace": "a\\b", "app": "a"}) == 2
    g.clear()
    assert g.text() == library_text(g) == b"# HELP g A gauge.\\nWith a \\\\ in its help.\n# TYPE g gauge\n"


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    r = CollectorRegistry()
    h = Histogram("h_seconds", "A histogram.", ("app",), buckets=(1, 0.1), registry=r)  # any order
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(("a",), v)
    bucket = {le: r.get_sample_value("h_seconds_bucket", {"app": "a", "le": le}) for le in ("0.1", "1.0", "+Inf")}
    assert bucket == {"0.1": 1, "1.0": 3, "+Inf": 4}
    assert r.get_sample_value("h_seconds_sum", {"app": "a"}) == pytest.approx(8.6)


def test_a_counter_is_named_total_and_only_goes_up() -> None:
    r = CollectorRegistry()
    with pytest.raises(ValueError, match="_total"):
        Counter("c", "no suffix", registry=r)
    c = Counter("c_total", "A counter.", registry=r)
    with pytest.raises(ValueError, match="up"):
        c.inc((), -1)
