"""The operator's metrics: names, labels, values, series clean-up and the exposition format."""

from __future__ import annotations

import subprocess

import pytest

from celery_operator import __version__, metrics
from celery_operator.metrics import (
    ALL_METRIC_NAMES,
    COUNTERS,
    HISTOGRAMS,
    OPERATOR_COUNTERS,
    OPERATOR_HISTOGRAMS,
    OPERATOR_METRIC_NAMES,
    WORKER_METRIC_NAMES,
    WORKER_METRICS,
    OperatorMetrics,
)


@pytest.fixture
def m() -> OperatorMetrics:
    return OperatorMetrics()


def sample(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def populate(m: OperatorMetrics) -> None:
    for app in ("proj", "other"):
        m.observe_queue("ns", app, "default", 12, 4, 2)
        m.observe_queue("ns", app, "low_queue", 3, 0, 1)
        m.set_depth_source("ns", app, "management")
        m.set_pool_replicas("ns", app, "low", 3, 2, 1)
        m.set_pool_bounds("ns", app, "low", (0, 4))
        m.count_scale_event("ns", app, "low", "up")
        m.set_pool_replicas("ns", app, "high", 1, 1, 1)
        m.set_broker_up("ns", app, True)
        m.observe_poll("ns", app, 0.02)
        m.count_poller_error("ns", app)
        m.set_beat_entries("ns", app, {"tick": metrics.BeatEntryState(1767225600.0, 1767225610.0, 3)})
    m.count_reconcile("CeleryApp", "success")


def exported_series(m: OperatorMetrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in m.registry.collect() for s in family.samples}


def test_queue_metrics_use_celery_exporter_names_and_labels(m: OperatorMetrics) -> None:
    m.observe_queue("ns", "proj", "default", ready=12, in_flight=4, consumers=2)
    labels = {"namespace": "ns", "app": "proj", "queue_name": "default"}
    assert sample(m, "celery_queue_length", **labels) == 12
    assert sample(m, "celery_active_consumer_count", **labels) == 2
    assert sample(m, "celery_queue_messages_in_flight", **labels) == 4


def test_unknown_in_flight_and_consumers_remove_their_series_instead_of_reporting_zero(
    m: OperatorMetrics,
) -> None:
    m.observe_queue("ns", "proj", "default", 12, 4, 2)
    m.observe_queue("ns", "proj", "default", 7, None, None)
    labels = {"namespace": "ns", "app": "proj", "queue_name": "default"}
    assert sample(m, "celery_queue_length", **labels) == 7
    assert sample(m, "celery_queue_messages_in_flight", **labels) is None
    assert sample(m, "celery_active_consumer_count", **labels) is None


def test_depth_source_keeps_one_series_per_app(m: OperatorMetrics) -> None:
    m.set_depth_source("ns", "proj", "management")
    m.set_depth_source("ns", "proj", "passive")
    assert sample(m, metrics.DEPTH_SOURCE, namespace="ns", app="proj", source="passive") == 1
    assert sample(m, metrics.DEPTH_SOURCE, namespace="ns", app="proj", source="management") is None


def test_pool_replicas_are_one_series_per_kind(m: OperatorMetrics) -> None:
    m.set_pool_replicas("ns", "proj", "low", desired=3, current=2, ready=1)
    got = {k: sample(m, "celery_operator_pool_replicas", namespace="ns", app="proj", pool="low", kind=k)
           for k in ("desired", "current", "ready")}
    assert got == {"desired": 3, "current": 2, "ready": 1}


def test_pool_bounds_are_exported_for_autoscaled_pools_only(m: OperatorMetrics) -> None:
    m.set_pool_bounds("ns", "proj", "low", (0, 4))
    assert sample(m, "celery_operator_pool_max_replicas", namespace="ns", app="proj", pool="low") == 4
    assert sample(m, "celery_operator_pool_min_replicas", namespace="ns", app="proj", pool="low") == 0
    m.set_pool_bounds("ns", "proj", "low", None)
    assert sample(m, "celery_operator_pool_max_replicas", namespace="ns", app="proj", pool="low") is None


def test_scale_events_count_by_direction(m: OperatorMetrics) -> None:
    for direction in ("up", "up", "down"):
        m.count_scale_event("ns", "proj", "low", direction)
    labels = {"namespace": "ns", "app": "proj", "pool": "low"}
    assert sample(m, "celery_operator_scale_events_total", **labels, direction="up") == 2
    assert sample(m, "celery_operator_scale_events_total", **labels, direction="down") == 1


def test_broker_up_and_poll_duration(m: OperatorMetrics) -> None:
    m.set_broker_up("ns", "proj", False)
    m.observe_poll("ns", "proj", 0.02)
    m.observe_poll("ns", "proj", 3.0)
    assert sample(m, "celery_operator_broker_up", namespace="ns", app="proj") == 0
    assert sample(m, "celery_operator_broker_poll_duration_seconds_count", namespace="ns", app="proj") == 2
    assert sample(m, "celery_operator_broker_poll_duration_seconds_bucket",
                  namespace="ns", app="proj", le="0.025") == 1
    m.set_broker_up("ns", "proj", True)
    assert sample(m, "celery_operator_broker_up", namespace="ns", app="proj") == 1


def test_reconciles_are_counted_by_result_and_timed(m: OperatorMetrics) -> None:
    m.count_reconcile("CeleryQueue", "success")
    m.count_reconcile("CeleryQueue", "error")
    m.observe_reconcile("CeleryQueue", 0.1)
    m.observe_reconcile("CeleryQueue", 0.2)
    assert sample(m, "celery_operator_reconcile_total", kind="CeleryQueue", result="success") == 1
    assert sample(m, "celery_operator_reconcile_total", kind="CeleryQueue", result="error") == 1
    assert sample(m, "celery_operator_reconcile_duration_seconds_count", kind="CeleryQueue") == 2


def test_app_reconciles_count_every_result_from_zero_so_no_errors_is_data(m: OperatorMetrics) -> None:
    for result in ("success", "error"):
        assert sample(m, "celery_operator_reconcile_total", kind="CeleryApp", result=result) == 0
    assert sample(m, "celery_operator_reconcile_total", kind="CeleryApp", result="retry") is None  # no such result


def test_build_info_carries_the_package_version(m: OperatorMetrics) -> None:
    assert sample(m, "celery_operator_build_info", version=__version__) == 1


def test_forget_pool_removes_only_that_pools_series(m: OperatorMetrics) -> None:
    populate(m)
    before = exported_series(m)
    m.forget_pool("ns", "proj", "low")
    gone = before - exported_series(m)
    assert gone
    assert all(("app", "proj") in labels and ("pool", "low") in labels for _, labels in gone)
    assert sample(m, "celery_operator_pool_replicas", namespace="ns", app="other", pool="low",
                  kind="desired") == 3
    assert sample(m, "celery_operator_pool_replicas", namespace="ns", app="proj", pool="high",
                  kind="desired") == 1


def test_forget_queue_removes_only_that_queues_series(m: OperatorMetrics) -> None:
    populate(m)
    m.forget_queue("ns", "proj", "low_queue")
    assert sample(m, "celery_queue_length", namespace="ns", app="proj", queue_name="low_queue") is None
    assert sample(m, "celery_active_consumer_count", namespace="ns", app="proj", queue_name="low_queue") is None
    assert sample(m, "celery_queue_length", namespace="ns", app="proj", queue_name="default") == 12
    assert sample(m, "celery_queue_length", namespace="ns", app="other", queue_name="low_queue") == 3


def test_forget_app_removes_every_series_of_the_app_and_nothing_else(m: OperatorMetrics) -> None:
    populate(m)
    m.forget_app("ns", "proj")
    remaining = exported_series(m)
    assert not [s for s in remaining if ("app", "proj") in s[1]]
    assert [s for s in remaining if ("app", "other") in s[1]]
    assert sample(m, "celery_operator_build_info", version=__version__) == 1
    # A forgotten series comes back when the app does.
    m.set_broker_up("ns", "proj", True)
    assert sample(m, "celery_operator_broker_up", namespace="ns", app="proj") == 1


def test_operator_metric_names_list_exactly_what_the_registry_exports(m: OperatorMetrics) -> None:
    populate(m)
    families = {family.name + ("_total" if family.type == "counter" else ""): family.type
                for family in m.registry.collect()}
    assert set(families) == set(OPERATOR_METRIC_NAMES)
    assert {n for n, t in families.items() if t == "counter"} == OPERATOR_COUNTERS
    assert {n for n, t in families.items() if t == "histogram"} == OPERATOR_HISTOGRAMS


def test_all_metric_names_are_the_operators_and_the_workers_each_once() -> None:
    assert len(set(ALL_METRIC_NAMES)) == len(ALL_METRIC_NAMES)
    assert set(ALL_METRIC_NAMES) == set(OPERATOR_METRIC_NAMES) | set(WORKER_METRIC_NAMES)
    assert OPERATOR_COUNTERS | {m.name for m in WORKER_METRICS if m.type == "counter"} == COUNTERS
    assert OPERATOR_HISTOGRAMS | {metrics.TASK_RUNTIME} == HISTOGRAMS


def test_worker_metrics_use_celery_exporter_names_with_pool_labels_instead_of_hostname() -> None:
    by_name = {m.name: m for m in WORKER_METRICS}
    # celery-exporter's counters (`_total`), its runtime histogram and its worker gauges.
    assert {n for n, m in by_name.items() if m.type == "counter"} == {
        f"celery_task_{state}_total"
        for state in ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")}
    assert {n for n, m in by_name.items() if m.type != "counter"} == {
        "celery_task_runtime", "celery_worker_up", "celery_worker_tasks_active"}
    for m in WORKER_METRICS:
        assert "hostname" not in m.labels, m.name
        assert m.labels[:3] == ("namespace", "app", "pool"), m.name
    assert by_name["celery_task_failed_total"].labels[3:] == ("name", "queue_name", "exception")
    assert by_name["celery_worker_up"].labels == ("namespace", "app", "pool")
    assert len({m.role for m in WORKER_METRICS}) == len(WORKER_METRICS)


def test_no_series_carries_pod_or_host_labels(m: OperatorMetrics) -> None:
    populate(m)
    labels = {k for _, series_labels in exported_series(m) for k, _ in series_labels}
    assert labels.isdisjoint({"pod", "hostname", "host", "instance", "node"})


def test_fresh_registries_are_independent() -> None:
    a, b = OperatorMetrics(), OperatorMetrics()
    a.set_broker_up("ns", "proj", True)
    assert b.registry.get_sample_value("celery_operator_broker_up", {"namespace": "ns", "app": "proj"}) is None


def test_the_default_instance_exports_process_metrics() -> None:
    metrics.DEFAULT.set_broker_up("test-default", "proj", True)
    try:
        assert b"celery_operator_broker_up" in metrics.DEFAULT.exposition()
        assert b"process_cpu_seconds_total" in metrics.DEFAULT.exposition()
    finally:
        metrics.DEFAULT.forget_app("test-default", "proj")


# celery-exporter's name for the consumer gauge ends in `_count`, which promtool's linter reserves for
# histograms. We keep the name on purpose (celery-mixin dashboards query it); it is the only finding.
COMPAT_LINT_FINDING = (
    'celery_active_consumer_count non-histogram and non-summary metrics should not have "_count" suffix'
)


def promtool_check_metrics(promtool: str, text: bytes) -> tuple[int, set[str]]:
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    findings = {line.strip() for line in (run.stdout + run.stderr).decode().splitlines() if line.strip()}
    return run.returncode, findings


def test_promtool_accepts_the_exposition_apart_from_the_celery_exporter_compat_name(
    m: OperatorMetrics, promtool: str
) -> None:
    populate(m)
    m.count_reconcile("CeleryApp", "error")
    rc, findings = promtool_check_metrics(promtool, m.exposition())
    assert findings == {COMPAT_LINT_FINDING}
    assert rc == 3  # promtool's "lint problems" exit code, not a parse failure (1)


def test_promtool_finds_nothing_in_our_own_metric_names(m: OperatorMetrics, promtool: str) -> None:
    populate(m)
    m.queue_consumers.clear()
    assert promtool_check_metrics(promtool, m.exposition()) == (0, set())


def test_beat_entries_are_exported_as_beats_state_says_and_leave_with_their_entry(m: OperatorMetrics) -> None:
    m.set_beat_entries("ns", "proj", {"tick": metrics.BeatEntryState(1767225600.0, 1767225610.0, 3),
                                      "new": metrics.BeatEntryState(None, 1767225660.0, 0)})
    labels = {"namespace": "ns", "app": "proj", "entry": "tick"}
    assert sample(m, "celery_beat_last_run_timestamp_seconds", **labels) == 1767225600.0
    assert sample(m, "celery_beat_next_run_timestamp_seconds", **labels) == 1767225610.0
    assert sample(m, "celery_beat_skipped_runs_total", **labels) == 3
    assert sample(m, "celery_beat_last_run_timestamp_seconds", namespace="ns", app="proj", entry="new") is None
    m.set_beat_entries("ns", "proj", {"new": metrics.BeatEntryState(1767225660.0, 1767225720.0, 0)})
    assert sample(m, "celery_beat_next_run_timestamp_seconds", **labels) is None
    assert sample(m, "celery_beat_last_run_timestamp_seconds", namespace="ns", app="proj", entry="new") == 1767225660
    m.forget_app("ns", "proj")
    assert sample(m, "celery_beat_next_run_timestamp_seconds", namespace="ns", app="proj", entry="new") is None


def test_the_served_exposition_follows_beat_entries_as_they_change_and_leave(m: OperatorMetrics) -> None:
    line = b'celery_beat_next_run_timestamp_seconds{app="proj",entry="tick",namespace="ns"}'
    m.set_beat_entries("ns", "proj", {"tick": metrics.BeatEntryState(1767225600.0, 1767225610.0, 3)})
    assert line + b" 1.76722561e+09" in m.exposition()
    m.set_beat_entries("ns", "proj", {"tick": metrics.BeatEntryState(1767225610.0, 1767225620.0, 3)})
    assert line + b" 1.76722562e+09" in m.exposition()
    m.forget_app("ns", "proj")
    assert b'entry="tick"' not in m.exposition()
