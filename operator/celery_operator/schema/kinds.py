"""The spec and status schema, printer columns and subresources of each of the five kinds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery_operator import api, cron
from celery_operator.schema.builders import (
    DNS_LABEL_MAX,
    DNS_LABEL_PATTERN,
    Rule,
    Schema,
    any_value,
    array,
    boolean,
    free_object,
    integer,
    number,
    obj,
    string,
)
from celery_operator.schema.common import (
    AMQP_NAME_MAX,
    CELERY_NAME_PATTERN,
    PYTHON_DOTTED_PATTERN,
    app_ref,
    celery_name,
    deletion_policy,
    env,
    env_from,
    k8s_name,
    pod_template,
    resources,
    secret_key_ref,
    status,
    storage,
)

RESERVED_CONFIG_KEYS: dict[str, tuple[list[str], str]] = {
    "broker": (["broker_url", "broker_read_url", "broker_write_url"], "spec.broker"),
    "result_backend": (["result_backend"], "spec.resultBackend"),
    "queues": (["task_queues", "task_routes"], "CeleryQueue resources (spec.tasks routes tasks)"),
    "beat": (["beat_schedule"], "a CeleryBeatSchedule resource"),
    "defaults": (["task_default_queue", "task_default_exchange", "task_default_routing_key"],
                 "spec.defaultQueue, spec.defaultExchange and spec.defaultRoutingKey"),
    "imports": (["imports"], "spec.imports"),
    "shutdown": (["worker_soft_shutdown_timeout"],
                 "each CeleryWorkerPool's spec.terminationGracePeriodSeconds, which it follows"),
}


def _exactly_one(names: list[str], where: str) -> Rule:
    count = " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names)
    return Rule(f"{count} == 1", f"{where} must set exactly one of {', '.join(names)}")


def _condition_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
         "description": "Status of the Ready condition."},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
         "description": "Reason of the Ready condition."},
    ]


AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _col(name: str, typ: str, path: str, desc: str, priority: int = 0) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "type": typ, "jsonPath": path, "description": desc}
    if priority:
        c["priority"] = priority
    return c


# ---------------------------------------------------------------------------------------- CeleryApp

def _managed_redis(what: str) -> Schema:
    return obj(
        f"Run Redis as the {what} (a StatefulSet and Service the operator owns).",
        {
            "image": string("Redis image.", default="redis:7.2", min_length=1, max_length=512),
            "storage": storage("Persist Redis data (appendonly) on a PersistentVolumeClaim. Omit for "
                               "an in-memory Redis whose data is lost on restart."),
            "resources": resources("Compute resources of the Redis container."),
        },
    )


def _broker() -> Schema:
    names = ["rabbitmq", "redis", "external", "rabbitmqClusterRef"]
    return obj(
        "Where Celery sends task messages. Set exactly one of rabbitmq, redis (the operator runs the "
        "broker), external (a URL in a Secret) or rabbitmqClusterRef (a RabbitmqCluster of the "
        "RabbitMQ cluster operator).",
        {
            "rabbitmq": obj(
                "Run RabbitMQ as the broker (a StatefulSet and Service the operator owns).",
                {
                    "image": string("RabbitMQ image; it must include the management plugin (queue depth "
                                    "for autoscaling is read from its API).",
                                    default="rabbitmq:3.13-management", min_length=1, max_length=512),
                    "storage": storage("PersistentVolumeClaim for RabbitMQ's data directory.", default={}),
                    "resources": resources("Compute resources of the RabbitMQ container."),
                },
            ),
            "redis": _managed_redis("broker"),
            "external": obj(
                "Use a broker the operator does not run.",
                {
                    "urlSecretRef": secret_key_ref("Secret key holding the broker URL (amqp://... or "
                                                   "redis://...).", "url"),
                    "managementUrlSecretRef": secret_key_ref(
                        "Secret key holding the RabbitMQ management API URL (http://user:pass@host:15672), "
                        "used to read queue depth including unacknowledged messages. Without it depth "
                        "comes from a passive queue declare (ready messages only).", "managementUrl"),
                },
                required=["urlSecretRef"],
            ),
            "rabbitmqClusterRef": obj(
                "Use a RabbitmqCluster (rabbitmq.com/v1beta1) in the same namespace; the operator reads its "
                "default-user Secret.",
                {"name": k8s_name("metadata.name of the RabbitmqCluster.")},
                required=["name"],
            ),
        },
        rules=[_exactly_one(names, "spec.broker")],
    )


def _result_backend() -> Schema:
    return obj(
        "Where task results are stored. Omit to run without a result backend. Set exactly one of "
        "redis or external.",
        {
            "redis": _managed_redis("result backend"),
            "external": obj(
                "Use a result backend the operator does not run.",
                {"urlSecretRef": secret_key_ref("Secret key holding the result backend URL "
                                                "(redis://..., db+postgresql://..., rpc://).", "url")},
                required=["urlSecretRef"],
            ),
        },
        rules=[_exactly_one(["redis", "external"], "spec.resultBackend")],
    )


def _config() -> Schema:
    """A free-form map of Celery settings whose values may be any JSON.

    CEL cannot iterate the keys of a map whose values are untyped (the API server gives such a
    node no CEL type), so each reserved key is declared as a property instead, typed
    int-or-string only to make it visible (CEL type `dyn`) to the `!has(...)` rules: a string or
    number gets the rule's message, an object or list a type error on that key. Lowercase key
    names are documented, not enforced, by the API server.
    """
    props: dict[str, Schema] = {
        # Typed so the app's rules can read it (CEL sees only declared properties).
        "broker_transport_options": {
            "type": "object",
            "description": "Options of the broker transport (kombu's transport_options), any JSON values.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"visibility_timeout": {
                "type": "number", "minimum": 0, "exclusiveMinimum": True,
                "description": "Redis (and SQS): seconds a delivered message may stay unacknowledged before it "
                               f"is delivered again. Default {api.REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS}."},
                "confirm_publish": {
                    "type": "boolean",
                    "description": "RabbitMQ: each publish waits for the broker's confirm. Default true for an app "
                                   "with a quorum queue (without confirms RabbitMQ can drop, without an error, what "
                                   "a producer sent just before closing its connection), false otherwise."}},
        },
    }
    rules = []
    for keys, use in RESERVED_CONFIG_KEYS.values():
        for k in keys:
            props[k] = {"x-kubernetes-int-or-string": True,
                        "description": f"Reserved: the operator generates {k}; use {use}."}
        rules.append(Rule(" && ".join(f"!has(self.{k})" for k in keys),
                          f"spec.config must not set {' or '.join(keys)}: the operator generates it; "
                          f"use {use} instead"))
    return {
        "type": "object",
        "description": "Extra Celery settings, merged into the generated config: lowercase setting names "
                       "(e.g. task_acks_late, broker_transport_options) to any JSON value. Settings the "
                       "operator derives from the resources (broker_url, result_backend, task_queues, "
                       "task_routes, beat_schedule, imports, task_default_*) are rejected.",
        "maxProperties": 128,
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": props,
        "x-kubernetes-validations": [r.render() for r in rules],
    }


def _flower() -> Schema:
    ref = secret_key_ref
    # Character classes, not backslashes: a CEL string literal has no `\*` or `\.` escape.
    host_re = "^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    return obj(
        "Flower, Celery's web UI, for this app: a Deployment and Service `<app>-flower` (and an Ingress when "
        "asked for) configured from the same generated config and broker Secrets as the workers. Authentication "
        "is required: basic auth or OAuth from Secrets; Flower runs open only with allowUnauthenticated. "
        "Enabling Flower turns on task events in every worker of the app (worker_send_task_events, "
        "task_send_sent_event): each task then publishes 3-4 small event messages to the broker's "
        "celeryev exchange, which Flower consumes.",
        {
            "enabled": boolean("Run Flower for this app.", default=False),
            "image": string("Image with Flower (`celery flower`), Celery and the broker's client library. The "
                            f"default is the project's Flower {api.FLOWER_VERSION} image; set it to the app's "
                            "image (with loadApp) when that image has Flower installed.",
                            default=api.DEFAULT_FLOWER_IMAGE, min_length=1, max_length=512),
            "loadApp": boolean("Import spec.app in Flower (the image must hold the app's code); otherwise Flower "
                               "runs on a bare Celery app with the generated config, which shows every task "
                               "from its events all the same.", default=False),
            "auth": obj(
                "How users log in to Flower. Set one of basicAuthSecretRef or oauth.",
                {
                    "basicAuthSecretRef": ref(
                        "Secret key holding Flower's basic auth credentials, `user:password` (several "
                        "separated by commas), as Flower's --basic_auth.", "auth"),
                    "oauth": obj(
                        "Log in through an OAuth 2 provider (Flower's --auth_provider).",
                        {
                            "provider": string("OAuth 2 provider.", enum=["google", "github", "gitlab"]),
                            "allowedEmails": string("Regular expression of the emails let in (Flower's --auth), "
                                                    r"e.g. `.*@example\.com`.", min_length=1, max_length=1024),
                            "redirectUri": string("The callback URL registered with the provider "
                                                  "(https://<host>/login).", min_length=1, max_length=2048),
                            "clientIdSecretRef": ref("Secret key holding the OAuth client id.", "clientId"),
                            "clientSecretSecretRef": ref("Secret key holding the OAuth client secret.",
                                                         "clientSecret"),
                        },
                        required=["provider", "allowedEmails", "redirectUri", "clientIdSecretRef",
                                  "clientSecretSecretRef"],
                    ),
                },
                rules=[Rule("!(has(self.basicAuthSecretRef) && has(self.oauth))",
                            "spec.flower.auth must set one of basicAuthSecretRef or oauth, not both")],
            ),
            "allowUnauthenticated": boolean(
                "Run Flower without authentication when auth is not set. Anyone who reaches it can see task "
                "arguments and results, and revoke or terminate tasks: leave false unless something in front of "
                "Flower authenticates.", default=False),
            "urlPrefix": string(
                "Serve Flower under this path (Flower's --url_prefix), e.g. `flower` for https://host/flower/.",
                max_length=253,
                rules=[Rule("!self.contains(' ')",
                            "spec.flower.urlPrefix must not contain spaces: give a URL path such as `flower` or "
                            "`tools/flower`")]),
            "ingress": obj(
                "Expose Flower through an Ingress (the operator needs the chart's ingress permission).",
                {
                    "className": string("IngressClass name (spec.ingressClassName).", max_length=253),
                    "host": string(
                        "Host name Flower is served on.", min_length=1, max_length=253,
                        rules=[Rule(f"self.matches('{host_re}')",
                                    "spec.flower.ingress.host must be a DNS name (lowercase letters, digits, '-' "
                                    "and '.', optionally starting with '*.'), e.g. flower.example.com: no scheme, "
                                    "port, path or spaces")]),
                    "tlsSecretName": k8s_name("Secret holding the TLS certificate and key for the host."),
                },
                required=["host"],
            ),
            "resources": resources("Compute resources of the Flower container."),
        },
    )


def app_spec() -> Schema:
    return obj(
        "Desired state of a Celery application: its code image, broker, result backend and settings.",
        {
            "image": string("Container image holding the Celery application code (used by workers and "
                            "beat unless a pool overrides it).", min_length=1, max_length=512),
            "imagePullPolicy": string("Pull policy of the image.", enum=["Always", "IfNotPresent", "Never"]),
            "app": string("The Celery app to load, as given to `celery -A` (module or module:attribute), "
                          "e.g. sample_tasks.app.",
                          pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                                  r"(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?$",
                          max_length=253),
            "imports": array("Extra modules the workers import to register tasks (Celery's `imports`).",
                             string("A dotted Python module name.", pattern=PYTHON_DOTTED_PATTERN,
                                    max_length=253),
                             max_items=64, list_type="set"),
            "broker": _broker(),
            "resultBackend": _result_backend(),
            "defaultQueue": string("Queue for tasks no CeleryQueue routes (task_default_queue).",
                                   default="celery", pattern=CELERY_NAME_PATTERN, max_length=AMQP_NAME_MAX),
            "defaultExchange": string("Exchange of the default queue (task_default_exchange).",
                                      default="celery", pattern=CELERY_NAME_PATTERN,
                                      max_length=AMQP_NAME_MAX),
            "defaultRoutingKey": string("Routing key of tasks sent to the default queue "
                                        "(task_default_routing_key).", default="celery",
                                        max_length=AMQP_NAME_MAX),
            "config": _config(),
            "maxCountdownSeconds": integer(
                "The longest countdown or ETA, in seconds from sending, the app's code gives tasks "
                "(apply_async(countdown=..., eta=...), retries). Optional; declared so the operator can check "
                "it against a Redis broker's visibility_timeout: a task waits unacknowledged in a worker until "
                "it is due, and Redis delivers it again once the visibility timeout passes.",
                minimum=0, fmt="int64"),
            "env": env(),
            "envFrom": env_from(),
            "podTemplate": pod_template("every worker and beat pod of this app"),
            "flower": _flower(),
        },
        required=["image", "app", "broker"],
        rules=[_countdown_within_visibility_timeout()],
    )


def _countdown_within_visibility_timeout() -> Rule:
    """A managed Redis broker is known to be Redis from this object alone (others: a condition)."""
    vt = "self.config.broker_transport_options.visibility_timeout"
    timeout = (f"(has(self.config) && has(self.config.broker_transport_options) && has({vt}) ? {vt} : "
               f"{float(api.REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS)})")
    return Rule(
        f"!has(self.broker.redis) || !has(self.maxCountdownSeconds) || double(self.maxCountdownSeconds) < {timeout}",
        "spec.maxCountdownSeconds must be less than the Redis broker's visibility timeout "
        f"(spec.config.broker_transport_options.visibility_timeout, {api.REDIS_DEFAULT_VISIBILITY_TIMEOUT_SECONDS} "
        "s by default): a task waiting longer for its countdown/ETA is delivered again and runs twice; raise "
        "visibility_timeout above it or lower maxCountdownSeconds",
        ".maxCountdownSeconds")


def app_status() -> Schema:
    ref = {"name": k8s_name("Name of the Secret."), "key": string("Key in the Secret.", max_length=253)}
    return status("CeleryApp", {
        "brokerSecretRef": obj("Secret key the workers read the broker URL from.", ref),
        "resultBackendSecretRef": obj("Secret key the workers read the result backend URL from.", ref),
        "configMapName": k8s_name("ConfigMap holding the generated Celery config."),
        "configHash": string("Hash of the generated config; pods roll when it changes.", max_length=128),
        "beat": boolean("True when a beat Deployment runs for this app (a CeleryBeatSchedule exists)."),
        "workerPools": integer("Number of CeleryWorkerPools that reference this app.", minimum=0),
        "flower": obj("Flower of the app (spec.flower).", {
            "state": string("Off (not enabled), Starting, Ready, or Blocked (not run: see the FlowerReady "
                            "condition).", enum=["Off", "Starting", "Ready", "Blocked"]),
            "url": string("In-cluster URL of Flower's Service.", max_length=2048),
            "readyReplicas": integer("Flower pods ready.", minimum=0),
        }),
        "quarantinedTasks": array(
            "Tasks that killed their worker maxWorkerDeaths times and wait in their queue's quarantine queue, "
            "newest first (at most 20); `celery-operator quarantine replay` puts them back.",
            obj("A quarantined task.", {
                "id": string("Task id.", max_length=255),
                "name": string("Task name.", max_length=512),
                "queue": string("The queue it came from.", max_length=255),
                "quarantineQueue": string("The queue it waits in.", max_length=255),
                "deaths": integer("Workers that died running it.", minimum=0),
                "pods": array("The pods whose workers died running it.", string("A pod.", max_length=253),
                              max_items=64, list_type="atomic"),
            }), max_items=20, list_type="atomic"),
    })


# ------------------------------------------------------------------------------------ CeleryExchange

def exchange_spec() -> Schema:
    return obj(
        "Desired state of an exchange declared on the app's broker.",
        {
            "appRef": app_ref(),
            "name": celery_name("exchange"),
            "type": string("Exchange type.", enum=["direct", "topic", "fanout", "headers"], default="direct"),
            "durable": boolean("Survive a broker restart.", default=True),
            "autoDelete": boolean("Delete the exchange when its last binding is removed.", default=False),
            "arguments": free_object("Extra declare arguments (x-* keys), e.g. alternate-exchange."),
            "deletionPolicy": deletion_policy("exchange"),
        },
        required=["appRef"],
    )


def exchange_status() -> Schema:
    return status("CeleryExchange", {"declared": boolean("True once the exchange is declared on the broker.")})


# --------------------------------------------------------------------------------------- CeleryQueue

def queue_spec() -> Schema:
    quorum_rules = [
        Rule("!(self.queueType == 'quorum' && self.autoDelete)",
             "spec.autoDelete must be false when spec.queueType is quorum: RabbitMQ quorum queues cannot be "
             "auto-delete; set autoDelete: false or use queueType: classic", ".autoDelete"),
        Rule("!(self.queueType == 'quorum' && !self.durable)",
             "spec.durable must be true when spec.queueType is quorum: RabbitMQ quorum queues are always "
             "durable; set durable: true or use queueType: classic", ".durable"),
        Rule("!(self.queueType == 'quorum' && has(self.maxPriority))",
             "spec.maxPriority cannot be set when spec.queueType is quorum: RabbitMQ quorum queues have no "
             "x-max-priority before 4.0; remove maxPriority or use queueType: classic", ".maxPriority"),
    ]
    return obj(
        "Desired state of a queue declared on the app's broker, its binding, and the tasks Celery routes to it. "
        "queueType, maxPriority, durable and autoDelete are fixed when the queue is declared and cannot change "
        "(unless spec.name changes too: that is another queue); messageTTLSeconds, maxLength and deadLetter "
        "can, and are applied to the live queue as a RabbitMQ policy.",
        {
            "appRef": app_ref(),
            "name": celery_name("queue"),
            "exchange": string("Celery name of the exchange the queue is bound to (a CeleryExchange's "
                               "spec.name, or metadata.name when that is unset). Omitted: Celery's implicit "
                               "direct exchange named like the queue.",
                               pattern=CELERY_NAME_PATTERN, max_length=AMQP_NAME_MAX),
            "routingKey": string("Binding (and routing) key. Defaults to the queue's name.",
                                 max_length=AMQP_NAME_MAX),
            "tasks": array("Task names routed to this queue (task_routes); '*' globs allowed, e.g. "
                           "'proj.reports.*'.",
                           string("A task name or glob.", min_length=1, max_length=253),
                           max_items=256, list_type="set"),
            "durable": boolean("Survive a broker restart.", default=True),
            "autoDelete": boolean("Delete the queue when its last consumer goes.", default=False),
            "maxPriority": integer("Enable message priorities 0..maxPriority (x-max-priority). Classic "
                                   "queues only.", minimum=1, maximum=255),
            "messageTTLSeconds": number("Discard messages older than this (x-message-ttl).", minimum=0,
                                        exclusive_minimum=True),
            "maxLength": integer("Maximum number of ready messages (x-max-length).", minimum=1,
                                 fmt="int64"),
            "deadLetter": obj(
                "Where rejected and expired messages go (x-dead-letter-exchange / -routing-key).",
                {
                    "exchange": string("Celery name of the dead-letter exchange.", pattern=CELERY_NAME_PATTERN,
                                       min_length=1, max_length=AMQP_NAME_MAX),
                    "routingKey": string("Routing key for dead-lettered messages; their original key when "
                                         "omitted.", max_length=AMQP_NAME_MAX),
                },
                required=["exchange"],
            ),
            "queueType": string("RabbitMQ queue type (x-queue-type).", enum=["classic", "quorum"],
                                default="classic"),
            "deletionPolicy": deletion_policy("queue"),
            "quarantineQueue": string(
                f"Where the workers set aside this queue's poison tasks (tasks that killed maxWorkerDeaths workers "
                f"of the pool consuming it), with their body and headers, until they are replayed. Defaults to "
                f"<name>{api.QUARANTINE_SUFFIX}. Queues may share one (each message records its source queue); it "
                f"must not be a queue the app declares (a CeleryQueue naming one gets a QuarantineQueueConflict "
                f"warning and uses the default).",
                pattern=CELERY_NAME_PATTERN, min_length=1, max_length=AMQP_NAME_MAX),
        },
        required=["appRef"],
        rules=[*quorum_rules, _not_a_quarantine_queue(), _not_its_own_quarantine_queue(),
               *_fixed_at_declare_rules()],
    )


def _not_named_as_a_quarantine_queue() -> Rule:
    """The same for a queue named by its metadata.name (no spec.name): Kubernetes names may hold dots."""
    suffix = api.QUARANTINE_SUFFIX
    return Rule(f"!has(self.spec) || has(self.spec.name) || !self.metadata.name.endsWith('{suffix}')",
                f"a queue without spec.name is named by metadata.name, which must not end in '{suffix}': the "
                f"workers set aside the poison tasks of queue <q> in <q>{suffix} (maxWorkerDeaths), so a queue of "
                f"that name would receive them; rename it or set spec.name")


def _not_its_own_quarantine_queue() -> Rule:
    return Rule("!has(self.quarantineQueue) || !has(self.name) || self.quarantineQueue != self.name",
                "spec.quarantineQueue must differ from spec.name: a queue's poison tasks cannot wait in the queue "
                "they came from; choose another name or remove quarantineQueue",
                ".quarantineQueue")


def _not_a_quarantine_queue() -> Rule:
    """`<queue>.quarantine` is where the workers set aside a queue's poison tasks (maxWorkerDeaths)."""
    suffix = api.QUARANTINE_SUFFIX
    return Rule(f"!has(self.name) || !self.name.endsWith('{suffix}')",
                f"spec.name must not end in '{suffix}': the workers set aside the poison tasks of queue <q> in "
                f"<q>{suffix} (maxWorkerDeaths), so a queue of that name would receive them; choose another name",
                ".name")


