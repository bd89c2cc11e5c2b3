"""Metric families kept as plain dicts (label values -> value) that write their own Prometheus text.

prometheus-client's labelled children cost about a kilobyte each, and its `generate_latest` formats
every sample of a family again on each scrape. An operator of 10,000 resources holds tens of
thousands of queue and pool series, and every app's poll changes its poll histogram: here a series
costs a dict entry, each series keeps its text until its value changes, and a family keeps its joined
text until one of its series changes. The text is the same as `generate_latest` of `collect()` (a
unit test compares them); `collect()` serves the registry (`get_sample_value`, tests).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LabelValues = tuple[str, ...]  # one series: its label values, in the family's label order
# How prometheus-client writes a value (Go's float format: 1.0, 1.5e+09, +Inf, NaN).
_value: Callable[[float], str] = floatToGoString


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class Family:
    """One metric family: its series' keys in the order they were first set, and their cached text."""

    type: ClassVar[str]

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        # Label names in the exposition are sorted; this is where each key's value goes.
        self._sorted = sorted(range(len(self.labelnames)), key=self.labelnames.__getitem__)
        self._header = f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} {self.type}\n"
        self._lines: dict[LabelValues, str] = {}
        self._stale: set[LabelValues] = set()
        self._joined: bytes | None = None
        registry.register(self)

    # --- what subclasses hold -------------------------------------------------------------------

    def _store(self) -> dict[LabelValues, Any]:
        raise NotImplementedError

    def _render(self, key: LabelValues) -> str:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    # --- series bookkeeping ---------------------------------------------------------------------

    def _changed(self, key: LabelValues) -> None:
        self._lines.setdefault(key, "")  # keeps the order series were first set in
        self._stale.add(key)
        self._joined = None

    def _drop(self, key: LabelValues) -> None:
        del self._lines[key]
        self._stale.discard(key)
        self._joined = None

    def keys(self) -> list[LabelValues]:
        return list(self._store())

    def remove(self, key: LabelValues) -> bool:
        """Remove one series; whether it existed."""
        store = self._store()
        if key not in store:
            return False
        del store[key]
        self._drop(key)
        return True

    def remove_matching(self, **match: str) -> bool:
        """Remove every series whose labels include `match`; whether any existed."""
        if len(match) == len(self.labelnames):  # one series: no scan
            return self.remove(tuple(match[k] for k in self.labelnames))
        positions = [(self.labelnames.index(k), v) for k, v in match.items()]
        gone = [key for key in self._store() if all(key[i] == v for i, v in positions)]
        for key in gone:
            self.remove(key)
        return bool(gone)

    def clear(self) -> None:
        for key in self.keys():
            self.remove(key)

    # --- text -----------------------------------------------------------------------------------

    def _pairs(self, key: LabelValues) -> list[str]:
        return [f'{self.labelnames[i]}="{escape_label_value(key[i])}"' for i in self._sorted]

    def text(self) -> bytes:
        """This family's Prometheus text: only series set since the last call are formatted."""
        if self._joined is None:
            for key in self._stale:
                self._lines[key] = self._render(key)
            self._stale.clear()
            self._joined = (self._header + "".join(self._lines.values())).encode()
        return self._joined


def _braced(pairs: list[str]) -> str:
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _OneValue(Family):
    """A family whose series are one value each (gauges, counters)."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry) -> None:
        self.values: dict[LabelValues, float] = {}
        super().__init__(name, documentation, labelnames, registry=registry)

    def _store(self) -> dict[LabelValues, float]:
        return self.values

    def _render(self, key: LabelValues) -> str:
        return f"{self.name}{_braced(self._pairs(key))} {_value(self.values[key])}\n"

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, value in self.values.items():
            family.add_metric(key, value)
        yield family


class Gauge(_OneValue):
    type = "gauge"

    def set(self, key: LabelValues, value: float) -> None:
        """Set one series (a value equal to the one held changes nothing)."""
        if self.values.get(key) == value:
            return
        self.values[key] = float(value)
        self._changed(key)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


class Counter(_OneValue):
    """A counter; `name` is the exposed one, ending in `_total`."""

    type = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 registry: CollectorRegistry) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        super().__init__(name, documentation, labelnames, registry=registry)

    def inc(self, key: LabelValues, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.values[key] = self.values.get(key, 0.0) + amount
        self._changed(key)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name.removesuffix("_total"), self.documentation, labels=self.labelnames)


class Histogram(Family):
    """A histogram: per series, the count in each bucket (not cumulative, +Inf last) and the sum."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._les = [_value(b) for b in self.bounds] + ["+Inf"]
        self._quoted_les = [f'"{le}"' for le in self._les]
        self.series: dict[LabelValues, list[float]] = {}  # bucket counts..., sum
        super().__init__(name, documentation, labelnames, registry=registry)
        self._le_at = bisect.bisect([self.labelnames[i] for i in self._sorted], "le")

    def _store(self) -> dict[LabelValues, list[float]]:
        return self.series

    def observe(self, key: LabelValues, amount: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect.bisect_left(self.bounds, amount)] += 1
        counts[-1] += amount
        self._changed(key)

    def _cumulative(self, key: LabelValues) -> tuple[list[float], float]:
        *counts, total = self.series[key]
        running, out = 0.0, []
        for c in counts:
            running += c
            out.append(running)
        return out, total

    def _render(self, key: LabelValues) -> str:
        pairs = self._pairs(key)
        before, after = pairs[:self._le_at], pairs[self._le_at:]
        cumulative, total = self._cumulative(key)
        labels = _braced(pairs)
        lines = [f"{self.name}_bucket{_braced([*before, 'le=' + quoted, *after])} {_value(n)}\n"
                 for quoted, n in zip(self._quoted_les, cumulative, strict=True)]
        lines.append(f"{self.name}_count{labels} {_value(cumulative[-1])}\n")
        lines.append(f"{self.name}_sum{labels} {_value(total)}\n")
        return "".join(lines)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key in self.series:
            cumulative, total = self._cumulative(key)
            family.add_metric(key, list(zip(self._les, cumulative, strict=True)), total)
        yield family
