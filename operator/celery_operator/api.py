"""The operator's API facts, in one place: group, version, kinds, label keys, reasons."""

from __future__ import annotations

from typing import Final

GROUP: Final = "celery-operator.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "celery"
FIELD_MANAGER: Final = "celery-operator"
OPERATOR_NAME: Final = "celery-operator"

# kind -> (plural, singular, short name)
KINDS: Final[dict[str, tuple[str, str, str]]] = {
    "CeleryApp": ("celeryapps", "celeryapp", "capp"),
    "CeleryExchange": ("celeryexchanges", "celeryexchange", "cex"),
    "CeleryQueue": ("celeryqueues", "celeryqueue", "cq"),
    "CeleryWorkerPool": ("celeryworkerpools", "celeryworkerpool", "cwp"),
    "CeleryBeatSchedule": ("celerybeatschedules", "celerybeatschedule", "cbs"),
}
APP: Final = "CeleryApp"
EXCHANGE: Final = "CeleryExchange"
QUEUE: Final = "CeleryQueue"
POOL: Final = "CeleryWorkerPool"
SCHEDULE: Final = "CeleryBeatSchedule"


def plural(kind: str) -> str:
    return KINDS[kind][0]


# Labels put on everything the operator creates.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
# Our own keys: which CeleryApp / pool a child belongs to (selectors use these).
LABEL_APP: Final = f"{GROUP}/app"
LABEL_POOL: Final = f"{GROUP}/pool"

# Annotations.
ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
# On every child: a digest of its rendered form as last applied (the operator applies when it changes).
ANNOTATION_APPLIED: Final = f"{GROUP}/applied"
# Kubernetes' own: a ReplicaSet scaling down deletes the pods of lowest cost first (among equally ready pods).
ANNOTATION_POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
# On a worker pod whose consumers the operator stopped to drain it before a scale-in (RFC 3339 time): a pod
# that outlives its drain (the scale-in was called off, the operator restarted) gets its consumers back.
ANNOTATION_DRAINED: Final = f"{GROUP}/drained-at"
# Poison tasks: on a CeleryApp, ask the operator to put quarantined tasks back on their queues (replay) or to
# drop them (purge): `all`, `task=<name>[,...]` or `id=<id>[,...]`; it removes the annotation when done.
ANNOTATION_REPLAY_QUARANTINE: Final = f"{GROUP}/replay-quarantine"
ANNOTATION_PURGE_QUARANTINE: Final = f"{GROUP}/purge-quarantine"

# Components (values of LABEL_COMPONENT).
COMPONENT_WORKER: Final = "worker"
COMPONENT_BEAT: Final = "beat"
COMPONENT_BROKER: Final = "broker"
COMPONENT_RESULT_BACKEND: Final = "result-backend"
COMPONENT_CONFIG: Final = "config"
COMPONENT_METRICS: Final = "metrics"

# Prometheus Operator's API (the PodMonitor the operator creates when its CRD is installed).
MONITORING_GROUP: Final = "monitoring.coreos.com"
MONITORING_API_VERSION: Final = f"{MONITORING_GROUP}/v1"
POD_MONITOR: Final = "PodMonitor"
POD_MONITOR_PLURAL: Final = "podmonitors"

# Where the generated Celery config is mounted in every worker and beat pod.
CONFIG_MOUNT_PATH: Final = "/etc/celery-operator"
# The module workers and beat load with `celery -A`: it imports the user's app and applies the config.
BOOTSTRAP_MODULE: Final = "celery_operator_app"
ENV_BROKER_URL: Final = "CELERY_BROKER_URL"
ENV_RESULT_BACKEND: Final = "CELERY_RESULT_BACKEND"
ENV_APP: Final = "CELERY_OPERATOR_APP"
# Set on prefork workers: seconds the worker lets running tasks finish after SIGTERM before it
# cancels (and so requeues) the rest; the bootstrap turns it into Celery's soft shutdown (5.5+).
ENV_SOFT_SHUTDOWN_TIMEOUT: Final = "CELERY_OPERATOR_SOFT_SHUTDOWN_TIMEOUT"
# billiard's switch that makes SIGTERM start Celery's cold shutdown, where the soft shutdown lives.
ENV_REMAP_SIGTERM: Final = "REMAP_SIGTERM"
HEARTBEAT_FILE: Final = "/tmp/celery-worker-heartbeat"

# kombu's Redis transport redelivers a message not acknowledged within this many seconds, unless the
# app's broker_transport_options set visibility_timeout.
REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS: Final = 3600

