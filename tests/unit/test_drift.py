"""A live child differs from what was rendered only when a field the operator sets lost its value."""

from __future__ import annotations

from decimal import Decimal

import pytest

from celery_operator.drift import differs, quantity


def test_fields_the_server_adds_do_not_count() -> None:
    rendered = {"spec": {"template": {"spec": {"containers": [{"name": "w", "ports": [{"containerPort": 1}]}]}}}}
    live = {"spec": {"template": {"spec": {"containers": [{"name": "w", "imagePullPolicy": "IfNotPresent",
                                                           "ports": [{"containerPort": 1, "protocol": "TCP"}]}],
                                           "dnsPolicy": "ClusterFirst"}}, "progressDeadlineSeconds": 600},
            "status": {"replicas": 1}}
    assert differs(rendered, live) is None


def test_a_changed_value_is_reported_with_its_path() -> None:
    assert differs({"spec": {"c": [{"image": "a:1"}]}}, {"spec": {"c": [{"image": "evil:1"}]}}) == ".spec.c[0].image"


def test_a_missing_field_or_list_item_differs() -> None:
    assert differs({"a": {"b": 1}}, {"a": {}}) == ".a.b"
    assert differs({"a": [1, 2]}, {"a": [1]}) == ".a"


def test_empty_maps_and_lists_equal_absent_ones() -> None:
    assert differs({"spec": {"securityContext": {}, "tolerations": []}}, {"spec": {}}) is None


@pytest.mark.parametrize(("rendered", "live"), [("500m", "0.5"), ("1Gi", "1024Mi"), ("1", "1000m"), (2, "2")])
def test_quantities_compare_by_meaning(rendered: object, live: object) -> None:
    assert differs({"resources": {"requests": {"cpu": rendered}}}, {"resources": {"requests": {"cpu": live}}}) is None


def test_equal_looking_strings_outside_quantity_fields_are_compared_as_written() -> None:
    assert differs({"metadata": {"labels": {"v": "1"}}}, {"metadata": {"labels": {"v": "1000m"}}}) is not None


def test_quantity_parses_kubernetes_suffixes() -> None:
    assert quantity("1Ki") == Decimal(1024)
    assert quantity("2k") == Decimal(2000)
    assert quantity("250m") == Decimal("0.25")
    assert quantity("abc") is None