# Queue fields RabbitMQ fixes when it declares the queue (a redeclare with another value fails with
# PRECONDITION_FAILED, and a policy cannot set them): (field, what fixes it, optional).
FIXED_AT_DECLARE: list[tuple[str, str, bool]] = [
    ("queueType", "its type (x-queue-type)", False),
    ("maxPriority", "its x-max-priority", True),
    ("durable", "its durability", False),
    ("autoDelete", "its auto-delete property", False),
]
_SAME_QUEUE = ("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)")


def _fixed_at_declare_rules() -> list[Rule]:
    """Transition rules (they run on update only): a field fixed at declare time keeps its value while
    the queue keeps its name. Optional fields compare presence too."""
    rules = []
    for name, what, optional in FIXED_AT_DECLARE:
        same = (f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"
                if optional else f"self.{name} == oldSelf.{name}")
        rules.append(Rule(
            f"!({_SAME_QUEUE}) || ({same})",
            f"spec.{name} cannot change on an existing queue: RabbitMQ fixes {what} when the queue is declared. "
            f"To migrate, create a new CeleryQueue (another spec.name) with the new {name}, move the pools and "
            f"task routes to it, then delete the old one once it is drained",
            f".{name}"))
    return rules


def queue_status() -> Schema:
    return status("CeleryQueue", {
        "declared": boolean("True once the queue and its binding are declared on the broker."),
        "messagesReady": integer("Messages waiting to be delivered, last measured.", minimum=0, fmt="int64"),
        "messagesInFlight": integer("Messages delivered but not yet acknowledged, last measured.",
                                    minimum=0, fmt="int64"),
        "consumers": integer("Consumers attached to the queue, last measured.", minimum=0),
    })


