"""The five CRDs as Python: one source for the CRD YAML, offline defaulting and the reference docs.

`python -m celery_operator.schema [REPO]` regenerates crds/*.yaml and docs/crd-reference.md.
"""

from __future__ import annotations

from celery_operator.schema.crd import all_crds, crd, openapi_schema, write_crds
from celery_operator.schema.defaulting import apply_defaults
from celery_operator.schema.reference import reference_markdown

__all__ = ["all_crds", "apply_defaults", "crd", "openapi_schema", "reference_markdown", "write_crds"]
