"""Every Prometheus metric the operator and its pods export: names, labels and the calls that set them.

Queue metrics reuse celery-exporter's names (`celery_queue_length`, `celery_active_consumer_count`,
label `queue_name`) so existing celery-mixin dashboards and alerts work unchanged; everything about
the operator itself is prefixed `celery_operator_`. No pod or hostname labels: series identity is
the Kubernetes object (namespace, app, pool/queue), so a restarted operator continues the same series.

Task and worker metrics (`WORKER_METRICS`) are exported by the worker and beat pods themselves, from
the metrics module the ConfigMap ships (`runtime/celery_operator_metrics.py`, its table checked against
this module's by a unit test):
celery-exporter's names, types and labels, with its `hostname` label replaced by namespace, app and
pool. Prometheus' own `instance` label tells the pods of a pool apart at scrape time.

`OperatorMetrics` owns a `CollectorRegistry` (tests make fresh ones); `DEFAULT` is the operator's.
The HTTP server serves `exposition()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from celery_operator import __version__
from celery_operator.series import Counter, Family, Gauge, Histogram
from celery_operator.waits import WAIT_SOURCES

Direction = Literal["up", "down"]
# What a pod removed by a scale-in held: nothing (idle, not ready, silent), work it finished while draining,
# or work still running (no drain, or the drain's bound passed): the tasks the soft shutdown may cut.
ScaleInState = Literal["idle", "drained", "busy"]
ReconcileResult = Literal["success", "error"]
# The kind whose reconciles are counted (the operator reconciles apps: api.APP).
RECONCILED_KIND: Final = "CeleryApp"
DepthSource = Literal["management", "passive", "redis"]

# Metric names (without the `_total` / `_bucket` / `_sum` / `_count` suffixes Prometheus adds).
QUEUE_LENGTH: Final = "celery_queue_length"
QUEUE_CONSUMERS: Final = "celery_active_consumer_count"
QUEUE_IN_FLIGHT: Final = "celery_queue_messages_in_flight"
QUEUE_WAIT: Final = "celery_queue_wait_seconds"
WAIT_SOURCE: Final = "celery_operator_queue_wait_source_info"
DEPTH_SOURCE: Final = "celery_operator_queue_depth_source_info"
POOL_REPLICAS: Final = "celery_operator_pool_replicas"
POOL_MIN_REPLICAS: Final = "celery_operator_pool_min_replicas"
POOL_MAX_REPLICAS: Final = "celery_operator_pool_max_replicas"
SCALE_EVENTS: Final = "celery_operator_scale_events_total"
SCALE_IN_PODS: Final = "celery_operator_scale_in_pods_total"
BROKER_UP: Final = "celery_operator_broker_up"
BROKER_POLL_DURATION: Final = "celery_operator_broker_poll_duration_seconds"
RECONCILE_TOTAL: Final = "celery_operator_reconcile_total"
BROKER_POLLS: Final = "celery_operator_broker_polls_total"
POLLER_ERRORS: Final = "celery_operator_poller_errors_total"
QUARANTINED_TASKS: Final = "celery_operator_quarantined_tasks"
WORKER_DEATHS: Final = "celery_operator_pool_worker_deaths"
OWNED_APPS: Final = "celery_operator_owned_apps"
SHARDS_HELD: Final = "celery_operator_shards_held"
RECONCILE_DURATION: Final = "celery_operator_reconcile_duration_seconds"
BUILD_INFO: Final = "celery_operator_build_info"
# Beat entries, from beat's state ConfigMap (so they outlive a beat that stopped: an overdue entry shows).
BEAT_LAST_RUN: Final = "celery_beat_last_run_timestamp_seconds"
BEAT_NEXT_RUN: Final = "celery_beat_next_run_timestamp_seconds"
BEAT_SKIPPED_RUNS: Final = "celery_beat_skipped_runs_total"

OPERATOR_METRIC_NAMES: Final[tuple[str, ...]] = (
    QUEUE_LENGTH, QUEUE_CONSUMERS, QUEUE_IN_FLIGHT, QUEUE_WAIT, WAIT_SOURCE, DEPTH_SOURCE,
    POOL_REPLICAS, POOL_MIN_REPLICAS, POOL_MAX_REPLICAS, SCALE_EVENTS, SCALE_IN_PODS,
    BROKER_UP, BROKER_POLL_DURATION, BROKER_POLLS, POLLER_ERRORS, RECONCILE_TOTAL, RECONCILE_DURATION, BUILD_INFO,
    OWNED_APPS, SHARDS_HELD, BEAT_LAST_RUN, BEAT_NEXT_RUN, BEAT_SKIPPED_RUNS, QUARANTINED_TASKS, WORKER_DEATHS,
)
OPERATOR_COUNTERS: Final = frozenset({SCALE_EVENTS, SCALE_IN_PODS, RECONCILE_TOTAL, BROKER_POLLS, POLLER_ERRORS,
                                      BEAT_SKIPPED_RUNS})
OPERATOR_HISTOGRAMS: Final = frozenset({BROKER_POLL_DURATION, RECONCILE_DURATION})

QUEUE_LABELS: Final = ("namespace", "app", "queue_name")
POOL_LABELS: Final = ("namespace", "app", "pool")
APP_LABELS: Final = ("namespace", "app")
BEAT_LABELS: Final = ("namespace", "app", "entry")

# --- task and worker metrics, exported by worker and beat pods ---------------------------------------
TASK_SENT: Final = "celery_task_sent_total"
TASK_RECEIVED: Final = "celery_task_received_total"
TASK_STARTED: Final = "celery_task_started_total"
TASK_SUCCEEDED: Final = "celery_task_succeeded_total"
TASK_FAILED: Final = "celery_task_failed_total"
TASK_RETRIED: Final = "celery_task_retried_total"
TASK_REVOKED: Final = "celery_task_revoked_total"
TASK_REJECTED: Final = "celery_task_rejected_total"
TASK_RUNTIME: Final = "celery_task_runtime"
WORKER_UP: Final = "celery_worker_up"
WORKER_TASKS_ACTIVE: Final = "celery_worker_tasks_active"

# celery-exporter labels these by `hostname`; here the pod's CeleryApp and pool take its place.
WORKER_LABELS: Final = POOL_LABELS
TASK_LABELS: Final = (*WORKER_LABELS, "name", "queue_name")
TASK_FAILED_LABELS: Final = (*TASK_LABELS, "exception")
# celery-exporter's runtime buckets (prometheus_client's defaults), so quantiles compare.
TASK_RUNTIME_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class WorkerMetric:
    """One metric of the pods' metrics module; `role` is what that module calls it."""

    role: str
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]