# ---------------------------------------------------------------------------------- CeleryWorkerPool

# (short flag, long flag, what to use instead)
FORBIDDEN_WORKER_ARGS: list[tuple[str, str, str]] = [
    ("-Q", "--queues", "list the queues in spec.queues"),
    ("-n", "--hostname", "the operator gives every pod a unique hostname"),
    ("-A", "--app", "set spec.app on the CeleryApp"),
    ("-c", "--concurrency", "set spec.concurrency"),
    ("-P", "--pool", "set spec.pool"),
    ("-B", "--beat", "beat runs once per app from a CeleryBeatSchedule"),
]


def _forbid_arg(short: str, long: str, use: str) -> Rule:
    cel = (f"!self.exists(a, a.startsWith('{short}') || a == '{long}' || a.startsWith('{long}='))")
    return Rule(cel, f"spec.extraArgs must not contain {short}/{long}: {use}")


def autoscaling() -> Schema:
    return obj(
        "Scale the pool's replicas on its queues' depth, on how long their tasks wait, or both (the larger "
        "count wins). When set, the operator owns spec.replicas.",
        {
            "minReplicas": integer("Fewest replicas; 0 lets an idle pool scale to zero.", minimum=0, default=1),
            "maxReplicas": integer("Most replicas.", minimum=1),
            "targetMessagesPerReplica": integer(
                "Scale on depth: desired replicas = ceil(messages / this). "
                f"{api.DEFAULT_TARGET_MESSAGES_PER_REPLICA} when targetWaitSeconds is not set either.", minimum=1),
            "targetWaitSeconds": integer("Scale on wait: keep the time the pool's oldest waiting task has waited "
                                         "(or, for messages without a publish timestamp, depth / drain rate) under "
                                         "this; desired replicas = ceil(ready workers * wait / this), never fewer "
                                         "than now while the wait exceeds it.", minimum=1, maximum=86400),
            "activationMessages": integer("Scale up from zero only when more than this many messages wait.",
                                          minimum=0, default=0),
            "pollIntervalSeconds": integer("How often queue depth is measured.", minimum=1, maximum=3600,
                                           default=10),
            "scaleUpStabilizationSeconds": integer("Scale up to the lowest recommendation of this window.",
                                                   minimum=0, default=0),
            "scaleDownStabilizationSeconds": integer("Scale down to the highest recommendation of this window.",
                                                     minimum=0, default=300),
            "scaleDownDrainSeconds": integer("On scale-down idle workers are removed first; when too few are idle, "
                                             "the busy ones chosen stop taking tasks and the scale-down waits up to "
                                             "this long for their running tasks (0: remove them at once).",
                                             minimum=0, maximum=3600, default=api.DEFAULT_SCALE_DOWN_DRAIN_SECONDS),
            "countInFlight": boolean("Count unacknowledged (running and prefetched) messages as well as "
                                     "ready ones.", default=True),
            "paused": boolean(f"Stop scaling: no poll changes the replicas and no scale-in runs; the Deployment keeps "
                              f"pausedReplicas, or without it whatever count it has (a `kubectl scale deployment` "
                              f"included). The annotations {api.ANNOTATION_PAUSED}: \"true\" and "
                              f"{api.ANNOTATION_PAUSED_REPLICAS}: \"N\" pause as well. On resume scaling continues "
                              "from the Deployment's replicas. Default false."),
            "pausedReplicas": integer("Replicas to hold while paused (by paused or the annotations); unset: keep the "
                                      "Deployment's count. A paused-replicas annotation overrides it.", minimum=0),
            "fallback": obj(
                "What to do when the broker cannot be reached for failureThreshold polls in a row (as KEDA's "
                "fallback). Without it the pool holds its replicas while the broker is away.",
                {
                    "failureThreshold": integer("Failed polls in a row before the fallback applies.", minimum=1,
                                                maximum=1000, default=3),
                    "replicas": integer("The fallback replica count (never 0: the operator does not scale a pool "
                                        "to zero because a broker cannot be reached).", minimum=1),
                    "behavior": string("static: go to replicas; currentReplicas: keep the current count; "
                                       "currentReplicasIfHigher: the larger of current and replicas; "
                                       "currentReplicasIfLower: the smaller of current and replicas.",
                                       enum=list(api.FALLBACK_BEHAVIORS), default="static"),
                },
                required=["replicas"],
            ),
            "scaleUp": _scaling_rules("up"),
            "scaleDown": _scaling_rules("down"),
            "queueAggregation": string("How the depths of the pool's queues combine into the one it scales on: Sum "
                                       "(their total) or Max (the deepest queue's, so the pool is sized for its "
                                       "busiest queue), each queue's depth times its queueWeights entry. Default Sum.",
                                       enum=["Sum", "Max"]),
            "queueWeights": {
                "type": "object",
                "description": "Per-queue integer weights (queue's Celery name -> weight, default 1): a queue's "
                               "depth counts weight times; 0 ignores the queue. Every key must be in spec.queues.",
                "maxProperties": 64,
                "additionalProperties": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 1000},
            },
            "schedules": array("Scheduled minimums (as KEDA's cron trigger): from each firing of a schedule's cron, "
                               "for durationSeconds, the pool's minimum is raised to its minReplicas (the largest "
                               "of the active ones).", _autoscaling_schedule(), max_items=16, list_type="map",
                               map_keys=["name"]),
        },
        required=["maxReplicas"],
        rules=[Rule("self.minReplicas <= self.maxReplicas",
                    "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas; lower minReplicas "
                    "or raise maxReplicas", ".minReplicas"),
               Rule("!has(self.pausedReplicas) || self.pausedReplicas <= self.maxReplicas",
                    "spec.autoscaling.pausedReplicas must be <= spec.autoscaling.maxReplicas; lower pausedReplicas "
                    "or raise maxReplicas", ".pausedReplicas"),
               Rule("!has(self.fallback) || self.fallback.replicas <= self.maxReplicas",
                    "spec.autoscaling.fallback.replicas must be <= spec.autoscaling.maxReplicas (a fallback replica "
                    "count above maxReplicas); lower fallback.replicas or raise maxReplicas", ".fallback.replicas"),
               Rule("!has(self.schedules) || self.schedules.all(s, s.minReplicas <= self.maxReplicas)",
                    "spec.autoscaling.schedules[].minReplicas must be <= spec.autoscaling.maxReplicas; lower the "
                    "schedule's minReplicas or raise maxReplicas", ".schedules")],
    )


