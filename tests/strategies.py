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


# -- random custom resources, driven by the CRD schema itself -------------------------------------------

APP_NAMES = ("app-a", "app-b", "app-c")
CELERY_NAMES = ("celery", "jobs", "high_queue", "low.q", "amq.bad", "x y")
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5))
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(
    st.text("abcxyz_", min_size=1, max_size=4), inner, max_size=2), max_leaves=4)


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    size = min(schema.get("maxLength", 20), 20)
    anything = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._/ *@", max_size=size)
    if "enum" in schema:
        valid: st.SearchStrategy[str] = st.sampled_from(schema["enum"])
    elif "pattern" in schema:
        valid = st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= size)
    else:
        return anything
    return st.one_of(valid, valid, valid, anything)  # mostly admissible


def from_schema(schema: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]],
                path: str = "") -> st.SearchStrategy[Any]:
    """Values of (roughly) the shape `schema` describes: valid ones, and values that break one of its
    rules (a bound, a pattern, an enum); `overrides` (dotted path -> strategy) pins some fields."""
    if path in overrides:
        return overrides[path]
    if schema.get("x-kubernetes-int-or-string"):
        if "pattern" in schema:  # a quantity
            return st.one_of(st.integers(0, 5), _string(schema))
        return st.one_of(st.integers(-1, 5), st.text("0123456789abc", max_size=4))
    kind = schema.get("type")
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low, high = schema.get("minimum", -3), schema.get("maximum", 1000)
        valid_int = st.integers(low, min(high, low + 100))
        return st.one_of(valid_int, valid_int, valid_int, st.sampled_from([low - 1, high + 1, high]))
    if kind == "number":
        return st.one_of(st.floats(0, 100, allow_nan=False), st.just(-1.0))
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = from_schema(schema["items"], overrides, f"{path}[]")
        size = min(schema.get("maxItems", 3), 3)
        least = schema.get("minItems", 0)
        keys = schema.get("x-kubernetes-list-map-keys")
        unique: dict[str, Any] = {}
        if schema.get("x-kubernetes-list-type") == "set":
            unique = {"unique": True}
        elif keys:
            unique = {"unique_by": lambda d: tuple(str(d.get(k)) for k in keys)}
        return st.one_of(*[st.lists(items, min_size=least, max_size=max(size, least), **unique)] * 3,
                         st.lists(items, max_size=size, **unique))
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        props = {k: from_schema(v, overrides, f"{path}.{k}".lstrip(".")) for k, v in schema["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "object" and "additionalProperties" in schema:
        keys = st.one_of(st.sampled_from(["cpu", "memory", "app", "example.com/tier"]), st.text("abc./-", max_size=6))
        return st.dictionaries(keys, from_schema(schema["additionalProperties"], overrides, f"{path}.*"), max_size=2)
    return st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), JSON, max_size=2)


def _overrides(kind: str) -> dict[str, st.SearchStrategy[Any]]:
    names = st.sampled_from(CELERY_NAMES)
    return {
        "appRef.name": st.sampled_from(APP_NAMES),
        "name": names, "exchange": names, "queues[]": names, "defaultQueue": names,
        "entries[].queue": names, "entries[].cron": cron_expressions(),
        "image": st.sampled_from(["registry.invalid/app:1", ""]),
        "app": st.sampled_from(["sample_tasks.app", "x", "1bad"]),
        "config": st.dictionaries(st.sampled_from(["task_acks_late", "timezone", "worker_send_task_events",
                                                   "broker_transport_options", "broker_url"]), JSON, max_size=2),
        "broker": st.sampled_from([{"redis": {}}, {"rabbitmq": {"storage": {"size": "1Gi"}}},
                                   {"external": {"urlSecretRef": {"name": "b"}}}, {"rabbitmqClusterRef": {"name": "r"}},
                                   {}, {"redis": {}, "rabbitmq": {}}]),
        "resultBackend": st.sampled_from([{"redis": {}}, {"external": {"urlSecretRef": {"name": "rb"}}}, {}]),
        "entries[]": st.builds(
            lambda name, task, when, extra: {"name": name, "task": task, **when, **extra},
            st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["t.add", ""]),
            st.one_of(cron_expressions().map(lambda c: {"cron": c}),
                      st.floats(-1, 100).map(lambda f: {"everySeconds": f}), st.just({})),
            st.fixed_dictionaries({}, optional={"queue": st.sampled_from(CELERY_NAMES),
                                                "priority": st.integers(-1, 256), "args": st.lists(JSON, max_size=2),
                                                "kwargs": st.dictionaries(st.text("ab", min_size=1), JSON,
                                                                          max_size=2)})),
    }


@st.composite
def custom_resources(draw: st.DrawFn) -> dict[str, Any]:
    """One custom resource of any kind: a random spec from its CRD schema, often admissible."""
    from celery_operator import api
    from celery_operator.schema import openapi_schema

    kind = draw(st.sampled_from(list(api.KINDS)))
    name = draw(st.sampled_from(APP_NAMES)) if kind == api.APP else draw(dns_label_names(20))
    spec = draw(from_schema(openapi_schema(kind)["properties"]["spec"], _overrides(kind)))
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
