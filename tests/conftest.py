"""Shared pytest configuration. Fixtures live in plugin modules, one per kind of server."""

import signal

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

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.prometheus",
    "tests.fixtures.brokers",
    "tests.fixtures.delivery",
    "tests.fixtures.operator",
    "tests.fixtures.apiserver",
    "tests.fixtures.workers",
]
