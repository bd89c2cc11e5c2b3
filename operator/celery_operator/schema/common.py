"""Field schemas shared by several kinds: appRef, Celery names, pod overrides, env, status basics."""

from __future__ import annotations

from celery_operator import api
from celery_operator.schema.builders import (
    DNS_SUBDOMAIN_PATTERN,
    Rule,
    Schema,
    array,
    boolean,
    free_object,
    integer,
    obj,
    quantity_map,
    string,
    string_map,
)

# AMQP short strings are at most 255 bytes: exchange names, queue names, routing keys.
AMQP_NAME_MAX = 255
CELERY_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
PYTHON_DOTTED_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


def k8s_name(desc: str) -> Schema:
    return string(desc, pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)


def app_ref() -> Schema:
    return obj(
        "The CeleryApp (in the same namespace) this object belongs to. Immutable: delete and "
        "recreate the object to move it to another app.",
        {"name": k8s_name("metadata.name of the CeleryApp.")},
        required=["name"],
        rules=[Rule("self == oldSelf",
                    "spec.appRef is immutable: delete this object and create it again to move it to "
                    "another CeleryApp")],
    )


def celery_name(what: str) -> Schema:
    """The name Celery and the broker know an exchange or queue by (not metadata.name)."""
    return string(
        f"The {what}'s name on the broker and in the Celery config. Defaults to metadata.name. "
        "Letters, digits, '_', '.', '-'; must not start with 'amq.' (reserved by RabbitMQ).",
        pattern=CELERY_NAME_PATTERN, min_length=1, max_length=AMQP_NAME_MAX,
        rules=[Rule("!self.startsWith('amq.')",
                    f"spec.name must not start with 'amq.': RabbitMQ reserves that prefix; choose "
                    f"another {what} name")],
    )


def secret_key_ref(desc: str, default_key: str) -> Schema:
    return obj(
        desc,
        {
            "name": k8s_name("Name of a Secret in the same namespace."),
            "key": string(f"Key in the Secret's data. Defaults to {default_key!r}.",
                          default=default_key, min_length=1, max_length=253),
        },
        required=["name"],
    )


def resources(desc: str) -> Schema:
    return obj(
        desc,
        {
            "limits": quantity_map("Maximum amount of each resource (cpu, memory, ...) a container may use."),
            "requests": quantity_map("Amount of each resource (cpu, memory, ...) a container is scheduled with."),
        },
    )


def storage(desc: str, *, default: dict[str, str] | None = None) -> Schema:
    return obj(
        desc,
        {
            "size": string("Requested size of the PersistentVolumeClaim (a Kubernetes quantity). Defaults to 1Gi.",
                           default="1Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$", max_length=32),
            "storageClassName": string("StorageClass of the PersistentVolumeClaim; the cluster default "
                                       "when omitted.", max_length=253),
        },
        default=default,
    )


def env() -> Schema:
    return array(
        "Environment variables for the Celery containers (the core EnvVar shape).",
        obj(
            "One environment variable. Set value or valueFrom, not both.",
            {
                "name": string("Name of the variable.", min_length=1, max_length=256),
                "value": string("Literal value."),
                "valueFrom": free_object("Where the value comes from (secretKeyRef, configMapKeyRef, "
                                         "fieldRef, resourceFieldRef), as in core EnvVarSource."),
            },
            required=["name"],
            rules=[Rule("!(has(self.value) && has(self.valueFrom))",
                        "env[].value and env[].valueFrom are mutually exclusive: set only one of them")],
        ),
        max_items=128, list_type="map", map_keys=["name"],
    )


def env_from() -> Schema:
    ref = {
        "name": k8s_name("Name of the object."),
        "optional": boolean("Start the container even if the object is missing."),
    }
    return array(
        "Sources of environment variables for the Celery containers (the core EnvFromSource shape).",
        obj(
            "Set configMapRef or secretRef.",
            {
                "prefix": string("Prefix added to every variable name from this source.", max_length=256),
                "configMapRef": obj("A ConfigMap whose keys become variables.", ref, required=["name"]),
                "secretRef": obj("A Secret whose keys become variables.", ref, required=["name"]),
            },
        ),
        max_items=32, list_type="atomic",
    )


def pod_template(scope: str) -> Schema:
    return obj(
        f"Overrides for {scope}. Only these pod fields may be set; the operator owns the rest.",
        {
            "labels": string_map(
                "Extra labels on the pods. Keys under celery-operator.dev/ are reserved.",
                max_properties=64,
                rules=[Rule(f"!self.exists(k, k.startsWith('{api.GROUP}/'))",
                            f"podTemplate.labels must not set keys under {api.GROUP}/: the operator "
                            "selects its pods by them; use another label prefix")],
            ),
            "annotations": string_map("Extra annotations on the pods.", max_properties=64),
            "nodeSelector": string_map("Node labels the pods must be scheduled on.", max_properties=64),
            "tolerations": array("Tolerations of the pods (core Toleration objects).",
                                 free_object("A core Toleration."), max_items=64, list_type="atomic"),
            "affinity": free_object("Scheduling affinity of the pods (a core Affinity object)."),
            "serviceAccountName": k8s_name("ServiceAccount the pods run as."),
            "priorityClassName": k8s_name("PriorityClass of the pods."),
            "securityContext": free_object("Pod-level security context (a core PodSecurityContext)."),
            "containerSecurityContext": free_object(
                "Security context of the Celery container (a core SecurityContext)."),
            "imagePullSecrets": array(
                "Secrets used to pull the image.",
                obj("A reference to a docker-registry Secret.", {"name": k8s_name("Name of the Secret.")},
                    required=["name"]),
                max_items=16, list_type="map", map_keys=["name"],
            ),
        },
    )


def deletion_policy(what: str) -> Schema:
    return string(
        f"What happens to the {what} on the broker when this object is deleted: Retain leaves it (and "
        f"its messages) in place, Delete removes it from the broker.",
        enum=["Retain", "Delete"], default="Retain",
    )


def observed_generation() -> Schema:
    return integer("The metadata.generation the operator last acted on.", minimum=0, fmt="int64")


def conditions() -> Schema:
    return array(
        "Observed state, one entry per condition type (Ready, Progressing, Degraded).",
        obj(
            "A metav1.Condition.",
            {
                "type": string("Condition type, e.g. Ready.", max_length=316,
                               pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                                       r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"),
                "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                "reason": string("Machine-readable CamelCase reason for the last transition.",
                                 max_length=1024, min_length=1,
                                 pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
                "message": string("Human-readable details.", max_length=32768),
                "observedGeneration": observed_generation(),
                "lastTransitionTime": string("When status last changed.", fmt="date-time"),
            },
            required=["type", "status", "reason", "lastTransitionTime"],
        ),
        max_items=16, list_type="map", map_keys=["type"],
    )


def status(kind: str, extra: dict[str, Schema]) -> Schema:
    return obj(f"Observed state of the {kind}, written by the operator.",
               {"observedGeneration": observed_generation(), "conditions": conditions(), **extra})
