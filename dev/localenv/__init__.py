"""The project's local environment: a real control plane, real brokers and a pod runner, on loopback.

Used by the tests (through fixtures in tests/fixtures/) and by `make up` / `make demo`.
"""
