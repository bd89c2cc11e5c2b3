"""The bootstrap module, run for real: generated config + user's app -> a configured Celery app.

No broker is needed: the tests load the module as a pod would (config dir, env) and inspect the
resulting `Celery` object.
"""

from __future__ import annotations

import datetime
import importlib.util
import itertools
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import signals
from celery.schedules import crontab
from kombu import Queue

from celery_operator import api
from celery_operator.config import celery_config, config_json, module_sources
from tests.unit import crs

_counter = itertools.count()


def user_module(tmp_path: Path, attr: str = "app") -> str:
    """Write a fresh user app module (unique name, so tests never share a Celery app)."""
    name = f"userproj_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(
        "from celery import Celery\n"
        f"{attr} = Celery({name!r})\n"
        "app_imports = ['userproj_tasks']\n"
        f"{attr}.conf.imports = app_imports\n")
    return name


def load_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any],
                   app_ref: str, env: dict[str, str] | None = None) -> ModuleType:
    """Write the ConfigMap's files to a dir and import the bootstrap from it, as a pod does.

    Task metrics are off (they register process-wide metrics; test_worker_metrics tests them)."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / api.CONFIG_JSON_KEY).write_text(config_json(config))
    for key, source in module_sources().items():
        (config_dir / key).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(config_dir))
    monkeypatch.delitem(sys.modules, api.METRICS_MODULE, raising=False)
    monkeypatch.setenv(api.ENV_CONFIG_DIR, str(config_dir))
    monkeypatch.setenv(api.ENV_HEARTBEAT_FILE, str(tmp_path / "heartbeat"))
    monkeypatch.setenv(api.ENV_APP, app_ref)
    monkeypatch.setenv(api.ENV_METRICS_PORT, "0")
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location(f"bootstrap_{next(_counter)}",
                                                  config_dir / api.BOOTSTRAP_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_bootstrap(tmp_path, monkeypatch, celery_config(crs.seed()), user_module(tmp_path),
                          {api.ENV_BROKER_URL: "amqp://u:p@broker:5672//",
                           api.ENV_RESULT_BACKEND: "redis://:p@backend:6379/0"})


def test_bootstrap_applies_queues_with_their_exchanges(seeded: ModuleType) -> None:
    queues: list[Queue] = list(seeded.app.conf.task_queues)
    assert [(q.name, q.exchange.name, q.exchange.type, q.routing_key) for q in queues] == [
        ("default", "default", "direct", "default"),
        ("high_queue", "task", "topic", "high_task"),
        ("low_queue", "task", "topic", "low_task"),
    ]
    assert queues[1].queue_arguments == {"x-max-priority": 10}
    assert queues[2].queue_arguments is None  # its TTL is a broker policy: redeclares never conflict
    assert all(q.durable and not q.auto_delete for q in queues)
    assert queues[1].exchange.durable is True


def test_bootstrap_routes_tasks_to_their_queues(seeded: ModuleType) -> None:
    router = seeded.app.amqp.router
    assert router.route({}, "sample_tasks.tasks.add")["queue"].name == "high_queue"
    assert router.route({}, "sample_tasks.tasks.slow")["queue"].name == "low_queue"
    default = router.route({}, "sample_tasks.tasks.echo")
    assert default["queue"].name == "default"
    assert default["queue"].routing_key == "default"


def test_bootstrap_builds_beat_schedules(seeded: ModuleType) -> None:
    beat = seeded.app.conf.beat_schedule
    cron = beat["add-every-minute"]
    assert isinstance(cron["schedule"], crontab)
    assert cron["schedule"] == crontab(minute="*")
    assert (cron["args"], cron["options"]) == ([1, 2], {"queue": "high_queue", "priority": 5})
    every = beat["slow-every-30s"]
    assert every["schedule"] == datetime.timedelta(seconds=30)
    assert every["options"] == {"expires": 25}


def test_bootstrap_takes_urls_from_env_and_sets_defaults(seeded: ModuleType) -> None:
    conf = seeded.app.conf
    assert conf.broker_url == "amqp://u:p@broker:5672//"
    assert conf.result_backend == "redis://:p@backend:6379/0"
    assert (conf.task_default_queue, conf.task_default_exchange, conf.task_default_routing_key) == (
        "default", "default", "default")
    assert conf.timezone == "UTC"
    assert conf.broker_connection_retry_on_startup is True
    assert "exchanges" not in conf
    assert api.CONFIG_METRICS_LABELS_KEY not in conf


def test_bootstrap_leaves_metrics_off_when_its_port_is_zero(seeded: ModuleType) -> None:
    assert seeded.TASK_METRICS is None


def test_bootstrap_keeps_the_apps_own_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topo = crs.seed()
    topo = type(topo).of(crs.app(imports=["more_tasks"]))
    module = load_bootstrap(tmp_path, monkeypatch, celery_config(topo), user_module(tmp_path))
    assert tuple(module.app.conf.imports) == ("userproj_tasks", "more_tasks")


def test_bootstrap_resolves_module_colon_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = user_module(tmp_path, attr="my_celery")
    module = load_bootstrap(tmp_path, monkeypatch, celery_config(crs.seed()), f"{name}:my_celery")
    assert module.app is sys.modules[name].my_celery
    assert module.app.conf.task_default_queue == "default"


def test_bootstrap_resolves_the_sample_tasks_app_like_celery_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sample_tasks.app

    saved = dict(sample_tasks.app.app.conf.changes)
    try:
        module = load_bootstrap(tmp_path, monkeypatch, celery_config(crs.seed()), "sample_tasks.app")
        assert module.app is sample_tasks.app.app
        assert "sample_tasks.tasks" in module.app.conf.imports
    finally:
        sample_tasks.app.app.conf.changes.clear()
        sample_tasks.app.app.conf.changes.update(saved)


def test_worker_signals_touch_the_heartbeat_file(tmp_path: Path, seeded: ModuleType) -> None:
    heartbeat = Path(seeded.HEARTBEAT_FILE)
    assert heartbeat == tmp_path / "heartbeat"
    assert not heartbeat.exists()
    signals.worker_ready.send(sender=None)
    assert heartbeat.exists()
    past = time.time() - 600
    os.utime(heartbeat, (past, past))
    signals.heartbeat_sent.send(sender=None)
    assert time.time() - heartbeat.stat().st_mtime < 60


def test_soft_shutdown_timeout_from_the_environment_becomes_celerys_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REMAP_SIGTERM already set: the module configures the app and does not start the process again."""
    module = load_bootstrap(tmp_path, monkeypatch, celery_config(crs.seed()), user_module(tmp_path),
                            {api.ENV_SOFT_SHUTDOWN_TIMEOUT: "54", api.ENV_REMAP_SIGTERM: "SIGQUIT"})
    assert module.app.conf.worker_soft_shutdown_timeout == 54.0


def test_without_the_soft_shutdown_variable_the_worker_shutdown_is_celerys_default(seeded: ModuleType) -> None:
    assert seeded.app.conf.worker_soft_shutdown_timeout == 0.0


def test_published_tasks_carry_their_publish_time_and_keep_a_producers_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real publish (kombu's in-memory transport): the `timestamp` property reaches the message."""
    module = load_bootstrap(tmp_path, monkeypatch, celery_config(crs.seed()), user_module(tmp_path),
                            {api.ENV_BROKER_URL: "memory://"})
    before = int(time.time())
    module.app.send_task("sample_tasks.tasks.add", (1, 2), queue="high_queue")
    module.app.send_task("sample_tasks.tasks.add", (1, 2), queue="high_queue", timestamp=12345)
    with module.app.connection_for_read() as conn:
        queue = Queue("high_queue", channel=conn.default_channel)
        stamped, own = queue.get(no_ack=True), queue.get(no_ack=True)
    assert before <= stamped.properties["timestamp"] <= time.time()
    assert isinstance(stamped.properties["timestamp"], int)  # what py-amqp can carry
    assert own.properties["timestamp"] == 12345
