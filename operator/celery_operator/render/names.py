"""Names of the objects the operator creates for an app (one place, so every layer agrees).

Worker Deployments are named `<app>-<pool>`: the pool's metadata.name prefixed with the app's, so
one namespace can hold pools of the same name for different apps. Every other child is
`<app>-<suffix>`.

Every name the schema admits yields valid children: a name that would exceed its limit is cut
and ends in `-<hash>`, the first `HASH_LENGTH` hex digits of the sha256 of the full name, so it
stays deterministic and distinct; a name within its limit is used as is. The limits
(Kubernetes' own):

- every child carries its name as its `app.kubernetes.io/instance` label, whose value is at most
  `LABEL_VALUE_MAX` (63) characters; Services must be DNS-1035 labels (63, starting with a letter,
  which the app name's first character is);
- a StatefulSet's pods carry the label `controller-revision-hash: <name>-<hash of up to 10
  characters>` (pkg/controller/history: ControllerRevisionName), so a StatefulSet name may have
  at most `STATEFULSET_NAME_MAX` (52) characters; the Service and Secret named like it share its name;
- a Deployment's pods are named by the API server from `<name>-<pod-template-hash>-`, which it
  cuts to 58 characters before appending 5 random ones (apiserver storage/names), so any
  Deployment name of at most 63 characters gives valid pod names.
"""

from __future__ import annotations

import hashlib

LABEL_VALUE_MAX = 63
STATEFULSET_NAME_MAX = 52
DNS_SUBDOMAIN_MAX = 253
HASH_LENGTH = 8


def fit(name: str, limit: int = LABEL_VALUE_MAX) -> str:
    """`name` itself when it fits in `limit` characters, else its readable start and `-<hash>`."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:HASH_LENGTH]
    return f"{name[:limit - HASH_LENGTH - 1].rstrip('-.')}-{digest}"


def config_map(app: str) -> str:
    return fit(f"{app}-celery-config")


def worker(app: str, pool: str) -> str:
    return fit(f"{app}-{pool}")


def beat(app: str) -> str:
    """The beat Deployment, and the ServiceAccount, Role, RoleBinding and Lease of beat."""
    return fit(f"{app}-beat")


def beat_state(app: str) -> str:
    """The ConfigMap beat keeps its state in (last runs, skipped runs)."""
    return fit(f"{app}-beat-state")


def flower(app: str) -> str:
    """Flower's Deployment, Service and Ingress."""
    return fit(f"{app}-flower")


def pod_monitor(app: str) -> str:
    """The app's PodMonitor (a suffix, so it never takes the name of a PodMonitor of the user's own)."""
    return fit(f"{app}-celery")


def broker_server(app: str, kind: str) -> str:
    """StatefulSet and client Service of a managed broker: `<app>-rabbitmq` or `<app>-redis`."""
    return fit(f"{app}-{kind}", STATEFULSET_NAME_MAX)


def headless_service(server: str) -> str:
    """The governing (headless) Service of the StatefulSet `server`."""
    return fit(f"{server}-headless")


def broker_secret(app: str) -> str:
    return fit(f"{app}-broker")


def result_backend(app: str) -> str:
    """StatefulSet, Service and Secret of a managed result backend."""
    return fit(f"{app}-result-backend", STATEFULSET_NAME_MAX)


def rabbitmq_cluster_secret(cluster: str) -> str:
    """The default-user Secret the RabbitMQ cluster-operator creates for a RabbitmqCluster (its naming,
    not ours: never shortened)."""
    return f"{cluster}-default-user"


def event(involved: str, unique: str) -> str:
    """An Event about the object `involved`: `<involved>.<unique>`, its start cut so it stays a DNS
    subdomain (metadata.name of queues, exchanges and schedules may be 253 characters)."""
    suffix = f".{unique}"
    return f"{involved[:DNS_SUBDOMAIN_MAX - len(suffix)].rstrip('-.')}{suffix}"
