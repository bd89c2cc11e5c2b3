"""Shared pytest configuration. Fixtures live in plugin modules, one per kind of server."""

import signal

import pytest
from hypothesis import settings

# Property tests share 2 cores with clusters and brokers: a per-example deadline would fail them on
# load, not on a counterexample. Examples stay bounded by max_examples.
settings.register_profile("shared-cores", deadline=None)
settings.load_profile("shared-cores")


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, a killed make) becomes KeyboardInterrupt, so pytest still runs the
    # fixtures' teardown and stops every server it started.
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminate)

# How long a test is expected to run, by kind: what the collection order below deals out.
KIND_RANK = {"e2e": 3, "matrix": 2, "integration": 1}


def _expected_length(item: pytest.Item) -> tuple[int, float]:
    kind = max((KIND_RANK.get(m.name, 0) for m in item.iter_markers()), default=0)
    timeout = item.get_closest_marker("timeout")
    return kind, float(timeout.args[0]) if timeout is not None and timeout.args else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On pytest-xdist workers: deal the long tests out over the workers' first blocks.

    `--dist worksteal` gives each of N workers a contiguous block of the collection and later moves tests
    from the longest queue by count, not by time: in collection order (tests/e2e first) one block would hold
    every e2e scenario and end the run alone. Ranked by kind (e2e, matrix, integration, unit) and timeout
    mark, the tests are dealt round-robin into N blocks, so each worker starts with its share of the long
    ones and its short ones are what others take over. The order only decides when a test runs."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers <= 1:
        return
    ranked = sorted(items, key=_expected_length, reverse=True)  # stable: ties keep the collection order
    items[:] = [item for block in range(workers) for item in ranked[block::workers]]

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.prometheus",
    "tests.fixtures.brokers",
    "tests.fixtures.delivery",
    "tests.fixtures.operator",
    "tests.fixtures.apiserver",
    "tests.fixtures.workers",
]
