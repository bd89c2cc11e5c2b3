"""The pods' metrics module (shipped in the ConfigMap), run for real in this process.

Tasks run eagerly on a Celery app with an in-memory broker, so Celery's own tracer sends the
signals the module listens to; each test loads a fresh copy of the module with its own registry.
A real worker process, its prefork children and a real scrape: tests/integration/test_worker_metrics.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import Celery, signals
from celery.utils.serialization import UnpickleableExceptionWrapper
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from celery_operator import api, metrics
from celery_operator.config import module_sources
from localenv.procs import free_port
from tests.unit.taskmetrics import load_module, make_app

LABELS = {"namespace": "team", "app": "proj"}


@pytest.fixture
def module() -> ModuleType:
    return load_module(**{api.ENV_POOL: "fast"})


@pytest.fixture
def app() -> Celery:
    return make_app()


@pytest.fixture
def installed(module: ModuleType, app: Celery) -> Iterator[tuple[Any, CollectorRegistry]]:
    registry = CollectorRegistry()
    tm = module.install(app, LABELS, registry)
    assert tm is not None
    try:
        yield tm, registry
    finally:
        tm.disconnect()


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, {**LABELS, "pool": "fast", **labels})


def test_topic_bindings_match_like_amqp() -> None:
    m = ModuleType("m")
    exec(compile(module_sources()[api.METRICS_FILE], api.METRICS_FILE, "exec"), m.__dict__)
    cases = [("a.*.c", "a.b.c", True), ("a.*.c", "a.b.b.c", False), ("a.#", "a", True), ("a.#", "a.b.c", True),
             ("#.c", "c", True), ("#", "", True), ("*", "a.b", False), ("a.#.c", "a.c", True),
             ("a.#.c", "a.x.y.c", True), ("a.b", "a.b", True), ("a.b", "a.c", False)]
    assert [(p, k) for p, k, want in cases if m.topic_matches(p, k) != want] == []


def test_queue_is_resolved_from_exchange_and_routing_key(module: ModuleType, app: Celery) -> None:
    queues = list(app.amqp.queues.values())
    resolve = module.resolve_queue
    assert resolve(queues, "", "adds") == "adds"  # Celery's direct routing: the default exchange
    assert resolve(queues, "adds", "adds") == "adds"
    assert resolve(queues, "bus", "orders.eu.created") == "events"
    assert resolve(queues, "bus", "orders.eu.deleted") == ""
    assert resolve(queues, "broadcast", "anything") == "all"
    assert resolve(queues, "nowhere", "adds") == ""


def test_exception_label_is_the_class_name_even_when_celery_wrapped_it(module: ModuleType) -> None:
    assert module.exception_name(KeyError("x")) == "KeyError"
    wrapped = UnpickleableExceptionWrapper("mod", "CustomError", ("x",), "CustomError('x')")
    assert module.exception_name(wrapped) == "CustomError"


def test_finished_tasks_are_counted_by_outcome_with_their_runtime(
        installed: tuple[Any, CollectorRegistry], app: Celery) -> None:
    _, registry = installed
    for i in range(3):
        app.tasks["t.add"].apply((i, i), exchange="", routing_key="adds")
    app.tasks["t.fail"].apply(exchange="", routing_key="adds")
    app.tasks["t.retry"].apply(exchange="", routing_key="adds")
    app.tasks["t.reject"].apply(exchange="bus", routing_key="orders.eu.created")
    add = {"name": "t.add", "queue_name": "adds"}
    assert value(registry, "celery_task_started_total", **add) == 3
    assert value(registry, "celery_task_succeeded_total", **add) == 3
    assert value(registry, "celery_task_runtime_count", **add) == 3
    assert value(registry, "celery_task_runtime_bucket", le="+Inf", **add) == 3
    fail = {"name": "t.fail", "queue_name": "adds"}
    assert value(registry, "celery_task_failed_total", exception="KeyError", **fail) == 1
    assert value(registry, "celery_task_succeeded_total", **fail) is None
    assert value(registry, "celery_task_runtime_count", **fail) == 1
    assert value(registry, "celery_task_retried_total", name="t.retry", queue_name="adds") == 1
    assert value(registry, "celery_task_rejected_total", name="t.reject", queue_name="events") == 1
    # Every finished run has its runtime: succeeded, failed, retried and rejected ones.
    counts = [s.value for f in registry.collect() if f.name == "celery_task_runtime" for s in f.samples
              if s.name.endswith("_count")]
    assert sum(counts) == 6


def test_published_tasks_are_counted_by_name_and_destination_queue(
        installed: tuple[Any, CollectorRegistry], app: Celery) -> None:
    _, registry = installed
    add = app.tasks["t.add"]
    for i in range(4):
        add.apply_async((i, i))  # routed to the default queue
    add.apply_async((1, 1), exchange="bus", routing_key="orders.us.created")
    assert value(registry, "celery_task_sent_total", name="t.add", queue_name="adds") == 4
    assert value(registry, "celery_task_sent_total", name="t.add", queue_name="events") == 1
    assert value(registry, "celery_task_started_total", name="t.add", queue_name="adds") is None


def test_a_worker_resolves_received_messages_among_its_queues_and_sent_ones_among_all(
        installed: tuple[Any, CollectorRegistry], app: Celery) -> None:
    tm, registry = installed
    app.amqp.queues.select(["adds", "all"])  # what `celery worker -Q adds,all` does
    app.tasks["t.add"].apply_async((1, 1), exchange="bus", routing_key="orders.us.created")
    assert value(registry, "celery_task_sent_total", name="t.add", queue_name="events") == 1
    # Received from the broadcast exchange: of this worker's queues, only `all` is bound to it.
    assert tm.queue_of({"exchange": "broadcast", "routing_key": "x"}) == "all"
    assert tm.queue_of({"exchange": "bus", "routing_key": "orders.us.created"}) == ""


def test_every_series_carries_namespace_app_and_pool_never_a_hostname(
        installed: tuple[Any, CollectorRegistry], app: Celery) -> None:
    _, registry = installed
    app.tasks["t.add"].apply((1, 1))
    app.tasks["t.add"].apply_async((1, 1))
    app.tasks["t.fail"].apply()
    samples = [s for f in registry.collect() for s in f.samples]
    assert samples
    for s in samples:
        assert {"namespace": "team", "app": "proj", "pool": "fast"}.items() <= s.labels.items(), s
        assert "hostname" not in s.labels


def test_exported_names_types_and_labels_are_those_of_metrics_py(
        installed: tuple[Any, CollectorRegistry], app: Celery) -> None:
    tm, registry = installed
    for name, args in (("t.add", (1, 2)), ("t.fail", ()), ("t.retry", ()), ("t.reject", ())):
        app.tasks[name].apply(args)
        app.tasks[name].apply_async(args)
    tm.on_revoked(request=None, sender=app.tasks["t.add"])
    tm.on_received(request=type("Request", (), {"name": "t.add", "delivery_info": {}})())
    families = {f.name: f for f in registry.collect()}
    for spec in metrics.WORKER_METRICS:
        if spec.type == "gauge":
            continue  # the worker's, read at scrape time (below)
        base = spec.name.removesuffix("_total")
        assert families[base].type == spec.type, spec.name
        sample_labels = {k for s in families[base].samples for k in s.labels if k != "le"}
        assert sample_labels == set(spec.labels), spec.name


def test_worker_gauges_report_one_live_worker_and_its_active_tasks(module: ModuleType) -> None:
    collector = module.WorkerCollector({"namespace": "team", "app": "proj", "pool": "fast"})
    registry = CollectorRegistry()
    registry.register(collector)
    labels = {"namespace": "team", "app": "proj", "pool": "fast"}
    assert registry.get_sample_value(metrics.WORKER_UP, labels) == 1
    assert registry.get_sample_value(metrics.WORKER_TASKS_ACTIVE, labels) == 0
    collector.up = 0
    assert registry.get_sample_value(metrics.WORKER_UP, labels) == 0


def test_a_task_first_received_gets_its_outcome_counters_at_zero(
        installed: tuple[Any, CollectorRegistry]) -> None:
    tm, registry = installed
    request = type("Request", (), {"name": "t.add", "delivery_info": {"exchange": "", "routing_key": "adds"}})()
    tm.on_received(request=request)
    tm.on_received(request=request)
    add = {"name": "t.add", "queue_name": "adds"}
    assert value(registry, "celery_task_received_total", **add) == 2
    for name in ("started", "succeeded", "retried", "revoked", "rejected"):
        assert value(registry, f"celery_task_{name}_total", **add) == 0, name
    assert value(registry, "celery_task_failed_total", exception="", **add) == 0


def test_worker_ready_serves_the_registry_and_the_worker_gauges(
        app: Celery) -> None:
    port = free_port()
    module = load_module(**{api.ENV_POOL: "fast", api.ENV_METRICS_PORT: str(port)})
    registry = CollectorRegistry()
    tm = module.install(app, LABELS, registry)
    try:
        app.tasks["t.add"].apply((1, 2))
        signals.worker_ready.send(sender=None)
        assert tm.server is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{api.METRICS_PATH}", timeout=5) as r:
            text = r.read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        worker = tuple(sorted({**LABELS, "pool": "fast"}.items()))
        assert samples[(metrics.WORKER_UP, worker)] == 1
        task = tuple(sorted({**LABELS, "pool": "fast", "name": "t.add", "queue_name": ""}.items()))
        assert samples[("celery_task_succeeded_total", task)] == 1
        signals.worker_shutting_down.send(sender=None)
        assert registry.get_sample_value(metrics.WORKER_UP, {**LABELS, "pool": "fast"}) == 0
    finally:
        tm.disconnect()
        if tm.server is not None:
            server, _ = tm.server
            server.shutdown()
            server.server_close()


def test_beat_serves_what_it_sends_without_worker_gauges(app: Celery) -> None:
    port = free_port()
    module = load_module(**{api.ENV_METRICS_PORT: str(port)})
    registry = CollectorRegistry()
    tm = module.install(app, LABELS, registry)
    try:
        signals.beat_init.send(sender=None)
        app.tasks["t.add"].apply_async((1, 2))  # what beat's scheduler does for a due entry
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{api.METRICS_PATH}", timeout=5) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        [sent] = families["celery_task_sent"].samples
        assert (sent.labels, sent.value) == ({**LABELS, "pool": "", "name": "t.add", "queue_name": "adds"}, 1)
        assert metrics.WORKER_UP not in families
    finally:
        tm.disconnect()
        if tm.server is not None:
            server, _ = tm.server
            server.shutdown()
            server.server_close()


def test_metrics_are_off_with_port_zero(app: Celery) -> None:
    module = load_module(**{api.ENV_METRICS_PORT: "0"})
    assert module.install(app, LABELS, CollectorRegistry()) is None


def test_a_name_already_registered_turns_metrics_off_without_leaving_half_of_them(
        module: ModuleType, app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    from prometheus_client import Counter

    Counter("celery_task_failed", "the app's own", registry=registry)
    assert module.install(app, LABELS, registry) is None
    assert "no task metrics" in caplog.text
    assert {f.name for f in registry.collect()} == {"celery_task_failed"}


def test_without_prometheus_client_workers_say_so_once_ready(
        monkeypatch: pytest.MonkeyPatch, app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` fails
    module = load_module()
    assert module.prometheus_client is None
    try:
        assert module.install(app, LABELS) is None
        assert "prometheus_client is not installed" not in caplog.text
        signals.worker_ready.send(sender=None)
        assert "prometheus_client is not installed in this image" in caplog.text
    finally:
        signals.worker_ready.disconnect(module._warn_missing)
        signals.beat_init.disconnect(module._warn_missing)


def exited_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def write(path: Path, typ: str, pid: int | str, values: dict[tuple[str, str], float]) -> None:
    d = MmapedDict(str(path / f"{typ}_{pid}.db"))
    for (metric, sample), v in values.items():
        d.write_value(mmap_key(metric, sample, ["pool"], ["p"], "help"), v, 0.0)
    d.close()


def collected(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in MultiProcessCollector(None, str(path)).collect() for s in f.samples}


def test_files_of_exited_processes_are_archived_without_changing_any_sum(
        module: ModuleType, tmp_path: Path) -> None:
    gone, other_gone, me = exited_pid(), exited_pid(), os.getpid()
    write(tmp_path, "counter", gone, {("c", "c_total"): 3})
    write(tmp_path, "counter", other_gone, {("c", "c_total"): 4})
    write(tmp_path, "counter", me, {("c", "c_total"): 5})
    write(tmp_path, "histogram", gone, {("h", "h_bucket"): 2, ("h", "h_sum"): 0.5})
    write(tmp_path, "gauge_livesum", gone, {("g", "g"): 7})
    write(tmp_path, "gauge_livesum", me, {("g", "g"): 1})
    before = collected(tmp_path)

    assert module.archive_exited(str(tmp_path)) == 3
    assert {p.name for p in tmp_path.iterdir()} == {
        "counter_archive.db", f"counter_{me}.db", f"gauge_livesum_{me}.db", "histogram_archive.db"}
    after = collected(tmp_path)
    # Counters and histograms keep their sums; a live gauge of an exited process goes.
    assert after == {k: v for k, v in before.items() if k[0] != "g"} | {("g", (("pool", "p"),)): 1}
    assert after[("c_total", (("pool", "p"),))] == 12

    # Later exits add to the archive.
    write(tmp_path, "counter", exited_pid(), {("c", "c_total"): 10})
    assert module.archive_exited(str(tmp_path)) == 1
    assert collected(tmp_path)[("c_total", (("pool", "p"),))] == 22
