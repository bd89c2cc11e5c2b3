"""Typed views of each custom resource's spec.

The operator reads specs that the API server has already defaulted (the CRD schema is the one
source of defaults; `celery_operator.schema.apply_defaults` applies the same defaults offline for
`celery-operator render`). These classes only give the dicts names and types; they hold no defaults
of their own except "Celery name defaults to metadata.name", which a schema cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from celery_operator import api

JSON = Any
Body = dict[str, Any]


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    creation_timestamp: str = ""  # RFC 3339; orders duplicates (the older object wins)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Body) -> Meta:
        m = body.get("metadata", {})
        return cls(
            name=m["name"],
            namespace=m.get("namespace", "default"),
            uid=m.get("uid", ""),
            generation=int(m.get("generation", 0) or 0),
            labels=dict(m.get("labels") or {}),
            creation_timestamp=str(m.get("creationTimestamp") or ""),
            annotations={str(k): str(v) for k, v in (m.get("annotations") or {}).items()},
        )


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str

    @classmethod
    def of(cls, d: Body | None, default_key: str = "url") -> SecretKeyRef | None:
        if not d:
            return None
        return cls(name=d["name"], key=d.get("key", default_key))


@dataclass(frozen=True)
class Storage:
    size: str
    storage_class_name: str | None

    @classmethod
    def of(cls, d: Body | None) -> Storage | None:
        if not d:
            return None
        return cls(size=d["size"], storage_class_name=d.get("storageClassName"))


@dataclass(frozen=True)
class ManagedServer:
    """A broker or result backend the operator runs as a StatefulSet."""

    kind: Literal["rabbitmq", "redis"]
    image: str
    storage: Storage | None
    resources: Body

    @classmethod
    def of(cls, kind: Literal["rabbitmq", "redis"], d: Body) -> ManagedServer:
        return cls(kind=kind, image=d["image"], storage=Storage.of(d.get("storage")),
                   resources=dict(d.get("resources") or {}))


@dataclass(frozen=True)
class BrokerSpec:
    """Exactly one of managed / external / rabbitmq_cluster is set (CEL enforces it)."""

    managed: ManagedServer | None = None
    external: SecretKeyRef | None = None
    management_url: SecretKeyRef | None = None  # RabbitMQ management API URL (external brokers)
    rabbitmq_cluster: str | None = None  # name of a RabbitmqCluster (cluster-operator)

    @classmethod
    def of(cls, d: Body | None) -> BrokerSpec | None:
        if not d:
            return None
        if "rabbitmq" in d:
            return cls(managed=ManagedServer.of("rabbitmq", d["rabbitmq"]))
        if "redis" in d:
            return cls(managed=ManagedServer.of("redis", d["redis"]))
        if "external" in d:
            ext = d["external"]
            return cls(external=SecretKeyRef.of(ext["urlSecretRef"]),
                       management_url=SecretKeyRef.of(ext.get("managementUrlSecretRef"),
                                                      default_key="managementUrl"))
        if "rabbitmqClusterRef" in d:
            return cls(rabbitmq_cluster=d["rabbitmqClusterRef"]["name"])
        raise ValueError("broker names none of rabbitmq, redis, external, rabbitmqClusterRef")


@dataclass(frozen=True)
class PodTemplate:
    """Pod overrides a user may set on the app (all pods) and on a pool (its pods)."""

    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Body] = field(default_factory=list)
    affinity: Body | None = None
    service_account_name: str | None = None
    priority_class_name: str | None = None
    security_context: Body | None = None  # pod-level
    container_security_context: Body | None = None
    image_pull_secrets: list[Body] = field(default_factory=list)

    @classmethod
    def of(cls, d: Body | None) -> PodTemplate:
        d = d or {}
        return cls(
            labels=dict(d.get("labels") or {}),
            annotations=dict(d.get("annotations") or {}),
            node_selector=dict(d.get("nodeSelector") or {}),
            tolerations=list(d.get("tolerations") or []),
            affinity=d.get("affinity"),
            service_account_name=d.get("serviceAccountName"),
            priority_class_name=d.get("priorityClassName"),
            security_context=d.get("securityContext"),
            container_security_context=d.get("containerSecurityContext"),
            image_pull_secrets=list(d.get("imagePullSecrets") or []),
        )


@dataclass(frozen=True)
class FlowerOAuth:
    """Flower's OAuth 2 login (its --auth_provider, --auth, --oauth2_* options), secrets from Secrets."""

    provider: str  # google | github | gitlab
    allowed_emails: str  # Flower's --auth: a regular expression of the emails let in
    redirect_uri: str
    client_id: SecretKeyRef
    client_secret: SecretKeyRef

    @classmethod
    def of(cls, d: Body | None) -> FlowerOAuth | None:
        if not d:
            return None
        client_id = SecretKeyRef.of(d.get("clientIdSecretRef"), default_key="clientId")
        client_secret = SecretKeyRef.of(d.get("clientSecretSecretRef"), default_key="clientSecret")
        assert client_id is not None and client_secret is not None  # required by the schema
        return cls(provider=d["provider"], allowed_emails=d["allowedEmails"], redirect_uri=d["redirectUri"],
                   client_id=client_id, client_secret=client_secret)