# How long a scale-in waits at most for busy workers it drains (CeleryWorkerPool autoscaling.scaleDownDrainSeconds).
DEFAULT_SCALE_DOWN_DRAIN_SECONDS: Final = 60
# autoscaling.targetMessagesPerReplica when a pool names no target at all (it was the schema default
# before targetWaitSeconds existed: manifests written then keep scaling on depth).
DEFAULT_TARGET_MESSAGES_PER_REPLICA: Final = 10

# On a CeleryWorkerPool: pause its scaling ("true"), and hold it at N replicas while paused ("N"), as KEDA's
# autoscaling.keda.sh/paused and autoscaling.keda.sh/paused-replicas.
ANNOTATION_PAUSED: Final = "autoscaling.celery-operator.dev/paused"
ANNOTATION_PAUSED_REPLICAS: Final = "autoscaling.celery-operator.dev/paused-replicas"
# autoscaling.fallback.behavior, KEDA's names.
FALLBACK_BEHAVIORS: Final = ("static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower")

# Condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
# On CeleryWorkerPools: True while scaling is paused (spec.autoscaling.paused or the annotations).
AUTOSCALING_PAUSED: Final = "AutoscalingPaused"
# On CeleryWorkerPools: True while tasks from its queues wait in quarantine (they killed maxWorkerDeaths workers).
TASKS_QUARANTINED: Final = "TasksQuarantined"


class Reason:
    """Condition/Event reasons (CamelCase, stable: users alert on them)."""

    RECONCILED: Final = "Reconciled"
    APP_NOT_FOUND: Final = "AppNotFound"
    APP_NOT_READY: Final = "AppNotReady"
    EXCHANGE_NOT_FOUND: Final = "ExchangeNotFound"
    QUEUE_NOT_FOUND: Final = "QueueNotFound"
    DUPLICATE_QUEUE: Final = "DuplicateQueue"
    DUPLICATE_EXCHANGE: Final = "DuplicateExchange"
    DUPLICATE_ENTRY: Final = "DuplicateEntry"
    SECRET_NOT_FOUND: Final = "SecretNotFound"
    BROKER_UNREACHABLE: Final = "BrokerUnreachable"
    BROKER_CONFLICT: Final = "BrokerConflict"
    DECLARED: Final = "Declared"
    DEPLOYMENT_PROGRESSING: Final = "DeploymentProgressing"
    DEPLOYMENT_READY: Final = "DeploymentReady"
    SCALED_UP: Final = "ScaledUp"
    SCALED_DOWN: Final = "ScaledDown"
    # A scale-in drains busy workers before removing them: their consumers stopped, their tasks finishing.
    DRAINING: Final = "Draining"
    INVALID_SPEC: Final = "InvalidSpec"
    DELETED_FROM_BROKER: Final = "DeletedFromBroker"
    RETAINED_ON_BROKER: Final = "RetainedOnBroker"
    TIMEZONE_CONFLICT: Final = "TimezoneConflict"
    RECONCILE_ERROR: Final = "ReconcileError"
    BROKER_NOT_READY: Final = "BrokerNotReady"
    # A queue's changeable settings could not be applied as its RabbitMQ policy (management API).
    POLICY_NOT_APPLIED: Final = "PolicyNotApplied"
    # The broker has no such feature (e.g. a TTL on Redis): the setting has no effect.
    UNSUPPORTED_BY_BROKER: Final = "UnsupportedByBroker"
    # Redis redelivers a message unacknowledged for longer than its visibility timeout.
    VISIBILITY_TIMEOUT_TOO_SHORT: Final = "VisibilityTimeoutTooShort"
    # Messages prefetched by busy workers wait there instead of in the queue, out of other replicas' reach.
    PREFETCH_HIDES_BACKLOG: Final = "PrefetchHidesBacklog"
    # Beat skipped runs of an entry by its catch-up rule (startingDeadlineSeconds): an Event per skip.
    RUNS_SKIPPED: Final = "RunsSkipped"
    # A pool's scaling was paused / resumed (spec.autoscaling.paused or the paused annotations); reasons of the
    # AutoscalingPaused condition and Events, once per transition.
    AUTOSCALING_PAUSED: Final = "AutoscalingPaused"
    AUTOSCALING_RESUMED: Final = "AutoscalingResumed"
    AUTOSCALING_ACTIVE: Final = "AutoscalingActive"
    # A paused annotation the operator cannot read (the pool holds its replicas): condition and Warning Event.
    INVALID_PAUSE_ANNOTATION: Final = "InvalidPauseAnnotation"
    # The broker could not be reached for fallback.failureThreshold polls: the fallback replicas apply.
    FALLBACK_ENGAGED: Final = "FallbackEngaged"
    # A scheduled minimum's window reaches the next firing of its cron (found by the operator where CEL cannot
    # tell, e.g. a DST change), or it names a time zone the operator does not know.
    SCHEDULE_OVERLAPS: Final = "ScheduleOverlaps"
    INVALID_SCHEDULE: Final = "InvalidSchedule"
    # Poison tasks: tasks set aside in quarantine (condition TasksQuarantined and a Warning Event per task);
    # the replay of quarantined tasks (annotation REPLAY_QUARANTINE_ANNOTATION on the app).
    TASKS_QUARANTINED: Final = "TasksQuarantined"
    NO_TASKS_QUARANTINED: Final = "NoTasksQuarantined"
    QUARANTINE_OFF: Final = "QuarantineOff"
    QUARANTINE_REPLAYED: Final = "QuarantineReplayed"
    # A queue's spec.quarantineQueue names a declared queue: its poison tasks go to <queue>.quarantine instead.
    QUARANTINE_QUEUE_CONFLICT: Final = "QuarantineQueueConflict"
    # A restarted worker's earlier connections, which RabbitMQ kept open, closed by the operator (stale.py).
    STALE_CONNECTIONS_CLOSED: Final = "StaleConnectionsClosed"

