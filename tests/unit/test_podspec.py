"""The kubelet's pod-spec computations the local pod runner relies on (dev/localenv/podspec.py)."""

from __future__ import annotations

import base64
from fractions import Fraction
from typing import Any

import pytest

from localenv.images import ImageEnv, UnknownImageError, default_images, image_env, repository
from localenv.podspec import (
    PodInfo,
    PodSpecError,
    container_argv,
    container_env,
    expand,
    parse_quantity,
    volume_files,
)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("Secret", "broker"): {"data": {"url": b64("amqp://u:p@h/v"), "user": b64("u")}},
    ("ConfigMap", "settings"): {"data": {"LEVEL": "debug", "bad=name": "x"},
                                "binaryData": {"blob": b64("\x00\x01")}},
}


def lookup(kind: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, name))


def pod(containers: list[dict[str, Any]], **spec: Any) -> PodInfo:
    return PodInfo(name="web-abc-xyz12", namespace="ns1", uid="u-1", spec={"containers": containers, **spec},
                   labels={"app": "web"}, annotations={"note": 'say "hi"'})


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)-$(B)", "1-2"),
    ("$(MISSING)", "$(MISSING)"),
    ("$$(A)", "$(A)"),
    ("$$$(A)", "$1"),
    ("a$b", "a$b"),
    ("$(A", "$(A"),
    ("trailing$", "trailing$"),
    ("$()", "$()"),
])
def test_expand_matches_kubelet_expansion(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_env_literal_values_see_only_earlier_variables_and_env_from() -> None:
    c = {"name": "c", "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
         "env": [{"name": "X", "value": "$(Y)/$(CFG_LEVEL)"}, {"name": "Y", "value": "y"},
                 {"name": "Z", "value": "$(Y)"}]}
    env = container_env(c, pod([c]), lookup)
    assert env == {"CFG_LEVEL": "debug", "X": "$(Y)/debug", "Y": "y", "Z": "y"}


def test_env_from_skips_invalid_names_and_later_sources_win() -> None:
    c = {"name": "c", "envFrom": [{"configMapRef": {"name": "settings"}},
                                  {"secretRef": {"name": "broker"}, "prefix": "LEVEL"}]}
    env = container_env(c, pod([c]), lookup)
    assert env == {"LEVEL": "debug", "LEVELurl": "amqp://u:p@h/v", "LEVELuser": "u"}


def test_env_value_from_secret_configmap_and_fields() -> None:
    c = {"name": "c", "env": [
        {"name": "BROKER", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}}},
        {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
    ]}
    env = container_env(c, pod([c], serviceAccountName="robot"), lookup)
    assert env == {"BROKER": "amqp://u:p@h/v", "LVL": "debug", "POD": "web-abc-xyz12", "NS": "ns1",
                   "IP": "127.0.0.1", "APP": "web", "SA": "robot"}


def test_missing_secret_key_fails_unless_optional() -> None:
    missing: dict[str, Any] = {"name": "B", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "nope"}}}
    c = {"name": "c", "env": [missing]}
    with pytest.raises(PodSpecError, match="nope"):
        container_env(c, pod([c]), lookup)
    missing["valueFrom"]["secretKeyRef"]["optional"] = True
    assert container_env(c, pod([c]), lookup) == {}


def test_missing_configmap_for_env_from_fails_unless_optional() -> None:
    ref: dict[str, Any] = {"name": "absent"}
    c = {"name": "c", "envFrom": [{"configMapRef": ref}]}
    with pytest.raises(PodSpecError, match="absent"):
        container_env(c, pod([c]), lookup)
    ref["optional"] = True
    assert container_env(c, pod([c]), lookup) == {}


def test_service_variables_are_visible_to_expansion_and_overridable() -> None:
    c = {"name": "c", "env": [{"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST)"},
                              {"name": "KUBERNETES_SERVICE_PORT", "value": "1"}]}
    env = container_env(c, pod([c]), lookup, {"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "443"})
    assert env == {"URL": "https://h", "KUBERNETES_SERVICE_PORT": "1", "KUBERNETES_SERVICE_HOST": "h"}


def test_resource_field_ref_divides_and_rounds_up() -> None:
    c = {"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}},
         "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                 {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                    "divisor": "1Mi"}}},
                 {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu",
                                                                    "divisor": "1m"}}}]}
    assert container_env(c, pod([c]), lookup) == {"CPU": "2", "MEM": "1024", "REQ": "1500"}


