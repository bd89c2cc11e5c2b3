"""Names of the objects the operator creates for an app (one place, so every layer agrees).

Worker Deployments are named `<app>-<pool>`: the pool's metadata.name prefixed with the app's, so
one namespace can hold pools of the same name for different apps.
"""

from __future__ import annotations


def config_map(app: str) -> str:
    return f"{app}-celery-config"


def worker(app: str, pool: str) -> str:
    return f"{app}-{pool}"


def beat(app: str) -> str:
    return f"{app}-beat"


def broker_server(app: str, kind: str) -> str:
    """StatefulSet and client Service of a managed broker: `<app>-rabbitmq` or `<app>-redis`."""
    return f"{app}-{kind}"


def headless_service(server: str) -> str:
    return f"{server}-headless"


def broker_secret(app: str) -> str:
    return f"{app}-broker"


def result_backend(app: str) -> str:
    """StatefulSet, Service and Secret of a managed result backend."""
    return f"{app}-result-backend"


def rabbitmq_cluster_secret(cluster: str) -> str:
    """The default-user Secret the RabbitMQ cluster-operator creates for a RabbitmqCluster."""
    return f"{cluster}-default-user"
