"""The ConfigMap holding the generated config and the bootstrap module."""

from __future__ import annotations

import json

from celery_operator import api
from celery_operator.config import bootstrap_source, celery_config, config_hash
from celery_operator.render import configmap
from tests.unit import crs


def test_config_map_holds_config_and_bootstrap_with_hash_annotation() -> None:
    topo = crs.seed()
    cm = configmap.config_map(topo, None)
    config = celery_config(topo)
    assert cm["metadata"]["name"] == "proj-celery-config"
    assert cm["metadata"]["labels"][api.LABEL_COMPONENT] == api.COMPONENT_CONFIG
    assert set(cm["data"]) == {api.CONFIG_JSON_KEY, api.BOOTSTRAP_FILE}
    assert json.loads(cm["data"][api.CONFIG_JSON_KEY]) == config
    assert cm["data"][api.BOOTSTRAP_FILE] == bootstrap_source()
    assert cm["metadata"]["annotations"] == {api.ANNOTATION_CONFIG_HASH: config_hash(config)}


def test_bootstrap_source_has_every_placeholder_filled_and_compiles() -> None:
    source = bootstrap_source()
    assert "@@" not in source
    assert api.CONFIG_MOUNT_PATH in source
    assert api.HEARTBEAT_FILE in source
    compile(source, api.BOOTSTRAP_FILE, "exec")