def _scaling_rules(direction: str) -> Schema:
    verb = "grows" if direction == "up" else "shrinks"
    return obj(
        f"How fast the pool {verb}, on top of the stabilization window (the HPA's behavior.scale"
        f"{direction.capitalize()} policies, same semantics). Unset: no limit.",
        {
            "policies": array(
                f"Limits on the change over a period: each allows the replicas at the period's start (derived from "
                f"the scale events of the last periodSeconds) {'plus' if direction == 'up' else 'minus'} value "
                f"pods (Pods) or value percent of them (Percent).",
                obj("One policy.", {
                    "type": string("Pods or Percent.", enum=["Pods", "Percent"]),
                    "value": integer("Pods, or percent of the period's starting replicas.", minimum=1),
                    "periodSeconds": integer("The period the policy looks back over.", minimum=1, maximum=1800),
                }, required=["type", "value", "periodSeconds"]),
                min_items=1, max_items=10, list_type="atomic"),
            "selectPolicy": string("Max: the policy allowing the largest change applies; Min: the smallest; "
                                   f"Disabled: the pool never scales {direction} by the autoscaler.",
                                   enum=["Max", "Min", "Disabled"], default="Max"),
        },
        required=["policies"],
    )


def _autoscaling_schedule() -> Schema:
    return obj(
        "One scheduled minimum: a window opens at each firing of cron (in timezone) and lasts durationSeconds.",
        {
            "name": string("Unique name of the schedule.", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                           min_length=1, max_length=63),
            "cron": string("When each window opens: the cron grammar of CeleryBeatSchedule entries (five fields or "
                           "a macro).", max_length=128,
                           rules=[Rule(cel, message) for cel, message in cron.cel_rules()]),
            "timezone": string("IANA time zone the cron is read in.", default="UTC",
                               pattern=r"^[A-Za-z0-9_+\-/]+$", max_length=64),
            "durationSeconds": integer("How long each window lasts; it must be shorter than the smallest gap between "
                                       "two firings of the cron (a window must not overlap the next).", minimum=60,
                                       maximum=31 * 86400),
            "minReplicas": integer("The pool's minimum during the window.", minimum=0),
        },
        required=["name", "cron", "durationSeconds", "minReplicas"],
        rules=[Rule(cel, message, ".durationSeconds") for cel, message in cron.overlap_cel_rules()],
    )