@dataclass(frozen=True)
class FlowerIngress:
    host: str
    class_name: str | None = None
    tls_secret_name: str | None = None

    @classmethod
    def of(cls, d: Body | None) -> FlowerIngress | None:
        if not d:
            return None
        return cls(host=d["host"], class_name=d.get("className"), tls_secret_name=d.get("tlsSecretName"))


@dataclass(frozen=True)
class Flower:
    """spec.flower: Flower for the app, behind basic auth or OAuth (or open only when allowed explicitly)."""

    enabled: bool = False
    image: str = api.DEFAULT_FLOWER_IMAGE
    load_app: bool = False  # the image holds the app's code: Flower imports spec.app (task names known)
    basic_auth: SecretKeyRef | None = None
    oauth: FlowerOAuth | None = None
    allow_unauthenticated: bool = False
    url_prefix: str | None = None
    ingress: FlowerIngress | None = None
    resources: Body = field(default_factory=dict)

    @classmethod
    def of(cls, d: Body | None) -> Flower:
        if not d:
            return cls()
        auth = d.get("auth") or {}
        return cls(enabled=bool(d.get("enabled", False)), image=d.get("image") or api.DEFAULT_FLOWER_IMAGE,
                   load_app=bool(d.get("loadApp", False)),
                   basic_auth=SecretKeyRef.of(auth.get("basicAuthSecretRef"), default_key="auth"),
                   oauth=FlowerOAuth.of(auth.get("oauth")),
                   allow_unauthenticated=bool(d.get("allowUnauthenticated", False)),
                   url_prefix=(d.get("urlPrefix") or "").strip("/") or None,
                   ingress=FlowerIngress.of(d.get("ingress")), resources=dict(d.get("resources") or {}))

    @property
    def authenticated(self) -> bool:
        return self.basic_auth is not None or self.oauth is not None

    def secret_refs(self) -> list[SecretKeyRef]:
        """Every Secret key Flower's authentication reads."""
        out = [self.basic_auth] if self.basic_auth is not None else []
        if self.oauth is not None:
            out += [self.oauth.client_id, self.oauth.client_secret]
        return out


