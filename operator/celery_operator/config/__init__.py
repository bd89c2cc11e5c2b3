"""The generated Celery config (data) and the modules that apply it in pods."""

from celery_operator.config.bootstrap import bootstrap_source, module_sources
from celery_operator.config.celeryconfig import Config, celery_config, config_hash, config_json

__all__ = ["Config", "bootstrap_source", "celery_config", "config_hash", "config_json", "module_sources"]
