"""Hypothesis strategies shared by unit and integration tests: names the schema admits, at its limits."""

from __future__ import annotations

import re
import string

from hypothesis import strategies as st

from celery_operator.schema.builders import DNS_LABEL_MAX, DNS_LABEL_PATTERN

_INNER = string.ascii_lowercase + string.digits + "-"
_END = string.ascii_lowercase + string.digits


@st.composite
def dns_label_names(draw: st.DrawFn, max_size: int = DNS_LABEL_MAX) -> str:
    """metadata.name of a CeleryApp or CeleryWorkerPool (the schema's DNS_LABEL_PATTERN and limit),
    half of them within a dozen characters of the limit."""
    size = draw(st.one_of(st.integers(1, max_size), st.integers(max(1, max_size - 12), max_size)))
    first = draw(st.sampled_from(string.ascii_lowercase))
    if size == 1:
        name = first
    else:
        middle = draw(st.text(_INNER, min_size=size - 2, max_size=size - 2))
        name = first + middle + draw(st.sampled_from(_END))
    assert re.fullmatch(DNS_LABEL_PATTERN.strip("^$"), name), name
    return name
