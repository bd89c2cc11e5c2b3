"""Shared pytest configuration. Fixtures live in plugin modules, one per kind of server."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.prometheus",
    "tests.fixtures.brokers",
    "tests.fixtures.delivery",
    "tests.fixtures.operator",
]