# The generated Celery config (render/config): ConfigMap keys and bootstrap overrides.
CONFIG_JSON_KEY: Final = "celeryconfig.json"
BOOTSTRAP_FILE: Final = f"{BOOTSTRAP_MODULE}.py"
# Overrides read by the bootstrap module (tests and local runs; pods use the defaults above).
ENV_CONFIG_DIR: Final = "CELERY_OPERATOR_CONFIG_DIR"
ENV_HEARTBEAT_FILE: Final = "CELERY_OPERATOR_HEARTBEAT_FILE"
# A worker whose heartbeat file is older than this is restarted by its liveness probe.
HEARTBEAT_MAX_AGE_SECONDS: Final = 120
# The worker's liveness probe (runtime/celery_operator_probe.py, served over HTTP or run as `python3 -m`): it reads
# the state file the worker's main process writes every heartbeat, and restarts a worker that stopped consuming
# while its broker answers (CeleryWorkerPool spec.stuckAfterSeconds, default and minimum below).
PROBE_MODULE: Final = "celery_operator_probe"
PROBE_FILE: Final = f"{PROBE_MODULE}.py"
ENV_WORKER_STATE_FILE: Final = "CELERY_OPERATOR_WORKER_STATE_FILE"
WORKER_STATE_FILE: Final = "/tmp/celery-worker-state.json"
DEFAULT_STUCK_AFTER_SECONDS: Final = 60
# Where the pool runs tasks in real threads or processes, the worker's main process answers the kubelet's HTTP
# probes (the same checks, no exec per probe) on this port, as controller-runtime's managers answer theirs;
# gevent and eventlet pools keep exec probes (a thread there is a greenlet a busy task starves).
ENV_HEALTH_PORT: Final = "CELERY_OPERATOR_HEALTH_PORT"
HEALTH_PORT: Final = 8081
HEALTH_PORT_NAME: Final = "health"
READY_PATH: Final = "/readyz"
LIVE_PATH: Final = "/livez"
EXEC_PROBE_POOLS: Final = ("gevent", "eventlet")
MIN_STUCK_AFTER_SECONDS: Final = 20

# Task and worker metrics (the metrics module every worker and beat pod imports; names in metrics.py).
METRICS_MODULE: Final = "celery_operator_metrics"
METRICS_FILE: Final = f"{METRICS_MODULE}.py"
# The port worker and beat pods serve /metrics on: celery-exporter's registered default port, since
# these are celery-exporter's metrics and a pod that serves them needs no exporter beside it.
METRICS_PORT: Final = 9808
METRICS_PORT_NAME: Final = "metrics"
METRICS_PATH: Final = "/metrics"
# Key of the generated config holding the labels every metric carries (namespace, app): any process
# that loads the config knows them, producers outside the operator's pods included.
CONFIG_METRICS_LABELS_KEY: Final = "metrics_labels"
# queue -> its quarantine queue (CeleryQueue spec.quarantineQueue, else <queue>.quarantine): poison tasks.
CONFIG_QUARANTINE_QUEUES_KEY: Final = "quarantine_queues"
# The worker pool's name (CeleryWorkerPool metadata.name), set on worker pods: the `pool` label.
ENV_POOL: Final = "CELERY_OPERATOR_POOL"
# prometheus_client's multiprocess mode: prefork workers' children write their values to files here
# (on the pod's /tmp emptyDir; the root filesystem is read-only).
ENV_PROMETHEUS_MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
METRICS_MULTIPROC_DIR: Final = "/tmp/celery-operator-metrics"
# Override of METRICS_PORT for tests, benchmarks and local runs; "0" turns the metrics hooks off.
ENV_METRICS_PORT: Final = "CELERY_OPERATOR_METRICS_PORT"

