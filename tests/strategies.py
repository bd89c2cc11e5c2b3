"""Hypothesis strategies shared by unit and integration tests: names the schema admits, at its limits."""

from __future__ import annotations

import re
import string
from typing import Any

from hypothesis import strategies as st

from celery_operator.cron import FIELDS, MACROS, Field
from celery_operator.schema.builders import DNS_LABEL_MAX, DNS_LABEL_PATTERN
from celery_operator.topology import Topology
from tests.unit import crs

_INNER = string.ascii_lowercase + string.digits + "-"
_END = string.ascii_lowercase + string.digits


@st.composite
def dns_label_names(draw: st.DrawFn, max_size: int = DNS_LABEL_MAX) -> str:
    """metadata.name of a CeleryApp or CeleryWorkerPool (the schema's DNS_LABEL_PATTERN and limit),
    half of them within a dozen characters of the limit."""
    size = draw(st.one_of(st.integers(1, max_size), st.integers(max(1, max_size - 12), max_size)))
    first = draw(st.sampled_from(string.ascii_lowercase))
    if size == 1:
        name = first
    else:
        middle = draw(st.text(_INNER, min_size=size - 2, max_size=size - 2))
        name = first + middle + draw(st.sampled_from(_END))
    assert re.fullmatch(DNS_LABEL_PATTERN.strip("^$"), name), name
    return name


@st.composite
def _cron_field(draw: st.DrawFn, field: Field) -> str:
    def value() -> tuple[int, str]:
        out_of_range = draw(st.integers(0, 19)) == 0
        n = draw(st.sampled_from([field.low - 1, field.high + 1]) if out_of_range
                 else st.integers(field.low, field.high))
        forms = [str(n), f"0{n}" if 0 <= n <= 9 else str(n)]
        if field.names and field.low <= n <= field.high:
            forms.append(field.names[n - field.low])
        return n, draw(st.sampled_from(forms))

    def span() -> str:
        (a, first), (b, last) = value(), value()
        if a > b and draw(st.integers(0, 3)) > 0:  # mostly ascending
            first, last = last, first
        return f"{first}-{last}"

    def step() -> str:
        rare = draw(st.integers(0, 9)) == 0
        return str(draw(st.sampled_from([0, 100, 1000] if rare else [1, 2, 3, 5, 7, 15, 30, 99])))

    def item() -> str:
        kind = draw(st.sampled_from(["*", "*/", "v", "v-v", "v-v/"]))
        return {"*": lambda: "*", "*/": lambda: f"*/{step()}", "v": lambda: value()[1],
                "v-v": span, "v-v/": lambda: f"{span()}/{step()}"}[kind]()

    return ",".join(item() for _ in range(draw(st.integers(1, 3))))


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    """Strings near the cron grammar (`celery_operator.cron`): most parse, many break one rule, some
    are random text or macros."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.sampled_from([*MACROS, "@reboot", "@DAILY", "@daily ", "0 0 ? * *", "* * * * * *"]))
    if choice == 1:
        return draw(st.text("0123456789*/,- @?abcdefjmnorstuwy", max_size=40))
    fields = [draw(_cron_field(f)) for f in FIELDS]
    if draw(st.integers(0, 4)) == 0:  # days that may never occur
        fields[2] = draw(st.sampled_from(["29", "30", "31", "30,31", "30-31", "31-31/5", "31-30"]))
        fields[3] = draw(st.sampled_from(["2", "feb", "2-4/2", "4,6,9,11", "2-5/3", "*/2", "1", "apr-jun/2"]))
    return "".join(f + draw(st.sampled_from([" ", " ", "  "])) for f in fields[:-1]) + fields[-1]


BROKERS: dict[str, dict[str, Any]] = {
    "rabbitmq": {"rabbitmq": {"image": "rabbitmq:3.13-management", "storage": {"size": "1Gi"}}},
    "redis": {"redis": {"image": "redis:7.2"}},
    "external": {"external": {"urlSecretRef": {"name": "ext", "key": "url"}}},
    "cluster": {"rabbitmqClusterRef": {"name": "rmq"}},
}


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    """An app with a name at or near the limit, any kind of broker, 1-3 pools with such names, maybe a beat."""
    app_name = draw(dns_label_names())
    broker = draw(st.sampled_from(sorted(BROKERS)))
    backend = draw(st.sampled_from([None, {"redis": {"image": "redis:7.2"}}]))
    spec: dict[str, Any] = {"broker": BROKERS[broker]}
    if backend is not None:
        spec["resultBackend"] = backend
    pools = draw(st.lists(dns_label_names(), min_size=1, max_size=3, unique=True))
    schedules = [crs.schedule("s", [{"name": "e", "task": "t", "everySeconds": 5}], app_name=app_name)] \
        if draw(st.booleans()) else []
    return Topology.of(crs.app(app_name, **spec), pools=[crs.pool(p, ["celery"], app_name=app_name) for p in pools],
                       schedules=schedules)
