"""The operator gives freed heap memory back to the system (glibc keeps it otherwise)."""

from __future__ import annotations

import os

import pytest

from celery_operator import heap


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not heap.available(), reason="malloc is not glibc's")
def test_a_trim_after_a_burst_returns_the_freed_memory_that_malloc_kept() -> None:
    before = _rss_mib()
    burst = [bytearray(4096) for _ in range(50_000)]  # ~200 MiB through malloc, not Python's small-object pools
    kept = burst[::50]  # live chunks scattered through the heap keep it from shrinking by itself
    del burst
    held = _rss_mib()
    assert held - before > 100, (before, held)  # malloc kept most of the burst
    assert heap.trim()
    after = _rss_mib()
    assert held - after > 100, (held, after)
    assert len(kept) == 1000
