"""The modules shipped into users' pods (celery_operator/runtime/): what the ConfigMap carries, the names
they share with the operator, what they may import, and the Python they must run on."""

from __future__ import annotations

import ast
import contextlib
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from celery_operator import api, metrics
from celery_operator.config import bootstrap, module_sources
from celery_operator.render import configmap
from tests.unit import crs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "celery_operator"
RUNTIME = PACKAGE / "runtime"
# What the pods' modules may import besides the standard library and each other.
ALLOWED = {"celery", "kombu", "prometheus_client"}


def tree(key: str) -> ast.Module:
    return ast.parse(module_sources()[key], key)


def constants(key: str) -> dict[str, Any]:
    """The module-level names of a runtime module bound to a literal."""
    out: dict[str, Any] = {}
    for node in tree(key).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        with contextlib.suppress(ValueError):
            out[name] = ast.literal_eval(value)
    return out


def imported(key: str) -> set[str]:
    """The top-level names of the modules a runtime module imports (anywhere in it)."""
    names = set()
    for node in ast.walk(tree(key)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{key}: a relative import cannot work in the pod"
            names.add((node.module or "").split(".")[0])
    return names


def test_the_config_map_carries_exactly_the_runtime_modules_source() -> None:
    assert {p.name for p in RUNTIME.glob("*.py")} - {"__init__.py"} == set(bootstrap.RUNTIME_FILES)
    cm = configmap.config_map(crs.seed(), None)
    for key in bootstrap.RUNTIME_FILES:
        assert cm["data"][key] == module_sources()[key] == (RUNTIME / key).read_text(encoding="utf-8"), key
    assert list(module_sources()) == list(bootstrap.RUNTIME_FILES)  # the bootstrap first


def test_the_schedule_module_is_the_operators_own() -> None:
    assert (RUNTIME / api.SCHEDULE_FILE).resolve() == (PACKAGE / "schedule.py").resolve()


@pytest.mark.parametrize(("key", "expected"), [
    (api.BOOTSTRAP_FILE, {
        "ENV_APP": api.ENV_APP, "ENV_CONFIG_DIR": api.ENV_CONFIG_DIR, "ENV_HEARTBEAT_FILE": api.ENV_HEARTBEAT_FILE,
        "ENV_BROKER_URL": api.ENV_BROKER_URL, "ENV_RESULT_BACKEND": api.ENV_RESULT_BACKEND,
        "ENV_SOFT_SHUTDOWN_TIMEOUT": api.ENV_SOFT_SHUTDOWN_TIMEOUT, "ENV_REMAP_SIGTERM": api.ENV_REMAP_SIGTERM,
        "CONFIG_MOUNT_PATH": api.CONFIG_MOUNT_PATH, "DEFAULT_HEARTBEAT_FILE": api.HEARTBEAT_FILE,
        "CONFIG_JSON_KEY": api.CONFIG_JSON_KEY, "CONFIG_METRICS_LABELS_KEY": api.CONFIG_METRICS_LABELS_KEY,
        "CONFIG_QUARANTINE_QUEUES_KEY": api.CONFIG_QUARANTINE_QUEUES_KEY,
        "CONFIG_BEAT_ENTRIES_KEY": api.CONFIG_BEAT_ENTRIES_KEY}),
    (api.METRICS_FILE, {
        "ENV_METRICS_PORT": api.ENV_METRICS_PORT, "ENV_PROMETHEUS_MULTIPROC_DIR": api.ENV_PROMETHEUS_MULTIPROC_DIR,
        "ENV_POOL": api.ENV_POOL, "METRICS_PORT": api.METRICS_PORT,
        "RUNTIME_BUCKETS": metrics.TASK_RUNTIME_BUCKETS,
        "METRICS": {m.role: (m.name, m.type, m.help, m.labels) for m in metrics.WORKER_METRICS}}),
    (api.BEAT_FILE, {
        "ENV_SERVICE_ACCOUNT_DIR": api.ENV_SERVICE_ACCOUNT_DIR, "ENV_NAMESPACE": api.ENV_NAMESPACE,
        "ENV_POD_NAME": api.ENV_POD_NAME, "ENV_BEAT_STATE": api.ENV_BEAT_STATE, "ENV_BEAT_LEASE": api.ENV_BEAT_LEASE,
        "DEFAULT_SERVICE_ACCOUNT_DIR": api.SERVICE_ACCOUNT_DIR, "HEADER": api.BEAT_SCHEDULED_TIME_HEADER,
        "LEASE_SECONDS": api.BEAT_LEASE_SECONDS, "RENEW_DEADLINE_SECONDS": api.BEAT_RENEW_DEADLINE_SECONDS,
        "RETRY_SECONDS": api.BEAT_RETRY_SECONDS}),
])
def test_the_names_the_runtime_shares_with_the_operator_agree(key: str, expected: dict[str, Any]) -> None:
    found = constants(key)
    assert {name: found.get(name) for name in expected} == expected


def test_the_runtime_modules_import_each_other_by_the_names_the_operator_gives_them() -> None:
    assert api.METRICS_MODULE in imported(api.BOOTSTRAP_FILE)
    assert {api.BOOTSTRAP_MODULE, api.SCHEDULE_MODULE} <= imported(api.BEAT_FILE)
    module, _, attr = api.BEAT_SCHEDULER.partition(":")
    assert module == api.BEAT_MODULE
    assert any(isinstance(n, ast.ClassDef) and n.name == attr for n in tree(api.BEAT_FILE).body)


def test_the_runtime_imports_only_the_standard_library_celery_kombu_prometheus_client_and_itself() -> None:
    siblings = {key.removesuffix(".py") for key in bootstrap.RUNTIME_FILES}
    for key in bootstrap.RUNTIME_FILES:
        outside = imported(key) - set(sys.stdlib_module_names) - {"__future__"} - siblings - ALLOWED
        assert not outside, f"{key} imports {sorted(outside)}"


def test_the_import_contract_forbids_the_runtime_every_other_module_of_the_operator() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"]
                  if c.get("source_modules") == ["celery_operator.runtime"]]
    others = {f"celery_operator.{p.name.removesuffix('.py')}" for p in PACKAGE.iterdir()
              if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name not in ("__init__.py", "__main__.py")}
    assert others - {"celery_operator.runtime"} <= set(contract["forbidden_modules"])


