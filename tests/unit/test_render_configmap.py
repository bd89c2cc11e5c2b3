"""The ConfigMap holding the generated config, the bootstrap module and its metrics module."""

from __future__ import annotations

import json

from celery_operator import api, metrics
from celery_operator.config import bootstrap_source, celery_config, config_hash, module_sources
from celery_operator.render import configmap
from tests.unit import crs


def test_config_map_holds_config_and_modules_with_hash_annotation() -> None:
    topo = crs.seed()
    cm = configmap.config_map(topo, None)
    config = celery_config(topo)
    assert cm["metadata"]["name"] == "proj-celery-config"
    assert cm["metadata"]["labels"][api.LABEL_COMPONENT] == api.COMPONENT_CONFIG
    assert set(cm["data"]) == {api.CONFIG_JSON_KEY, api.BOOTSTRAP_FILE, api.METRICS_FILE, api.BEAT_FILE,
                               api.SCHEDULE_FILE}
    assert json.loads(cm["data"][api.CONFIG_JSON_KEY]) == config
    assert cm["data"][api.BOOTSTRAP_FILE] == bootstrap_source()
    assert cm["data"][api.METRICS_FILE] == module_sources()[api.METRICS_FILE]
    assert cm["data"][api.BEAT_FILE] == module_sources()[api.BEAT_FILE]
    assert cm["metadata"]["annotations"] == {api.ANNOTATION_CONFIG_HASH: config_hash(config)}


def test_bootstrap_source_has_every_placeholder_filled_and_compiles() -> None:
    source = bootstrap_source()
    assert "@@" not in source
    assert api.CONFIG_MOUNT_PATH in source
    assert api.HEARTBEAT_FILE in source
    compile(source, api.BOOTSTRAP_FILE, "exec")


def test_metrics_module_has_every_placeholder_filled_and_compiles() -> None:
    source = module_sources()[api.METRICS_FILE]
    assert "@@" not in source
    assert f"import {api.METRICS_MODULE}" in bootstrap_source()
    compile(source, api.METRICS_FILE, "exec")


def test_metrics_module_takes_every_worker_metric_from_the_metrics_module() -> None:
    namespace: dict[str, object] = {}
    source = module_sources()[api.METRICS_FILE]
    table = source.split("METRICS = ", 1)[1].split("\n}\n", 1)[0] + "\n}"
    exec(f"METRICS = {table}", namespace)  # the literal the template got, evaluated alone
    assert namespace["METRICS"] == {m.role: (m.name, m.type, m.help, m.labels) for m in metrics.WORKER_METRICS}


def test_the_schedule_module_ships_verbatim_so_beat_and_the_operator_compute_the_same_runs() -> None:
    from pathlib import Path

    from celery_operator import schedule

    assert module_sources()[api.SCHEDULE_FILE] == Path(schedule.__file__).read_text(encoding="utf-8")
    assert f"import {api.SCHEDULE_MODULE} as" in module_sources()[api.BEAT_FILE]


def test_shipped_modules_run_on_python_3_9_and_the_schedule_module_needs_only_the_standard_library() -> None:
    import ast
    import sys

    trees = {key: ast.parse(source, feature_version=(3, 9)) for key, source in module_sources().items()}
    imported = {alias.name.split(".")[0] for node in ast.walk(trees[api.SCHEDULE_FILE])
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
    for source in module_sources().values():
        assert "@@" not in source