@pytest.mark.parametrize(("q", "value"), [
    ("500m", Fraction(1, 2)), ("1Gi", Fraction(2**30)), ("2", Fraction(2)), ("1e3", Fraction(1000)),
    ("1.5k", Fraction(1500)),
])
def test_parse_quantity(q: str, value: Fraction) -> None:
    assert parse_quantity(q) == value


def test_command_replaces_entrypoint_and_drops_cmd() -> None:
    env = {"Q": "jobs"}
    assert container_argv({"command": ["python", "-m", "x"]}, ["celery"], ["worker"], env) == ["python", "-m", "x"]
    assert container_argv({"args": ["worker", "-Q", "$(Q)"]}, ["celery"], ["x"], env) == [
        "celery", "worker", "-Q", "jobs"]
    assert container_argv({}, ["celery"], ["-A", "a"], env) == ["celery", "-A", "a"]
    assert container_argv({"command": ["echo", "$(Q)"], "args": ["$$(Q)"]}, [], [], env) == ["echo", "jobs", "$(Q)"]


def test_configmap_volume_items_and_modes() -> None:
    vol = {"name": "v", "configMap": {"name": "settings", "defaultMode": 0o600,
                                      "items": [{"key": "LEVEL", "path": "conf/level"},
                                                {"key": "blob", "path": "b", "mode": 0o400}]}}
    files = volume_files(vol, pod([{"name": "c"}]), lookup, None)
    assert [(f.path, f.content, f.mode) for f in files] == [("conf/level", b"debug", 0o600), ("b", b"\x00\x01", 0o400)]


def test_secret_volume_missing_is_an_error_unless_optional() -> None:
    vol: dict[str, Any] = {"name": "v", "secret": {"secretName": "absent"}}
    with pytest.raises(PodSpecError, match="absent"):
        volume_files(vol, pod([{"name": "c"}]), lookup, None)
    vol["secret"]["optional"] = True
    assert volume_files(vol, pod([{"name": "c"}]), lookup, None) == []


def test_projected_volume_combines_sources() -> None:
    vol = {"name": "v", "projected": {"sources": [
        {"secret": {"name": "broker", "items": [{"key": "url", "path": "broker-url"}]}},
        {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                   {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
        {"serviceAccountToken": {"path": "token"}}]}}
    files = volume_files(vol, pod([{"name": "c"}]), lookup, lambda proj: b"tok")
    assert {f.path: f.content for f in files} == {
        "broker-url": b"amqp://u:p@h/v", "labels": b'app="web"', "note": b'note="say \\"hi\\""', "token": b"tok"}


def test_image_repository_normalisation() -> None:
    assert repository("ghcr.io/celery-operator/sample-tasks:0.1.0") == "ghcr.io/celery-operator/sample-tasks"
    assert repository("localhost:5000/x@sha256:00") == "localhost:5000/x"
    assert repository("bitnami/redis:7") == "docker.io/bitnami/redis"
    assert repository("redis") == "docker.io/library/redis"


def test_default_images_map_to_the_repo_venv_and_unknown_images_fail() -> None:
    env = image_env("ghcr.io/celery-operator/sample-tasks:dev")
    assert (env.venv / "bin" / "celery").exists()
    assert env.base_env()["PATH"].startswith(f"{env.venv}/bin:")
    with pytest.raises(UnknownImageError, match="LOCALENV_IMAGE_VENVS"):
        image_env("docker.io/library/nginx:1.27")


def test_image_table_can_be_extended_from_the_environment(tmp_path: Any) -> None:
    (tmp_path / "bin").mkdir()
    table = default_images({"LOCALENV_IMAGE_VENVS": f"nginx={tmp_path}"})
    assert image_env("nginx:1.27", table) == ImageEnv(venv=tmp_path)