WORKER_METRICS: Final = (
    WorkerMetric("sent", TASK_SENT, "counter",
                 "Task messages published, by workers, beat and any producer that loads the generated config.",
                 TASK_LABELS),
    WorkerMetric("received", TASK_RECEIVED, "counter", "Task messages a worker received from its queues.",
                 TASK_LABELS),
    WorkerMetric("started", TASK_STARTED, "counter", "Tasks a worker started to run.", TASK_LABELS),
    WorkerMetric("succeeded", TASK_SUCCEEDED, "counter", "Tasks that returned.", TASK_LABELS),
    WorkerMetric("failed", TASK_FAILED, "counter", "Tasks that raised, by exception class.", TASK_FAILED_LABELS),
    WorkerMetric("retried", TASK_RETRIED, "counter", "Task runs that ended in a retry.", TASK_LABELS),
    WorkerMetric("revoked", TASK_REVOKED, "counter", "Tasks revoked (cancelled, terminated or expired).",
                 TASK_LABELS),
    WorkerMetric("rejected", TASK_REJECTED, "counter", "Tasks that raised Reject (requeued or dead-lettered).",
                 TASK_LABELS),
    WorkerMetric("runtime", TASK_RUNTIME, "histogram",
                 "Seconds each task run took, whatever its outcome (succeeded, failed, retried, rejected).",
                 TASK_LABELS),
    WorkerMetric("up", WORKER_UP, "gauge",
                 "1 while the worker serving this scrape runs and is not shutting down: sum() counts live workers.",
                 WORKER_LABELS),
    WorkerMetric("tasks_active", WORKER_TASKS_ACTIVE, "gauge", "Tasks the worker is running now.",
                 WORKER_LABELS),
)
WORKER_METRIC_NAMES: Final = tuple(m.name for m in WORKER_METRICS)

ALL_METRIC_NAMES: Final[tuple[str, ...]] = (*OPERATOR_METRIC_NAMES, *WORKER_METRIC_NAMES)
COUNTERS: Final = OPERATOR_COUNTERS | {m.name for m in WORKER_METRICS if m.type == "counter"}
HISTOGRAMS: Final = OPERATOR_HISTOGRAMS | {m.name for m in WORKER_METRICS if m.type == "histogram"}
REPLICA_KINDS: Final = ("desired", "current", "ready")

