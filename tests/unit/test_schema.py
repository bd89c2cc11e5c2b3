"""The CRD schemas: structural, described, consistent with models.py, and the generated files fresh."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from celery_operator import api, models
from celery_operator.schema import all_crds, crd, openapi_schema, reference_markdown
from celery_operator.schema.__main__ import generate
from celery_operator.schema.crd import crd_yaml

REPO = Path(__file__).resolve().parents[2]
KINDS = list(api.KINDS)
Node = dict[str, Any]


def walk(s: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Every schema node with its path, properties as `.name`, items as `[]`, map values as `.*`."""
    yield path, s
    for name, sub in s.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(s.get("items"), dict):
        yield from walk(s["items"], f"{path}[]")
    if isinstance(s.get("additionalProperties"), dict):
        yield from walk(s["additionalProperties"], f"{path}.*")


def spec_status_nodes(kind: str) -> Iterator[tuple[str, Node]]:
    root = openapi_schema(kind)
    for part in ("spec", "status"):
        yield from walk(root["properties"][part], part)


@pytest.mark.parametrize("kind", KINDS)
def test_crd_names_group_version_category_come_from_api(kind: str) -> None:
    c = crd(kind)
    plural, singular, short = api.KINDS[kind]
    assert c["metadata"]["name"] == f"{plural}.{api.GROUP}"
    assert c["spec"]["group"] == api.GROUP
    assert c["spec"]["scope"] == "Namespaced"
    assert c["spec"]["names"] == {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                                  "singular": singular, "shortNames": [short], "categories": [api.CATEGORY]}
    (version,) = c["spec"]["versions"]
    assert version["name"] == api.VERSION
    assert version["served"]
    assert version["storage"]
    assert "status" in version["subresources"]


def test_all_crds_covers_every_kind() -> None:
    assert list(all_crds()) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_description(kind: str) -> None:
    missing = [p for p, n in spec_status_nodes(kind) if not n.get("description")
               and not p.endswith(".*")  # map values are described by their map
               and not (p.endswith("[]") and "properties" not in n)]  # scalar list items: by their list
    assert missing == []


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    """The rules the API server enforces for structural schemas (checked here without it)."""
    for path, n in walk(openapi_schema(kind)):
        if path == ".metadata":
            assert n == {"type": "object"}, "metadata must not be constrained beyond name rules"
            continue
        typed = "type" in n or n.get("x-kubernetes-preserve-unknown-fields") or n.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        assert not ("properties" in n and "additionalProperties" in n), path
        if "anyOf" in n:
            assert n.get("x-kubernetes-int-or-string"), f"{path}: anyOf outside int-or-string"
        if n.get("x-kubernetes-list-type") == "map":
            item = n["items"]
            for key in n["x-kubernetes-list-map-keys"]:
                assert key in item.get("required", []), f"{path}: map key {key} must be required"
                assert item["properties"][key]["type"] in ("string", "integer"), path
        if "required" in n:
            assert set(n["required"]) <= set(n.get("properties", {})), path


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_has_a_message_naming_what_to_change(kind: str) -> None:
    rules = [r for _, n in walk(openapi_schema(kind)) for r in n.get("x-kubernetes-validations", [])]
    for r in rules:
        assert r["message"], r
        assert re.search(r"(spec\.|metadata\.|env\[\]|cron|podTemplate|each spec\.)", r["message"]), r


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    (version,) = crd(kind)["spec"]["versions"]
    names = {p for p, _ in walk(openapi_schema(kind))}
    for col in version["additionalPrinterColumns"]:
        path = re.sub(r"\[(\?\(.*?\)|\*)\]", "[]", col["jsonPath"])
        assert path in names or path.startswith(".metadata."), col
    column_names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert column_names[-3:] == ["Ready", "Reason", "Age"]


def test_only_the_worker_pool_has_a_scale_subresource_and_its_paths_exist() -> None:
    scaled = {k for k in KINDS if "scale" in crd(k)["spec"]["versions"][0]["subresources"]}
    assert scaled == {api.POOL}
    scale = crd(api.POOL)["spec"]["versions"][0]["subresources"]["scale"]
    names = {p for p, _ in walk(openapi_schema(api.POOL))}
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert scale[key] in names