# Poison tasks (runtime/celery_operator_poison.py, and the pure module it shares with the operator,
# celery_operator.poison, shipped as celery_operator_poison_rules.py): set on worker pods from the pool's
# maxWorkerDeaths; the termination message file the worker keeps its tasks in flight in.
POISON_MODULE: Final = "celery_operator_poison"
POISON_FILE: Final = f"{POISON_MODULE}.py"
POISON_RULES_MODULE: Final = "celery_operator_poison_rules"
POISON_RULES_FILE: Final = f"{POISON_RULES_MODULE}.py"
ENV_MAX_WORKER_DEATHS: Final = "CELERY_OPERATOR_MAX_WORKER_DEATHS"
ENV_TERMINATION_LOG: Final = "CELERY_OPERATOR_TERMINATION_LOG"
ENV_INFLIGHT_DIR: Final = "CELERY_OPERATOR_INFLIGHT_DIR"
TERMINATION_LOG: Final = "/dev/termination-log"
INFLIGHT_DIR: Final = "/tmp/celery-operator-inflight"
DEFAULT_MAX_WORKER_DEATHS: Final = 2
QUARANTINE_SUFFIX: Final = ".quarantine"  # <queue>.quarantine (celery_operator.poison has the same)

# Beat (render/beat.py, the scheduler module celery_operator_beat.py and the pure schedule module it shares
# with the operator, celery_operator.schedule, shipped as celery_operator_schedule.py).
BEAT_MODULE: Final = "celery_operator_beat"
BEAT_FILE: Final = f"{BEAT_MODULE}.py"
BEAT_SCHEDULER: Final = f"{BEAT_MODULE}:Scheduler"  # `celery beat -S`
SCHEDULE_MODULE: Final = "celery_operator_schedule"
SCHEDULE_FILE: Final = f"{SCHEDULE_MODULE}.py"
# Key of the generated config with what only the operator's scheduler reads per entry (its catch-up deadline).
CONFIG_BEAT_ENTRIES_KEY: Final = "beat_entries"
# Set on the beat container: the ConfigMap holding beat's state, the Lease electing the one beat that sends,
# and (downward API) the pod's namespace and name (the Lease holder's identity starts with it).
ENV_BEAT_STATE: Final = "CELERY_OPERATOR_BEAT_STATE"
ENV_BEAT_LEASE: Final = "CELERY_OPERATOR_BEAT_LEASE"
ENV_NAMESPACE: Final = "CELERY_OPERATOR_NAMESPACE"
ENV_POD_NAME: Final = "CELERY_OPERATOR_POD_NAME"
# Where beat finds its service-account token and CA (the in-cluster path; an override for tests).
ENV_SERVICE_ACCOUNT_DIR: Final = "CELERY_OPERATOR_SERVICE_ACCOUNT_DIR"
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
# The message header of every task beat sends: the run's scheduled time (RFC 3339, UTC).
BEAT_SCHEDULED_TIME_HEADER: Final = "celery_operator_scheduled_time"
# The beat Lease's timing, client-go's leader election defaults: the holder renews every retry period
# and stops sending once it has not renewed for the renew deadline; another beat takes the lease only
# after seeing it unchanged for the lease duration.
BEAT_LEASE_SECONDS: Final = 15
BEAT_RENEW_DEADLINE_SECONDS: Final = 10
BEAT_RETRY_SECONDS: Final = 2

# Flower (CeleryApp spec.flower): a Deployment and Service `<app>-flower`, an Ingress when asked for.
COMPONENT_FLOWER: Final = "flower"
FLOWER_PORT: Final = 5555
FLOWER_PORT_NAME: Final = "http"
# The image of Flower the operator runs when spec.flower.image is not set (dev/images/flower/Dockerfile).
FLOWER_VERSION: Final = "2.2.0"
DEFAULT_FLOWER_IMAGE: Final = f"ghcr.io/celery-operator/flower:{FLOWER_VERSION}"
# The app condition saying whether Flower runs, and why not.
FLOWER_READY: Final = "FlowerReady"


class FlowerReason:
    """Reasons of the FlowerReady condition."""

    DISABLED: Final = "FlowerDisabled"
    READY: Final = "FlowerReady"
    PROGRESSING: Final = "FlowerProgressing"
    # Flower is enabled with no authentication and without allowUnauthenticated: it is not run.
    AUTH_REQUIRED: Final = "FlowerAuthRequired"
    # A Secret (or key) the authentication names is missing: Flower is not run (never open instead).
    AUTH_SECRET_NOT_FOUND: Final = "FlowerAuthSecretNotFound"
    # Runs without authentication because spec.flower.allowUnauthenticated says so.
    UNAUTHENTICATED: Final = "FlowerUnauthenticated"
