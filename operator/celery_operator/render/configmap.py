"""The ConfigMap `<app>-celery-config`: the generated config, the bootstrap module and its metrics module."""

from __future__ import annotations

from typing import Any

from celery_operator import api
from celery_operator.config import celery_config, config_hash, config_json, module_sources
from celery_operator.config.celeryconfig import Config
from celery_operator.models import Body
from celery_operator.render import labels as lbl
from celery_operator.render import names
from celery_operator.topology import Topology


def config_map(topology: Topology, owner: dict[str, Any] | None, config: Config | None = None) -> Body:
    """`config` defaults to `celery_config(topology)`; its hash is annotated (and rolls the pods)."""
    app = topology.app
    if config is None:
        config = celery_config(topology)
    name = names.config_map(app.meta.name)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": lbl.metadata(name, app.meta.namespace,
                                 lbl.labels(app.meta.name, api.COMPONENT_CONFIG, instance=name),
                                 owner, {api.ANNOTATION_CONFIG_HASH: config_hash(config)}),
        "data": {api.CONFIG_JSON_KEY: config_json(config), **module_sources()},
    }