def pool_spec() -> Schema:
    rules = [
        Rule("!has(self.softTimeLimitSeconds) || !has(self.timeLimitSeconds) || "
             "self.softTimeLimitSeconds < self.timeLimitSeconds",
             "spec.softTimeLimitSeconds must be less than spec.timeLimitSeconds so the task sees "
             "SoftTimeLimitExceeded before it is killed; lower softTimeLimitSeconds or raise timeLimitSeconds",
             ".softTimeLimitSeconds"),
        Rule("!has(self.timeLimitSeconds) || self.terminationGracePeriodSeconds >= self.timeLimitSeconds",
             "spec.terminationGracePeriodSeconds must be >= spec.timeLimitSeconds so a warm shutdown can "
             "finish the running task; raise terminationGracePeriodSeconds or lower timeLimitSeconds",
             ".terminationGracePeriodSeconds"),
        Rule("self.pool != 'solo' || self.concurrency == 1",
             "spec.concurrency must be 1 when spec.pool is solo (it runs one task at a time); set "
             "concurrency: 1 or choose another pool", ".concurrency"),
    ]
    return obj(
        "Desired state of a group of identical Celery workers (one Deployment) consuming some queues.",
        {
            "appRef": app_ref(),
            "queues": array("Celery names of the queues the workers consume (-Q).",
                            string("A queue's Celery name (CeleryQueue spec.name, or its metadata.name).",
                                   pattern=CELERY_NAME_PATTERN, min_length=1, max_length=AMQP_NAME_MAX),
                            min_items=1, max_items=64, list_type="set"),
            "replicas": integer("Number of worker pods. Managed by the operator when autoscaling is set.",
                                minimum=0, default=1),
            "concurrency": integer("Child processes or threads per worker (-c).", minimum=1, default=2),
            "pool": string("Execution pool (-P).", enum=["prefork", "threads", "gevent", "eventlet", "solo"],
                           default="prefork"),
            "prefetchMultiplier": integer("Messages each process reserves ahead (worker_prefetch_multiplier); "
                                          "0 means unlimited.", minimum=0, default=1),
            "maxTasksPerChild": integer("Replace a child process after this many tasks.", minimum=1),
            "maxMemoryPerChildKiB": integer("Replace a child process once its resident memory exceeds this "
                                            "many KiB.", minimum=1),
            "maxWorkerDeaths": integer(
                "A task that was running on this many workers that died (OOMKilled, a crash, os._exit; not a "
                "graceful shutdown) is not run again: it is moved, unchanged, to its queue's quarantine queue "
                "`<queue>.quarantine` and reported, until it is replayed. Counted in the app's Redis (result "
                "backend or broker), for tasks that acknowledge late (task_acks_late), the only ones a dead "
                "worker gives back.", minimum=1, default=api.DEFAULT_MAX_WORKER_DEATHS),
            "timeLimitSeconds": integer("Hard time limit of a task: its process is killed after this.",
                                        minimum=1),
            "softTimeLimitSeconds": integer("Soft time limit: SoftTimeLimitExceeded is raised in the task.",
                                            minimum=1),
            "terminationGracePeriodSeconds": integer("Time a worker pod gets to finish running tasks (warm "
                                                     "shutdown) before it is killed.", minimum=1, default=60,
                                                     fmt="int64"),
            "stuckAfterSeconds": integer(
                "A worker is restarted by its liveness probe when, while a fresh connection to the broker works, "
                "its consumer connection has received nothing for this long (and for twice the connection's "
                "heartbeat rhythm), or it has had free slots and received no task for this long while its queues "
                "hold ready messages. A broker outage never restarts a worker. The restart comes within about "
                "this plus 30 s (three failed probes, 10 s apart).",
                minimum=api.MIN_STUCK_AFTER_SECONDS, default=api.DEFAULT_STUCK_AFTER_SECONDS),
            "resources": resources("Compute resources of each worker container."),
            "image": string("Image for this pool's workers, overriding the app's.", min_length=1, max_length=512),
            "extraArgs": array("Extra `celery worker` arguments. Options the operator sets from fields "
                               "(-Q, -n, -A, -c, -P, -B) are rejected.",
                               string("One argument.", max_length=256),
                               max_items=64, list_type="atomic",
                               rules=[_forbid_arg(*a) for a in FORBIDDEN_WORKER_ARGS]),
            "env": env(),
            "podTemplate": pod_template("this pool's pods (merged over the app's podTemplate)"),
            "autoscaling": autoscaling(),
        },
        required=["appRef", "queues"],
        rules=[*rules, Rule(
            "!has(self.autoscaling) || !has(self.autoscaling.queueWeights) || "
            "self.autoscaling.queueWeights.all(q, q in self.queues)",
            "spec.autoscaling.queueWeights names a queue that is not in spec.queues; add the queue to spec.queues "
            "or remove its weight", ".autoscaling.queueWeights")],
    )