POLL_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECONCILE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _base(name: str) -> str:
    """prometheus-client's counter families are named without `_total`."""
    return name.removesuffix("_total")


@dataclass(frozen=True)
class BeatEntryState:
    """What beat's state says of one entry (instants in seconds since the epoch)."""

    last_run: float | None
    next_run: float | None
    skipped_runs: int


class BeatCollector:
    """The beat entry metrics, exported as the state last read says: the skipped-runs counter is beat's own
    count (kept in its state), so it does not restart when the operator does."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, BeatEntryState]] = {}  # (namespace, app) -> entry -> values
        self._text: bytes | None = None

    def changed(self) -> None:
        self._text = None

    def text(self) -> bytes:
        if self._text is None:
            self._text = generate_latest(_Only(self))
        return self._text

    def collect(self) -> Iterator[Metric]:
        last = GaugeMetricFamily(BEAT_LAST_RUN, "Scheduled time of the last run beat sent of each entry.",
                                 labels=BEAT_LABELS)
        nxt = GaugeMetricFamily(BEAT_NEXT_RUN, "Scheduled time of the next run of each beat entry: in the past, "
                                "beat is late.", labels=BEAT_LABELS)
        skipped = CounterMetricFamily(_base(BEAT_SKIPPED_RUNS), "Runs of each beat entry skipped by its catch-up "
                                      "rule (startingDeadlineSeconds).", labels=BEAT_LABELS)
        for (namespace, app), entries in sorted(self.entries.items()):
            for name, e in sorted(entries.items()):
                labels = [namespace, app, name]
                if e.last_run is not None:
                    last.add_metric(labels, e.last_run)
                if e.next_run is not None:
                    nxt.add_metric(labels, e.next_run)
                skipped.add_metric(labels, e.skipped_runs)
        yield from (last, nxt, skipped)


class OperatorMetrics:
    """The operator's metrics in one registry, with typed setters and series clean-up."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._process = ProcessCollector(registry=self.registry) if process_metrics else None
        r = self.registry
        self.queue_length = Gauge(
            QUEUE_LENGTH, "Messages ready in the queue (not yet delivered to a worker).", QUEUE_LABELS,
            registry=r)
        self.queue_consumers = Gauge(
            QUEUE_CONSUMERS, "Consumers (worker channels) attached to the queue.", QUEUE_LABELS, registry=r)
        self.queue_in_flight = Gauge(
            QUEUE_IN_FLIGHT, "Messages delivered to workers and not yet acknowledged.", QUEUE_LABELS,
            registry=r)
        self.queue_wait = Gauge(
            QUEUE_WAIT, "Seconds the queue's oldest ready task has waited since it was published (or, for a "
            "message without a publish timestamp, depth / drain rate); 0 when the queue is empty.", QUEUE_LABELS,
            registry=r)
        self.wait_source = Gauge(
            WAIT_SOURCE, "How the queue's wait is known (1 for the way in use): timestamp or drain_rate.",
            (*QUEUE_LABELS, "source"), registry=r)
        self.depth_source = Gauge(
            DEPTH_SOURCE, "Where the app's queue depths come from (1 for the source in use).",
            (*APP_LABELS, "source"), registry=r)
        self.pool_replicas = Gauge(
            POOL_REPLICAS, "Worker pool replicas: desired by the operator, current and ready in the Deployment.",
            (*POOL_LABELS, "kind"), registry=r)
        self.pool_min_replicas = Gauge(
            POOL_MIN_REPLICAS, "Autoscaled worker pool's minReplicas.", POOL_LABELS, registry=r)
        self.pool_max_replicas = Gauge(
            POOL_MAX_REPLICAS, "Autoscaled worker pool's maxReplicas.", POOL_LABELS, registry=r)
        self.scale_events = Counter(
            SCALE_EVENTS, "Autoscaler changes of a worker pool's replica count.",
            (*POOL_LABELS, "direction"), registry=r)
        self.scale_in_pods = Counter(
            SCALE_IN_PODS, "Worker pods removed by the autoscaler's scale-ins, by what they held then: "
            "idle, drained (their tasks finished first) or busy.", (*POOL_LABELS, "state"), registry=r)
        self.quarantined_tasks = Gauge(
            QUARANTINED_TASKS, "Tasks waiting in the app's quarantine queues (they killed maxWorkerDeaths workers), "
            "by task name.", (*APP_LABELS, "task"), registry=r)
        self.worker_deaths = Gauge(
            WORKER_DEATHS, "The pool's running worker containers whose last run died, by how (the kubelet's reason: "
            "OOMKilled, Error, ...).", (*POOL_LABELS, "reason"), registry=r)
        self.broker_up = Gauge(
            BROKER_UP, "1 when the app's last broker poll succeeded, 0 when it failed.", APP_LABELS, registry=r)
        self.broker_poll_duration = Histogram(
            BROKER_POLL_DURATION, "Time to read the queue depths of one app from its broker.", APP_LABELS,
            buckets=POLL_BUCKETS, registry=r)
        self.broker_polls = Counter(
            BROKER_POLLS, "Broker polls of an app by result (success, error): polls are not reconciles.",
            (*APP_LABELS, "result"), registry=r)
        self.poller_errors = Counter(
            POLLER_ERRORS, "Polls of an app that raised: a bug of the operator, not a broker failure (that is a "
            "broker poll with result error). Each is logged with its traceback; the poller goes on.", APP_LABELS,
            registry=r)
        self.reconcile_count = Counter(
            RECONCILE_TOTAL, "Reconciliations by kind and result (success, error).",
            ("kind", "result"), registry=r)
        # Every result at 0 from the start (as controller-runtime's reconcile_total): "no errors" is a 0, not
        # a missing series, so the dashboard's error panel and rate()-based alerts have data before the first.
        for result in get_args(ReconcileResult):
            self.reconcile_count.inc((RECONCILED_KIND, result), 0)
        self.reconcile_duration = Histogram(
            RECONCILE_DURATION, "Time spent in one reconciliation.", ("kind",), buckets=RECONCILE_BUCKETS,
            registry=r)
        self.owned_apps = Gauge(OWNED_APPS, "CeleryApps this replica works on (those of the shards it holds).",
                                registry=r)
        self.shards_held = Gauge(SHARDS_HELD, "Shards whose Lease this replica holds.", registry=r)
        self.build_info = Gauge(BUILD_INFO, "Operator build; the value is always 1.", ("version",), registry=r)
        self.build_info.set((__version__,), 1)
        self.beat = BeatCollector()
        r.register(self.beat)
        self._families: list[Family] = [m for m in vars(self).values() if isinstance(m, Family)]

    # --- queues ---------------------------------------------------------------------------------

    def observe_queue(self, namespace: str, app: str, queue: str, ready: int, in_flight: int | None,
                      consumers: int | None) -> None:
        """One queue's depth. An unknown in-flight or consumer count removes that series."""
        self.queue_length.set((namespace, app, queue), ready)
        for metric, value in ((self.queue_in_flight, in_flight), (self.queue_consumers, consumers)):
            if value is None:
                metric.remove_matching(namespace=namespace, app=app, queue_name=queue)
            else:
                metric.set((namespace, app, queue), value)

    def observe_queue_wait(self, namespace: str, app: str, queue: str, seconds: float | None,
                           source: str | None) -> None:
        """One queue's wait and how it is known; an unknown wait removes both series, an empty queue
        (`source` None) has a wait of 0 and no source."""
        if seconds is None:
            self.queue_wait.remove_matching(namespace=namespace, app=app, queue_name=queue)
        else:
            self.queue_wait.set((namespace, app, queue), seconds)
        for other in WAIT_SOURCES:
            if other != source or seconds is None:
                self.wait_source.remove_matching(namespace=namespace, app=app, queue_name=queue, source=other)
        if seconds is not None and source is not None:
            self.wait_source.set((namespace, app, queue, source), 1)

    def set_depth_source(self, namespace: str, app: str, source: DepthSource) -> None:
        if self.depth_source.values.get((namespace, app, source)) == 1:
            return
        self.depth_source.remove_matching(namespace=namespace, app=app)
        self.depth_source.set((namespace, app, source), 1)

    def forget_queue(self, namespace: str, app: str, queue: str) -> None:
        for metric in (self.queue_length, self.queue_in_flight, self.queue_consumers, self.queue_wait,
                       self.wait_source):
            metric.remove_matching(namespace=namespace, app=app, queue_name=queue)

    # --- pools ----------------------------------------------------------------------------------

    def set_pool_replicas(self, namespace: str, app: str, pool: str, desired: int, current: int,
                          ready: int) -> None:
        for kind, value in zip(REPLICA_KINDS, (desired, current, ready), strict=True):
            self.pool_replicas.set((namespace, app, pool, kind), value)

    def set_pool_bounds(self, namespace: str, app: str, pool: str, bounds: tuple[int, int] | None) -> None:
        """(minReplicas, maxReplicas) of an autoscaled pool; None (not autoscaled) removes them."""
        if bounds is None:
            self.pool_min_replicas.remove_matching(namespace=namespace, app=app, pool=pool)
            self.pool_max_replicas.remove_matching(namespace=namespace, app=app, pool=pool)
            return
        self.pool_min_replicas.set((namespace, app, pool), bounds[0])
        self.pool_max_replicas.set((namespace, app, pool), bounds[1])

    def count_scale_event(self, namespace: str, app: str, pool: str, direction: Direction) -> None:
        self.scale_events.inc((namespace, app, pool, direction))

    def count_scale_in_pods(self, namespace: str, app: str, pool: str, state: ScaleInState, n: int) -> None:
        if n:
            self.scale_in_pods.inc((namespace, app, pool, state), n)

    def forget_pool(self, namespace: str, app: str, pool: str) -> None:
        for metric in (self.pool_replicas, self.pool_min_replicas, self.pool_max_replicas,
                       self.scale_events, self.scale_in_pods):
            metric.remove_matching(namespace=namespace, app=app, pool=pool)

    # --- brokers --------------------------------------------------------------------------------

    def set_quarantined(self, namespace: str, app: str, by_task: dict[str, int]) -> None:
        """Quarantined tasks per task name (a name no longer there loses its series)."""
        self.quarantined_tasks.remove_matching(namespace=namespace, app=app)
        for task, n in by_task.items():
            self.quarantined_tasks.set((namespace, app, task), n)

    def set_worker_deaths(self, namespace: str, app: str, pool: str, by_reason: dict[str, int]) -> None:
        self.worker_deaths.remove_matching(namespace=namespace, app=app, pool=pool)
        for reason, n in by_reason.items():
            self.worker_deaths.set((namespace, app, pool, reason), n)

    def set_broker_up(self, namespace: str, app: str, up: bool) -> None:
        self.broker_up.set((namespace, app), 1 if up else 0)

    def observe_poll(self, namespace: str, app: str, seconds: float, ok: bool = True) -> None:
        self.broker_poll_duration.observe((namespace, app), seconds)
        self.broker_polls.inc((namespace, app, "success" if ok else "error"))

    def count_poller_error(self, namespace: str, app: str, amount: float = 1) -> None:
        """A poll that raised (0: the app's series exists from its poller's start, "no errors" is a 0)."""
        self.poller_errors.inc((namespace, app), amount)

    # --- beat -------------------------------------------------------------------------------------

    def set_beat_entries(self, namespace: str, app: str, entries: dict[str, BeatEntryState]) -> None:
        """The app's beat entries as its state says (an entry not given loses its series)."""
        if self.beat.entries.get((namespace, app), {}) == entries:
            return
        if entries:
            self.beat.entries[(namespace, app)] = dict(entries)
        else:
            self.beat.entries.pop((namespace, app), None)
        self.beat.changed()

    def forget_app(self, namespace: str, app: str) -> None:
        """Remove every series of a deleted CeleryApp (its queues, pools and beat entries included)."""
        if self.beat.entries.pop((namespace, app), None) is not None:
            self.beat.changed()
        for metric in (self.queue_length, self.queue_in_flight, self.queue_consumers, self.queue_wait,
                       self.wait_source, self.depth_source, self.pool_replicas, self.pool_min_replicas,
                       self.pool_max_replicas, self.scale_events, self.scale_in_pods, self.broker_up,
                       self.broker_poll_duration, self.broker_polls, self.poller_errors,
                       self.quarantined_tasks, self.worker_deaths):
            metric.remove_matching(namespace=namespace, app=app)

    # --- sharding -------------------------------------------------------------------------------

    def set_ownership(self, apps: int, shards: int) -> None:
        self.owned_apps.set((), apps)
        self.shards_held.set((), shards)

    # --- reconciliation -------------------------------------------------------------------------

    def count_reconcile(self, kind: str, result: ReconcileResult) -> None:
        self.reconcile_count.inc((kind, result))

    def observe_reconcile(self, kind: str, seconds: float) -> None:
        self.reconcile_duration.observe((kind,), seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric: only the series that changed since are formatted."""
        parts = [m.text() for m in self._families]
        parts.append(self.beat.text())
        if self._process is not None:
            parts.append(generate_latest(_Only(self._process)))
        return b"".join(parts)


class _Only:
    """One collector, as generate_latest wants a registry."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()


DEFAULT: Final = OperatorMetrics(process_metrics=True)
