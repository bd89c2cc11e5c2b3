"""The ConfigMap holding the generated config, the bootstrap module and its metrics module."""

from __future__ import annotations

import json

from celery_operator import api
from celery_operator.config import bootstrap_source, celery_config, config_hash, module_sources
from celery_operator.render import configmap
from tests.unit import crs


def test_config_map_holds_config_and_modules_with_hash_annotation() -> None:
    topo = crs.seed()
    cm = configmap.config_map(topo, None)
    config = celery_config(topo)
    assert cm["metadata"]["name"] == "proj-celery-config"
    assert cm["metadata"]["labels"][api.LABEL_COMPONENT] == api.COMPONENT_CONFIG
    assert set(cm["data"]) == {api.CONFIG_JSON_KEY, *module_sources()}
    assert {api.BOOTSTRAP_FILE, api.METRICS_FILE, api.BEAT_FILE, api.SCHEDULE_FILE, api.POISON_FILE,
            api.POISON_RULES_FILE, api.PROBE_FILE} <= set(module_sources())
    assert json.loads(cm["data"][api.CONFIG_JSON_KEY]) == config
    assert cm["data"][api.BOOTSTRAP_FILE] == bootstrap_source()
    assert cm["data"][api.METRICS_FILE] == module_sources()[api.METRICS_FILE]
    assert cm["data"][api.BEAT_FILE] == module_sources()[api.BEAT_FILE]
    assert cm["data"][api.SCHEDULE_FILE] == module_sources()[api.SCHEDULE_FILE]
    assert cm["metadata"]["annotations"] == {api.ANNOTATION_CONFIG_HASH: config_hash(config)}


def test_shipped_modules_compile() -> None:
    assert f"import {api.METRICS_MODULE}" in bootstrap_source()
    for key, source in module_sources().items():
        compile(source, key, "exec")


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
