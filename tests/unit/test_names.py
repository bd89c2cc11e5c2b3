"""Every name the schema admits yields valid children: a property test over app and pool names at
the limits, with Kubernetes' own name and label rules (apimachinery's validation regexes)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_operator import api
from celery_operator.render import SecretsContext, names, render_all
from celery_operator.topology import Topology
from tests.strategies import dns_label_names, topologies

# k8s.io/apimachinery/pkg/util/validation
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# What the controllers add: a ControllerRevision hash (the decimal of a uint32, safe-encoded: at most
# 10 characters), a ReplicaSet's pod-template-hash (at most 10), generateName's 5 random characters.
REVISION_HASH = "x" * 10
GENERATE_NAME_BASE_MAX = 58

SECRETS = SecretsContext(broker_password="bp", result_backend_password="rp")


def is_label(name: str) -> bool:
    return len(name) <= 63 and DNS1123_LABEL.fullmatch(name) is not None


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(name) is not None


def is_dns1035(name: str) -> bool:
    return len(name) <= 63 and DNS1035_LABEL.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


def is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (not prefix or is_subdomain(prefix)) and len(name) <= 63 and QUALIFIED_NAME.fullmatch(name) is not None


def label_problems(where: str, labels: dict[str, str]) -> list[str]:
    return [f"{where}: label {k}={v!r}" for k, v in labels.items() if not (is_label_key(k) and is_label_value(v))]


def name_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server or a controller would reject in this object's names and labels."""
    kind, meta = obj["kind"], obj["metadata"]
    name = meta["name"]
    where = f"{kind} {name}"
    out = label_problems(where, meta.get("labels") or {})
    if not is_subdomain(name):
        out.append(f"{where}: not a DNS subdomain")
    if not is_label_value(meta["labels"][api.LABEL_INSTANCE]):
        out.append(f"{where}: instance label")
    if kind == "Service" and not is_dns1035(name):
        out.append(f"{where}: a Service name must be a DNS-1035 label")
    spec = obj.get("spec") or {}
    if "selector" in spec and kind != "Service":
        out += label_problems(f"{where} selector", spec["selector"]["matchLabels"])
    if kind == "Service":
        out += label_problems(f"{where} selector", spec["selector"])
    if "template" in spec:
        out += label_problems(f"{where} pod template", spec["template"]["metadata"]["labels"])
    if kind == "StatefulSet":
        pod = f"{name}-0"
        if not (is_label(pod) and is_label_value(f"{name}-{REVISION_HASH}")):
            out.append(f"{where}: pod {pod} or its controller-revision-hash label would be invalid")
        if not is_label(spec["serviceName"]):
            out.append(f"{where}: serviceName")
    if kind == "Deployment":
        replica_set = f"{name}-{REVISION_HASH}"
        pod = f"{replica_set}-"[:GENERATE_NAME_BASE_MAX] + "abcde"
        if not (is_subdomain(replica_set) and is_subdomain(pod) and is_label(pod[:63])):
            out.append(f"{where}: its ReplicaSet or pod names would be invalid")
    return out


def references(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the Secrets and ConfigMaps an object's pods read."""
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    out = {("ConfigMap", v["configMap"]["name"]) for v in pod.get("volumes") or [] if "configMap" in v}
    for c in pod.get("containers") or []:
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                out.add(("Secret", ref["name"]))
    return out


@settings(max_examples=300, deadline=None)
@given(topologies())
def test_names_at_the_limits_give_valid_children_names_and_labels(topology: Topology) -> None:
    objs = render_all(topology, SECRETS, pod_monitor=True)
    assert [p for o in objs for p in name_problems(o)] == []
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "two children of one kind share a name"
    managed = topology.app.broker.managed is not None
    if managed:  # every Secret and ConfigMap the pods read is one of the rendered objects
        assert {r for o in objs for r in references(o)} <= set(keys)


@given(dns_label_names(), dns_label_names())
def test_a_name_that_fits_is_kept_and_a_longer_one_is_cut_with_a_hash(app: str, pool: str) -> None:
    full = f"{app}-{pool}"
    got = names.worker(app, pool)
    if len(full) <= names.LABEL_VALUE_MAX:
        assert got == full
    else:
        kept, digest = got.rsplit("-", 1)
        assert len(got) <= names.LABEL_VALUE_MAX
        assert full.startswith(kept) and len(kept.rstrip("-")) >= len(full[:54].rstrip("-"))
        assert re.fullmatch(r"[0-9a-f]{8}", digest)


def test_shortened_names_differ_when_the_full_names_do() -> None:
    app = "a" * 63
    assert names.worker(app, "pool-one") != names.worker(app, "pool-two")
    assert names.worker(app, "pool-one") == names.worker(app, "pool-one")


def test_short_names_are_unchanged() -> None:
    assert [names.config_map("proj"), names.worker("proj", "high"), names.beat("proj"),
            names.broker_server("proj", "rabbitmq"), names.headless_service("proj-rabbitmq"),
            names.broker_secret("proj"), names.result_backend("proj")] == [
        "proj-celery-config", "proj-high", "proj-beat", "proj-rabbitmq", "proj-rabbitmq-headless", "proj-broker",
        "proj-result-backend"]


def test_a_statefulset_name_leaves_room_for_the_revision_hash_label() -> None:
    server = names.broker_server("a" * 63, "rabbitmq")
    assert len(server) == names.STATEFULSET_NAME_MAX
    assert len(f"{server}-{REVISION_HASH}") == 63


@given(st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=253).filter(is_subdomain))
def test_event_names_stay_dns_subdomains_for_any_object_name(name: str) -> None:
    assert is_subdomain(names.event(name, "0123456789ab"))