@dataclass(frozen=True)
class CeleryApp:
    meta: Meta
    image: str
    image_pull_policy: str | None
    app: str  # the `-A` value of the user's code
    imports: list[str]
    broker: BrokerSpec
    result_backend: BrokerSpec | None
    default_queue: str
    default_exchange: str
    default_routing_key: str
    config: dict[str, JSON]
    env: list[Body]
    env_from: list[Body]
    pod_template: PodTemplate
    max_countdown_seconds: int | None = None  # the longest countdown/ETA the app's code uses
    flower: Flower = field(default_factory=Flower)

    @classmethod
    def of(cls, body: Body) -> CeleryApp:
        s = body["spec"]
        broker = BrokerSpec.of(s["broker"])
        assert broker is not None
        return cls(
            meta=Meta.of(body),
            image=s["image"],
            image_pull_policy=s.get("imagePullPolicy"),
            app=s["app"],
            imports=list(s.get("imports") or []),
            broker=broker,
            result_backend=BrokerSpec.of(s.get("resultBackend")),
            default_queue=s["defaultQueue"],
            default_exchange=s["defaultExchange"],
            default_routing_key=s["defaultRoutingKey"],
            config=dict(s.get("config") or {}),
            env=list(s.get("env") or []),
            env_from=list(s.get("envFrom") or []),
            pod_template=PodTemplate.of(s.get("podTemplate")),
            max_countdown_seconds=s.get("maxCountdownSeconds"),
            flower=Flower.of(s.get("flower")),
        )

    @property
    def acks_late(self) -> bool:
        """Whether the app's config sets task_acks_late (tasks may still set it one by one)."""
        return self.config.get("task_acks_late") is True

    @property
    def visibility_timeout_seconds(self) -> float:
        """The Redis visibility timeout the app's broker_transport_options give (kombu's default if none)."""
        opts = self.config.get("broker_transport_options")
        value = opts.get("visibility_timeout") if isinstance(opts, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return float(api.REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS)


@dataclass(frozen=True)
class CeleryExchange:
    meta: Meta
    app_name: str
    name: str
    type: Literal["direct", "topic", "fanout", "headers"]
    durable: bool
    auto_delete: bool
    arguments: dict[str, JSON]
    deletion_policy: Literal["Retain", "Delete"]

    @classmethod
    def of(cls, body: Body) -> CeleryExchange:
        s = body["spec"]
        meta = Meta.of(body)
        return cls(
            meta=meta,
            app_name=s["appRef"]["name"],
            name=s.get("name") or meta.name,
            type=s["type"],
            durable=s["durable"],
            auto_delete=s["autoDelete"],
            arguments=dict(s.get("arguments") or {}),
            deletion_policy=s["deletionPolicy"],
        )


@dataclass(frozen=True)
class DeadLetter:
    exchange: str
    routing_key: str | None


@dataclass(frozen=True)
class CeleryQueue:
    meta: Meta
    app_name: str
    name: str
    exchange: str | None  # None: Celery's implicit direct exchange named like the queue
    routing_key: str  # defaults to the queue's name
    durable: bool
    auto_delete: bool
    max_priority: int | None
    message_ttl_seconds: float | None
    max_length: int | None
    dead_letter: DeadLetter | None
    queue_type: Literal["classic", "quorum"]
    deletion_policy: Literal["Retain", "Delete"]
    tasks: list[str]  # task names (globs allowed) routed to this queue via task_routes
    quarantine_queue: str | None = None  # spec.quarantineQueue (None: <name>.quarantine)

    @classmethod
    def of(cls, body: Body) -> CeleryQueue:
        s = body["spec"]
        meta = Meta.of(body)
        name = s.get("name") or meta.name
        dl = s.get("deadLetter")
        return cls(
            meta=meta,
            app_name=s["appRef"]["name"],
            name=name,
            exchange=s.get("exchange"),
            routing_key=s.get("routingKey") or name,
            durable=s["durable"],
            auto_delete=s["autoDelete"],
            max_priority=s.get("maxPriority"),
            message_ttl_seconds=s.get("messageTTLSeconds"),
            max_length=s.get("maxLength"),
            dead_letter=DeadLetter(dl["exchange"], dl.get("routingKey")) if dl else None,
            queue_type=s["queueType"],
            deletion_policy=s["deletionPolicy"],
            tasks=list(s.get("tasks") or []),
            quarantine_queue=s.get("quarantineQueue"),
        )


@dataclass(frozen=True)
class Fallback:
    """autoscaling.fallback: replicas after failure_threshold failed polls in a row, per behavior (KEDA's)."""

    failure_threshold: int
    replicas: int
    behavior: Literal["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]

    @classmethod
    def of(cls, d: Body | None) -> Fallback | None:
        if not d:
            return None
        return cls(failure_threshold=int(d.get("failureThreshold", 3)), replicas=int(d["replicas"]),
                   behavior=d.get("behavior", "static"))


@dataclass(frozen=True)
class ScalingPolicy:
    type: Literal["Pods", "Percent"]
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """autoscaling.scaleUp / scaleDown: the HPA's HPAScalingRules without its stabilization window."""

    policies: tuple[ScalingPolicy, ...]
    select_policy: Literal["Max", "Min", "Disabled"]

    @classmethod
    def of(cls, d: Body | None) -> ScalingRules | None:
        if not d:
            return None
        return cls(tuple(ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                         for p in d.get("policies") or []), d.get("selectPolicy", "Max"))


@dataclass(frozen=True)
class ScaleSchedule:
    """One autoscaling.schedules item: from each firing of cron (in timezone), for duration_seconds, the pool's
    minimum is at least min_replicas."""

    name: str
    cron: str
    timezone: str
    duration_seconds: int
    min_replicas: int

    @classmethod
    def of(cls, d: Body) -> ScaleSchedule:
        return cls(name=d["name"], cron=d["cron"], timezone=d.get("timezone", "UTC"),
                   duration_seconds=int(d["durationSeconds"]), min_replicas=int(d["minReplicas"]))


@dataclass(frozen=True)
class Autoscaling:
    """At least one of the two targets is set: with neither, depth at the default target."""

    min_replicas: int
    max_replicas: int
    target_messages_per_replica: int | None
    activation_messages: int
    poll_interval_seconds: int
    scale_up_stabilization_seconds: int
    scale_down_stabilization_seconds: int
    count_in_flight: bool
    target_wait_seconds: int | None
    scale_down_drain_seconds: int
    paused: bool = False
    paused_replicas: int | None = None
    fallback: Fallback | None = None
    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None
    queue_aggregation: Literal["Sum", "Max"] = "Sum"
    queue_weights: tuple[tuple[str, int], ...] = ()  # (queue, weight), sorted; queues not named weigh 1
    schedules: tuple[ScaleSchedule, ...] = ()

    def weight(self, queue: str) -> int:
        return dict(self.queue_weights).get(queue, 1)

    @classmethod
    def of(cls, d: Body | None) -> Autoscaling | None:
        if not d:
            return None
        return cls(
            min_replicas=d["minReplicas"],
            max_replicas=d["maxReplicas"],
            target_messages_per_replica=d.get("targetMessagesPerReplica", None if "targetWaitSeconds" in d
                                              else api.DEFAULT_TARGET_MESSAGES_PER_REPLICA),
            activation_messages=d["activationMessages"],
            poll_interval_seconds=d["pollIntervalSeconds"],
            scale_up_stabilization_seconds=d["scaleUpStabilizationSeconds"],
            scale_down_stabilization_seconds=d["scaleDownStabilizationSeconds"],
            count_in_flight=d["countInFlight"],
            target_wait_seconds=d.get("targetWaitSeconds"),
            # A CRD older than this operator has no such field: its default.
            scale_down_drain_seconds=d.get("scaleDownDrainSeconds", api.DEFAULT_SCALE_DOWN_DRAIN_SECONDS),
            paused=bool(d.get("paused", False)),
            paused_replicas=d.get("pausedReplicas"),
            fallback=Fallback.of(d.get("fallback")),
            scale_up=ScalingRules.of(d.get("scaleUp")),
            scale_down=ScalingRules.of(d.get("scaleDown")),
            queue_aggregation=d.get("queueAggregation", "Sum"),
            queue_weights=tuple(sorted((str(q), int(w)) for q, w in (d.get("queueWeights") or {}).items())),
            schedules=tuple(ScaleSchedule.of(s) for s in d.get("schedules") or []),
        )


@dataclass(frozen=True)
class CeleryWorkerPool:
    meta: Meta
    app_name: str
    queues: list[str]
    replicas: int
    concurrency: int
    pool: Literal["prefork", "threads", "gevent", "eventlet", "solo"]
    prefetch_multiplier: int
    max_tasks_per_child: int | None
    max_memory_per_child_kib: int | None
    time_limit_seconds: int | None
    soft_time_limit_seconds: int | None
    termination_grace_period_seconds: int
    resources: Body
    image: str | None
    extra_args: list[str]
    env: list[Body]
    pod_template: PodTemplate
    autoscaling: Autoscaling | None
    max_worker_deaths: int = api.DEFAULT_MAX_WORKER_DEATHS
    stuck_after_seconds: int = api.DEFAULT_STUCK_AFTER_SECONDS

    @classmethod
    def of(cls, body: Body) -> CeleryWorkerPool:
        s = body["spec"]
        return cls(
            meta=Meta.of(body),
            app_name=s["appRef"]["name"],
            queues=list(s["queues"]),
            replicas=s["replicas"],
            concurrency=s["concurrency"],
            pool=s["pool"],
            prefetch_multiplier=s["prefetchMultiplier"],
            max_tasks_per_child=s.get("maxTasksPerChild"),
            max_memory_per_child_kib=s.get("maxMemoryPerChildKiB"),
            max_worker_deaths=s.get("maxWorkerDeaths", api.DEFAULT_MAX_WORKER_DEATHS),
            time_limit_seconds=s.get("timeLimitSeconds"),
            soft_time_limit_seconds=s.get("softTimeLimitSeconds"),
            termination_grace_period_seconds=s["terminationGracePeriodSeconds"],
            # A CRD older than this operator has no such field: its default.
            stuck_after_seconds=s.get("stuckAfterSeconds", api.DEFAULT_STUCK_AFTER_SECONDS),
            resources=dict(s.get("resources") or {}),
            image=s.get("image"),
            extra_args=list(s.get("extraArgs") or []),
            env=list(s.get("env") or []),
            pod_template=PodTemplate.of(s.get("podTemplate")),
            autoscaling=Autoscaling.of(s.get("autoscaling")),
        )


@dataclass(frozen=True)
class BeatEntry:
    name: str
    task: str
    cron: str | None
    every_seconds: float | None
    args: list[JSON]
    kwargs: dict[str, JSON]
    queue: str | None
    priority: int | None
    expires_seconds: float | None
    starting_deadline_seconds: int | None = None

    @classmethod
    def of(cls, d: Body) -> BeatEntry:
        return cls(
            name=d["name"],
            task=d["task"],
            cron=d.get("cron"),
            every_seconds=d.get("everySeconds"),
            args=list(d.get("args") or []),
            kwargs=dict(d.get("kwargs") or {}),
            queue=d.get("queue"),
            priority=d.get("priority"),
            expires_seconds=d.get("expiresSeconds"),
            starting_deadline_seconds=d.get("startingDeadlineSeconds"),
        )


@dataclass(frozen=True)
class CeleryBeatSchedule:
    meta: Meta
    app_name: str
    timezone: str
    entries: list[BeatEntry]

    @classmethod
    def of(cls, body: Body) -> CeleryBeatSchedule:
        s = body["spec"]
        return cls(
            meta=Meta.of(body),
            app_name=s["appRef"]["name"],
            timezone=s["timezone"],
            entries=[BeatEntry.of(e) for e in s.get("entries") or []],
        )