def test_the_runtime_parses_as_python_3_9() -> None:
    for key, source in module_sources().items():
        ast.parse(source, key, feature_version=(3, 9))


def function_of(key: str, name: str, namespace: dict[str, Any]) -> Any:
    """One function of a runtime module, defined alone in `namespace` (its module runs an app on import)."""
    body = tree(key).body
    [node] = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == name]
    exec(compile(ast.Module([body[1], node], []), key, "exec"), namespace)  # body[1]: the __future__ import
    return namespace[name]


@pytest.mark.parametrize(("fake_sys", "expected"), [
    # Python 3.10+: the original command line, interpreter options included.
    (types.SimpleNamespace(orig_argv=["python3", "-X", "dev", "/bin/celery", "-A", "m", "worker"],
                           argv=["/bin/celery", "-A", "m", "worker"], modules={}),
     ["-X", "dev", "/bin/celery", "-A", "m", "worker"]),
    # Python 3.9 (no sys.orig_argv): `celery ...` (a console script) ...
    (types.SimpleNamespace(argv=["/usr/local/bin/celery", "-A", "m", "worker"],
                           modules={"__main__": types.SimpleNamespace(__spec__=None)}),
     ["/usr/local/bin/celery", "-A", "m", "worker"]),
    # ... and `python -m celery ...`.
    (types.SimpleNamespace(argv=["/site-packages/celery/__main__.py", "-A", "m", "worker"],
                           modules={"__main__": types.SimpleNamespace(
                               __spec__=types.SimpleNamespace(name="celery.__main__"))}),
     ["-m", "celery", "-A", "m", "worker"]),
])
def test_the_worker_restarts_itself_with_the_same_command_line_on_every_python(
        fake_sys: types.SimpleNamespace, expected: list[str]) -> None:
    assert isinstance(tree(api.BOOTSTRAP_FILE).body[1], ast.ImportFrom)
    command_line = function_of(api.BOOTSTRAP_FILE, "command_line", {"sys": fake_sys})
    assert command_line() == expected