def pool_status() -> Schema:
    return status("CeleryWorkerPool", {
        "replicas": integer("Worker pods that exist.", minimum=0),
        "readyReplicas": integer("Worker pods that are ready.", minimum=0),
        "desiredReplicas": integer("Replicas the pool should have: the autoscaler's last count, the paused count, "
                                   "or spec.replicas.", minimum=0),
        "paused": boolean("True while scaling is paused (spec.autoscaling.paused or the paused annotations)."),
        "failedPolls": integer("Broker polls of the app that failed in a row (0 once one succeeds).", minimum=0),
        "activeSchedule": string("The autoscaling schedule whose window raises the minimum now (the one with the "
                                 "largest minReplicas); absent outside every window.", max_length=63),
        "selector": string("Label selector of the pool's pods (for the scale subresource).", max_length=1024),
        "queueDepth": integer("Ready messages in the pool's queues, last measured.", minimum=0, fmt="int64"),
        "messagesInFlight": integer("Unacknowledged messages in the pool's queues, last measured.", minimum=0,
                                    fmt="int64"),
        "depthSource": string("How depth was measured: the RabbitMQ management API, a passive queue "
                              "declare, or Redis list length.", enum=["management", "passive", "redis"]),
        "waitSeconds": integer("Seconds the longest-waiting task of the pool's queues has waited since it was "
                               "published (or depth / drain rate), last measured; absent when unknown.",
                               minimum=0, fmt="int64"),
        "lastScaleTime": string("When the autoscaler last changed replicas.", fmt="date-time"),
        "recentWorkerDeaths": integer("Restarts of the pool's worker containers now running (each a worker that "
                                      "died: OOMKilled, a crash, a failed liveness probe).", minimum=0),
        "quarantinedTasks": integer("Tasks from the pool's queues waiting in quarantine (maxWorkerDeaths).",
                                    minimum=0),
        "quarantinedTaskIds": array("Ids of the newest of them (at most 20).",
                                    string("A task id.", max_length=255), max_items=20, list_type="atomic"),
    })


