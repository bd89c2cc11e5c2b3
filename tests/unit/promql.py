"""Just enough PromQL reading for tests: which metric names an expression selects."""

from __future__ import annotations

import re
from collections.abc import Iterable

KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names selected in `expr` (function and aggregation names, keywords and labels excluded)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _GRAFANA_VAR.sub(" ", s)
    s = _OFFSET.sub(" ", s)
    return {m.group(1) for m in _IDENT.finditer(s) if not m.group(2) and m.group(1) not in KEYWORDS}


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matcher text) of every `name{...}` selector in `expr`."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)]


def unknown_names(names: Iterable[str], exported: Iterable[str], histograms: Iterable[str]) -> set[str]:
    """Names that are neither an exported series name nor a histogram's _bucket/_sum/_count."""
    exported, histograms = set(exported), set(histograms)
    unknown = set()
    for name in names:
        if name in exported:
            continue
        if any(name.endswith(sfx) and name.removesuffix(sfx) in histograms for sfx in HISTOGRAM_SUFFIXES):
            continue
        unknown.add(name)
    return unknown
