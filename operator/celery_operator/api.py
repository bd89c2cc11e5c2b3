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

# Components (values of LABEL_COMPONENT).
COMPONENT_WORKER: Final = "worker"
COMPONENT_BEAT: Final = "beat"
COMPONENT_BROKER: Final = "broker"
COMPONENT_RESULT_BACKEND: Final = "result-backend"
COMPONENT_CONFIG: Final = "config"

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

# Condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"


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
    DEPTH_FROM_PASSIVE_DECLARE: Final = "DepthFromPassiveDeclare"
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

# The generated Celery config (render/config): ConfigMap keys and bootstrap overrides.
CONFIG_JSON_KEY: Final = "celeryconfig.json"
BOOTSTRAP_FILE: Final = f"{BOOTSTRAP_MODULE}.py"
# Overrides read by the bootstrap module (tests and local runs; pods use the defaults above).
ENV_CONFIG_DIR: Final = "CELERY_OPERATOR_CONFIG_DIR"
ENV_HEARTBEAT_FILE: Final = "CELERY_OPERATOR_HEARTBEAT_FILE"
# A worker whose heartbeat file is older than this is restarted by its liveness probe.
HEARTBEAT_MAX_AGE_SECONDS: Final = 120
