"""celery-operator: Celery topologies as Kubernetes custom resources."""

__version__ = "0.1.0"