# -------------------------------------------------------------------------------- CeleryBeatSchedule

def schedule_spec() -> Schema:
    entry = obj(
        "One periodic task. Set exactly one of cron or everySeconds.",
        {
            "name": string("Unique name of the entry (the beat_schedule key).", min_length=1, max_length=200),
            "task": string("Name of the task to send, e.g. sample_tasks.tasks.add.", min_length=1,
                           max_length=253),
            "cron": string("Five-field crontab 'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *' "
                           "or '0 3 * * mon-fri', or a macro (@yearly, @monthly, @weekly, @daily, @hourly, ...). "
                           "Each field is a comma-separated list of '*', a value, a low-high range or a step "
                           "(*/n, low-high/n); months may be jan-dec and days of week sun-sat (0 is Sunday). As "
                           "in Celery, a day must match both day fields.",
                           max_length=128,
                           rules=[Rule(cel, message) for cel, message in cron.cel_rules()]),
            "everySeconds": number("Send the task every this many seconds.", minimum=0, exclusive_minimum=True),
            "args": array("Positional arguments of the task (any JSON values).",
                          any_value("One argument."), max_items=64, list_type="atomic"),
            "kwargs": free_object("Keyword arguments of the task."),
            "queue": string("Queue to send to, overriding task routing.", pattern=CELERY_NAME_PATTERN,
                            max_length=AMQP_NAME_MAX),
            "priority": integer("Message priority (needs a queue with maxPriority).", minimum=0, maximum=255),
            "expiresSeconds": number("Discard the message if no worker starts it within this many seconds.",
                                     minimum=0, exclusive_minimum=True),
            "startingDeadlineSeconds": integer(
                "How late a run missed while no beat was running (a restart, a rollout, a lost node) may still "
                "be sent, as CronJob's field of that name. Set: when beat is back, every missed run of this entry "
                "that is at most this many seconds late is sent once, oldest first, and older ones are skipped. "
                "Unset: only the most recent missed run is sent, however late, and older ones are skipped. "
                "Skipped runs are counted in status.entries[].skippedRuns and each skip is a RunsSkipped Event.",
                minimum=1, fmt="int64"),
        },
        required=["name", "task"],
        rules=[Rule("has(self.cron) != has(self.everySeconds)",
                    "each spec.entries item must set exactly one of cron or everySeconds")],
    )
    return obj(
        "Periodic tasks sent by the app's beat (one beat per app serves all its schedules).",
        {
            "appRef": app_ref(),
            "timezone": string("IANA time zone the cron entries are read in.", default="UTC",
                               pattern=r"^[A-Za-z0-9_+\-/]+$", max_length=64),
            "entries": array("The periodic tasks, keyed by name.", entry, min_items=1, max_items=256,
                             list_type="map", map_keys=["name"]),
        },
        required=["appRef", "entries"],
    )