@pytest.mark.parametrize("kind", KINDS)
def test_every_status_has_observed_generation_and_map_list_conditions_and_no_phase(kind: str) -> None:
    status = openapi_schema(kind)["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    conds = status["conditions"]
    assert conds["x-kubernetes-list-type"] == "map"
    assert conds["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conds["items"]["properties"]) == {"type", "status", "reason", "message", "observedGeneration",
                                                 "lastTransitionTime"}
    assert "phase" not in status


MODEL_OF = {api.APP: models.CeleryApp, api.EXCHANGE: models.CeleryExchange, api.QUEUE: models.CeleryQueue,
            api.POOL: models.CeleryWorkerPool, api.SCHEDULE: models.CeleryBeatSchedule}


@pytest.mark.parametrize("kind", KINDS)
def test_every_spec_field_is_read_by_models(kind: str) -> None:
    """A spec field models.py never reads is a field the operator silently ignores."""
    source = inspect.getsource(models)
    spec = openapi_schema(kind)["properties"]["spec"]
    unread = []
    for path, _node in walk(spec):
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        if path.count(".") == 0 or "config." in path or name == "*":
            continue
        if f'"{name}"' not in source:
            unread.append(path)
    # Kubernetes shapes passed through whole (resources, env, podTemplate internals) are read as one dict.
    passthrough = ("resources.", "env[].", "envFrom[].", "imagePullSecrets[].")
    assert [p for p in unread if not any(t in p for t in passthrough)] == []


def _all_sample_objects() -> list[dict[str, Any]]:
    docs = []
    for p in [*sorted((REPO / "sample_tasks" / "topology").glob("*.yaml")), REPO / "examples" / "minimal.yaml"]:
        docs += [d for d in yaml.safe_load_all(p.read_text()) if d and d["apiVersion"] == api.API_VERSION]
    return docs


def test_samples_hold_the_seed_topology() -> None:
    by_kind: dict[str, set[str]] = {}
    for d in _all_sample_objects()[:-3]:  # the topology, without examples/minimal.yaml
        by_kind.setdefault(d["kind"], set()).add(d["metadata"]["name"])
    assert by_kind == {api.APP: {"proj"}, api.EXCHANGE: {"default", "task"},
                       api.QUEUE: {"default", "high-queue", "low-queue"},
                       api.POOL: {"default", "high", "low"}, api.SCHEDULE: {"proj"}}


def test_samples_and_examples_validate_against_the_schema_offline() -> None:
    from celery_operator.schema.examples import EXAMPLES
    for obj in [*_all_sample_objects(), *EXAMPLES.values()]:
        jsonschema.Draft4Validator(openapi_schema(obj["kind"])).validate(obj)


@pytest.mark.parametrize("kind", KINDS)
def test_models_parse_every_sample_once_defaulted(kind: str) -> None:
    from celery_operator.schema import apply_defaults
    from celery_operator.schema.examples import EXAMPLES
    objs = [d for d in _all_sample_objects() if d["kind"] == kind] + [EXAMPLES[kind]]
    for obj in objs:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": "ns"}}
        parsed = MODEL_OF[kind].of(apply_defaults(kind, obj))
        assert parsed.meta.name == obj["metadata"]["name"]


def test_invalid_corpus_has_thirty_one_rule_files_each_with_an_expectation() -> None:
    files = sorted((REPO / "tests" / "invalid").glob("*.yaml"))
    assert len(files) >= 30
    for f in files:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", f.name), f
        first = f.read_text().splitlines()[0]
        assert first.startswith("# expect: "), f
        assert len(first.removeprefix("# expect: ").strip()) > 10, f


def test_reference_documents_every_kind_and_spec_field() -> None:
    md = reference_markdown()
    for kind in KINDS:
        assert f"## {kind}" in md
        for path, _ in walk(openapi_schema(kind)["properties"]["spec"], "spec"):
            item = path.endswith("[]")  # list items are documented through their fields
            if path != "spec" and ".*" not in path and "config." not in path and not item:
                assert f"`{path}`" in md, path


def test_generated_crds_and_reference_are_fresh(tmp_path: Path) -> None:
    """Fails when crds/ or docs/crd-reference.md were not regenerated: run `python -m celery_operator.schema`."""
    generate(tmp_path)
    for kind in KINDS:
        committed = REPO / "crds" / f"{api.plural(kind)}.yaml"
        assert committed.exists(), f"missing {committed}"
        assert committed.read_text() == crd_yaml(kind), f"{committed} is stale: run python -m celery_operator.schema"
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == sorted(
        p.name for p in (tmp_path / "crds").glob("*.yaml")), "crds/ holds files the schema does not generate"
    doc = REPO / "docs" / "crd-reference.md"
    assert doc.read_text() == reference_markdown(), f"{doc} is stale: run python -m celery_operator.schema"


def test_invalid_corpus_exercises_every_cel_rule() -> None:
    expectations = [f.read_text().splitlines()[0].removeprefix("# expect: ")
                    for f in (REPO / "tests" / "invalid").glob("*.yaml")]
    messages = {r["message"] for kind in KINDS for _, n in walk(openapi_schema(kind))
                for r in n.get("x-kubernetes-validations", [])}
    untested = [m for m in messages if not any(e in m for e in expectations)]
    assert untested == []
