"""The Python the operator ships into users' worker and beat pods, through the app's ConfigMap.

Each module here is one file of the ConfigMap, named as the pods import it (`celery_operator_app`,
`celery_operator_metrics`, `celery_operator_beat`, `celery_operator_schedule`: the ConfigMap's directory
is on the pods' PYTHONPATH), and they import each other by those names. `config/bootstrap.py` renders
their source into the ConfigMap unchanged; the operator never imports them.

They run on the user's image, so:
- Python 3.9 and later: ruff lints them with target py39 (pyproject.toml's per-file-target-version),
  mypy --strict checks them as the pods see them (top-level modules) for Python 3.9 (mypy-runtime.ini,
  `make lint`);
- the standard library, Celery/kombu and (optional) prometheus_client only: an import-linter contract
  forbids the rest of the operator, and tests/unit/test_runtime.py checks every import they make.
"""