def schedule_status() -> Schema:
    entry = obj(
        "One entry the app's beat serves from this schedule, as beat's state records it.",
        {
            "name": string("The entry's name.", min_length=1, max_length=200),
            "lastRunTime": string("Scheduled time of the last run beat sent (absent before the first).",
                                  fmt="date-time"),
            "nextRunTime": string("Scheduled time of the next run. In the past, beat is late: it has not run, "
                                  "lost its lease or cannot reach the API server.", fmt="date-time"),
            "skippedRuns": integer("Runs skipped by the catch-up rule (startingDeadlineSeconds) since beat "
                                   "started keeping this entry.", minimum=0, fmt="int64"),
        },
        required=["name"],
    )
    return status("CeleryBeatSchedule", {
        "entries": array("The entries the app's beat serves from this schedule, with their last and next run "
                         "(absent until beat has taken the entry on).", entry, max_items=256, list_type="map",
                         map_keys=["name"]),
    })


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class KindDef:
    kind: str
    description: str
    spec: Callable[[], Schema]
    status: Callable[[], Schema]
    columns: list[dict[str, Any]]
    root_rules: list[Rule] = field(default_factory=list)
    scale: bool = False


def _dns_label_name(why: str) -> Rule:
    return Rule(f"size(self.metadata.name) <= {DNS_LABEL_MAX} && "
                f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
                f"metadata.name must be a DNS label (at most {DNS_LABEL_MAX} lowercase letters, digits and '-', "
                f"starting with a letter): {why}; choose a shorter name")


KIND_DEFS: dict[str, KindDef] = {
    api.APP: KindDef(
        api.APP,
        "A Celery application: its code image, its broker and result backend, and settings shared by all its "
        "workers and its beat.",
        app_spec, app_status,
        [_col("Image", "string", ".spec.image", "Application image.", priority=1),
         _col("Pools", "integer", ".status.workerPools", "Worker pools of the app."),
         _col("Beat", "boolean", ".status.beat", "Whether a beat runs for the app."),
         _col("Flower", "string", ".status.flower.state", "Flower: Off, Starting, Ready or Blocked.")],
        root_rules=[_dns_label_name("it is a label value on every child of the app and starts their names")],
    ),
    api.EXCHANGE: KindDef(
        api.EXCHANGE,
        "An exchange declared on a CeleryApp's broker.",
        exchange_spec, exchange_status,
        [_col("Exchange", "string", ".spec.name", "Name on the broker (metadata.name when empty)."),
         _col("Type", "string", ".spec.type", "Exchange type."),
         _col("Declared", "boolean", ".status.declared", "Declared on the broker.")],
    ),
    api.QUEUE: KindDef(
        api.QUEUE,
        "A queue declared on a CeleryApp's broker, bound to an exchange, with the tasks routed to it.",
        queue_spec, queue_status,
        [_col("Queue", "string", ".spec.name", "Name on the broker (metadata.name when empty)."),
         _col("Exchange", "string", ".spec.exchange", "Exchange the queue is bound to."),
         _col("Routing-Key", "string", ".spec.routingKey", "Binding key.", priority=1),
         _col("Messages", "integer", ".status.messagesReady", "Ready messages."),
         _col("In-Flight", "integer", ".status.messagesInFlight", "Unacknowledged messages."),
         _col("Consumers", "integer", ".status.consumers", "Consumers.")],
        root_rules=[_not_named_as_a_quarantine_queue(), Rule(
            "!has(self.spec) || has(self.spec.name) || !has(self.spec.quarantineQueue) || "
            "self.spec.quarantineQueue != self.metadata.name",
            "spec.quarantineQueue must differ from the queue's name (metadata.name, as spec.name is unset): a "
            "queue's poison tasks cannot wait in the queue they came from; choose another name")],
    ),
    api.POOL: KindDef(
        api.POOL,
        "A pool of identical Celery workers (a Deployment) consuming some queues, optionally autoscaled on "
        "their depth.",
        pool_spec, pool_status,
        [_col("Queues", "string", ".spec.queues", "Queues consumed."),
         _col("Desired", "integer", ".status.desiredReplicas", "Desired replicas (autoscaler, pause or spec)."),
         _col("Current", "integer", ".status.replicas", "Existing replicas."),
         _col("Available", "integer", ".status.readyReplicas", "Ready replicas."),
         _col("Depth", "integer", ".status.queueDepth", "Ready messages in the pool's queues."),
         _col("Paused", "boolean", ".status.paused", "Scaling paused."),
         _col("Deaths", "integer", ".status.recentWorkerDeaths", "Restarts of the running worker containers."),
         _col("Quarantined", "integer", ".status.quarantinedTasks", "Tasks waiting in quarantine.", priority=1),
         _col("Pool", "string", ".spec.pool", "Execution pool.", priority=1),
         _col("Concurrency", "integer", ".spec.concurrency", "Processes per worker.", priority=1)],
        root_rules=[_dns_label_name("it is a label value on the pool's Deployment and pods")],
        scale=True,
    ),
    api.SCHEDULE: KindDef(
        api.SCHEDULE,
        "Periodic tasks the app's beat sends.",
        schedule_spec, schedule_status,
        [_col("Entries", "string", ".status.entries[*].name", "Entries served."),
         _col("Timezone", "string", ".spec.timezone", "Time zone of cron entries.")],
    ),
}
