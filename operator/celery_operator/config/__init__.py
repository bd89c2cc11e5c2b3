"""The generated Celery config (data) and the bootstrap module that applies it in pods."""

from celery_operator.config.bootstrap import bootstrap_source
from celery_operator.config.celeryconfig import Config, celery_config, config_hash, config_json

__all__ = ["Config", "bootstrap_source", "celery_config", "config_hash", "config_json"]
