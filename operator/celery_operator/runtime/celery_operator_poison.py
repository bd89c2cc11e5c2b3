"""Poison tasks: a task that keeps killing the worker running it is set aside, not run forever.

Installed by the bootstrap module in worker pods when $CELERY_OPERATOR_MAX_WORKER_DEATHS is set (the
operator sets it from the pool's `maxWorkerDeaths`). The records and the rules are in
celery_operator_poison_rules (the operator's `celery_operator.poison`, shipped unchanged):

- every task start and end rewrites the container's termination message (the tasks in flight), so the
  pod's status says what was running when the container died;
- tasks that acknowledge late (the only ones a dead worker gives back to the broker) get a ledger entry
  in the app's Redis (the result backend when it is Redis, else the broker when it is Redis; with
  neither, the ledger is off and the worker says so in its log): written by the process running the
  task when it starts, deleted when it ends;
- when a message is delivered again (`redelivered`, or a Redis broker that does not say) and its entry
  still names a run whose worker died, that is a death; at `maxWorkerDeaths` deaths the worker's main
  process publishes the message unchanged (body, headers, properties) plus the header
  `x-celery-operator-quarantine` (why: the deaths, their pods and how they died) to the queue
  `<queue>.quarantine`, and lets Celery discard the delivery as revoked, which acknowledges it. The id is
  taken off the revoked list at once, so a replay of the same task runs;
- a graceful shutdown (SIGTERM: rollouts, scale-ins) marks this container's run, so what it gives
  back is not counted as deaths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from celery import signals
from celery.exceptions import WorkerLostError
from kombu import Queue

import celery_operator_poison_rules as rules
from celery_operator_metrics import process_alive, resolve_queue

log = logging.getLogger("celery_operator.poison")

# The operator's names for what this module reads (celery_operator.api; a unit test checks they agree).
ENV_MAX_WORKER_DEATHS = "CELERY_OPERATOR_MAX_WORKER_DEATHS"
ENV_TERMINATION_LOG = "CELERY_OPERATOR_TERMINATION_LOG"
ENV_INFLIGHT_DIR = "CELERY_OPERATOR_INFLIGHT_DIR"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DEFAULT_INFLIGHT_DIR = "/tmp/celery-operator-inflight"
# AMQP properties a quarantined message keeps (expiration is dropped: it must wait to be replayed).
_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "timestamp", "message_id", "type", "app_id")


OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills(paths: tuple[str, ...] = OOM_COUNTERS) -> int | None:
    """The container's cgroup's count of processes the OOM killer ended (cgroup v2, else v1), if readable."""
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


class Poison:
    """The poison-task protection of one worker container (one instance, shared by its forked children)."""

    def __init__(self, app: Any, max_deaths: int, termination_log: str, inflight_dir: str,
                 quarantine_queues: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.max_deaths = max_deaths
        self.quarantine_queues = dict(quarantine_queues or {})  # queue -> chosen quarantine queue
        self.termination_log = termination_log
        self.inflight_dir = inflight_dir
        self.pod = os.environ.get("HOSTNAME") or socket.gethostname()
        self.boot = uuid.uuid4().hex[:16]  # this container's run: children inherit it
        self._client: Any = None
        self._client_pid = 0
        self._ledger_off_said = False
        self._shutting_down = False
        self._oom_kills = oom_kills()  # as last seen: a rise says a child's SIGKILL was the OOM killer's
        self._quarantined: set[str] = set()  # ids revoked by us, to take off the revoked list again

    # -- the app's Redis ------------------------------------------------------------------------------
    def redis(self) -> Any:
        """A Redis client in this process (result backend's, else the Redis broker's), or None."""
        if self._client is not None and self._client_pid == os.getpid():
            return self._client
        client = None
        backend = self.app.backend
        if type(backend).__name__ in ("RedisBackend", "SentinelBackend"):
            client = backend.client
        else:
            url = str(self.app.conf.broker_url or "")
            if url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
                conn = self.app.connection_for_write()
                client = conn.default_channel.client
        if client is None and not self._ledger_off_said:
            self._ledger_off_said = True
            log.warning("celery-operator: poison-task protection is off: neither the result backend nor the "
                        "broker is Redis, so there is nowhere to count worker deaths")
        self._client, self._client_pid = client, os.getpid()
        return client

    def _ledger_entry(self, task_id: str) -> tuple[Any, dict[str, Any] | None]:
        """The app's Redis and the task's ledger entry (None when it has none); (None, None) without Redis."""
        client = self.redis()
        if client is None:
            return None, None
        return client, rules.load_entry(client.get(rules.LEDGER_PREFIX + task_id))

    @staticmethod
    def _write_entry(client: Any, task_id: str, entry: dict[str, Any]) -> None:
        client.set(rules.LEDGER_PREFIX + task_id, json.dumps(entry, separators=(",", ":")), ex=rules.LEDGER_TTL_SECONDS)

    # -- termination message (any process running tasks) ---------------------------------------------
    def _write_termination(self) -> None:
        tasks: list[tuple[str, str]] = []
        try:
            names = sorted(os.listdir(self.inflight_dir))
        except OSError:
            return
        for task_id in names:
            path = os.path.join(self.inflight_dir, task_id)
            try:
                with open(path, encoding="utf-8") as f:
                    pid_text, _, name = f.read().partition("\t")
                if not process_alive(int(pid_text)):
                    os.unlink(path)  # a child that died without its postrun
                    continue
            except (OSError, ValueError):
                continue
            tasks.append((task_id, name))
        text = rules.termination_message(self.boot, tasks)
        with contextlib.suppress(OSError), open(self.termination_log, "w", encoding="utf-8") as f:
            f.write(text)

    def _update_termination(self, task_id: str, name: str | None) -> None:
        """Add (name given) or remove a task in flight, then rewrite the termination message."""
        path = os.path.join(self.inflight_dir, task_id.replace("/", "_"))
        try:
            with open(os.path.join(self.inflight_dir, ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if name is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(f"{os.getpid()}\t{name}")
                self._write_termination()
        except OSError as e:
            log.debug("celery-operator: termination message not updated: %s", e)

    # -- signal handlers ------------------------------------------------------------------------------
    def on_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if not task_id or task is None:
            return
        self._update_termination(task_id, str(task.name))
        if not getattr(task, "acks_late", False):
            return  # acknowledged before it ran: a death loses it, it cannot loop
        try:
            client, entry = self._ledger_entry(task_id)
            if client is None:
                return
            self._write_entry(client, task_id,
                              rules.started(entry, str(task.name), self.pod, self.boot, os.getpid(), time.time()))
        except Exception as e:  # noqa: BLE001 (never fail a task for its bookkeeping)
            log.warning("celery-operator: poison ledger not written for %s: %s", task_id, e)

    def on_postrun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if not task_id:
            return
        self._update_termination(task_id, None)
        if task is None or not getattr(task, "acks_late", False):
            return
        try:
            client = self.redis()
            if client is not None:
                client.delete(rules.LEDGER_PREFIX + task_id)
        except Exception as e:  # noqa: BLE001 (bookkeeping only: the task is unaffected)
            log.warning("celery-operator: poison ledger not cleared for %s: %s", task_id, e)

    def on_received(self, request: Any = None, **_: Any) -> None:
        """Main process: a delivery of a task. Count a death; set the task aside at the limit."""
        if request is None:
            return
        message = getattr(request, "message", None)
        info = getattr(message, "delivery_info", None) or {}
        if info.get("redelivered") is False:
            return  # first delivery (RabbitMQ says so; a Redis broker may not say: then look)
        task_id = str(request.id)
        try:
            client, entry = self._ledger_entry(task_id)
            if entry is None:
                return
            run = entry.get("run") or {}
            shut_down = bool(run) and bool(client.exists(rules.SHUTDOWN_PREFIX + str(run.get("boot", ""))))
            pid = run.get("pid")
            pid_alive = run.get("boot") == self.boot and isinstance(pid, int) and process_alive(pid)
            verdict = rules.delivered(entry, boot=self.boot, pid_alive=pid_alive, shut_down=shut_down,
                                      how=None, max_deaths=self.max_deaths,
                                      at=time.time())
            if verdict.died:
                last = verdict.entry["deaths"][-1] if verdict.entry else {}
                log.warning("celery-operator: task %s[%s] was running on %s when its worker died (%s): "
                            "death %d of at most %d", request.name, task_id, last.get("pod"), last.get("how"),
                            len((verdict.entry or {}).get("deaths", [])), self.max_deaths)
            if verdict.quarantine and verdict.entry is not None:
                self.quarantine(request, verdict.entry, client)
                return
            if verdict.entry is not None and verdict.entry is not entry:
                self._write_entry(client, task_id, verdict.entry)
        except Exception as e:  # noqa: BLE001 (the task runs as it would have without us)
            log.warning("celery-operator: poison check failed for %s: %s", task_id, e)

    def child_died(self, task_id: str, how: str) -> None:
        """Main process: a child running `task_id` died (Celery's WorkerLostError says how), before Celery gives
        the message back: the death is recorded now, with how, wherever the task is delivered next."""
        if self._shutting_down:
            return  # this worker is stopping its children itself (a cold or soft shutdown)
        if "SIGKILL" in how or "signal 9" in how:
            kills = oom_kills()
            if kills is not None and self._oom_kills is not None and kills > self._oom_kills:
                how = f"OOMKilled ({how})"
            self._oom_kills = kills
        try:
            client, entry = self._ledger_entry(task_id)
            run = (entry or {}).get("run") or {}
            if entry is None or run.get("boot") != self.boot:
                return
            verdict = rules.delivered(entry, boot=self.boot, pid_alive=False, shut_down=False, how=how,
                                      max_deaths=self.max_deaths, at=time.time())
            if verdict.entry is not None:
                self._write_entry(client, task_id, verdict.entry)
            log.warning("celery-operator: the worker process running task %s died (%s): death %d of at most %d",
                        task_id, how, len((verdict.entry or {}).get("deaths", [])), self.max_deaths)
        except Exception as e:  # noqa: BLE001 (bookkeeping only: the next delivery counts it without how)
            log.warning("celery-operator: death of %s's process not recorded: %s", task_id, e)

    def quarantine(self, request: Any, entry: dict[str, Any], client: Any) -> None:
        from celery.worker import state as worker_state

        message = request.message
        info = message.delivery_info or {}
        queue = resolve_queue(self.app.amqp.queues.values(), info.get("exchange") or "",
                              info.get("routing_key") or "") or str(info.get("routing_key") or "")
        target = self.quarantine_queues.get(queue) or rules.quarantine_queue(queue)
        record = rules.quarantine_record(entry, str(request.id), queue, target, time.time())
        headers = dict(message.headers or {})
        headers[rules.QUARANTINE_HEADER] = json.dumps(record, separators=(",", ":"))
        properties = {k: message.properties[k] for k in _KEPT_PROPERTIES if message.properties.get(k) is not None}
        # A Redis broker keeps the priority in the delivery info.
        if "priority" not in properties and isinstance(info.get("priority"), int):
            properties["priority"] = info["priority"]
        declared = Queue(target, durable=True, auto_delete=False)
        with self.app.producer_or_acquire() as producer:
            producer.publish(message.body, exchange="", routing_key=target, headers=headers,
                             content_type=message.content_type, content_encoding=message.content_encoding,
                             delivery_mode=2, declare=[declared], retry=True,
                             retry_policy={"max_retries": 5}, **properties)
        client.hset(rules.QUARANTINE_KEY, str(request.id), json.dumps(record, separators=(",", ":")))
        self._write_entry(client, str(request.id), entry)
        log.error("celery-operator: task %s[%s] killed its worker %d times (%s): moved to queue %s, not run again",
                  request.name, request.id, len(entry["deaths"]),
                  "; ".join(f"{d.get('pod')}: {d.get('how')}" for d in entry["deaths"]), target)
        # Celery discards (and acknowledges) a revoked task before it runs; taken off the list on task_revoked.
        self._quarantined.add(str(request.id))
        worker_state.revoked.add(str(request.id))

    def on_revoked(self, request: Any = None, **_: Any) -> None:
        task_id = str(getattr(request, "id", "") or "")
        if task_id in self._quarantined:
            from celery.worker import state as worker_state

            self._quarantined.discard(task_id)
            worker_state.revoked.discard(task_id)

    def on_shutting_down(self, **_: Any) -> None:
        """Main process, in the SIGTERM handler: what this container gives back from now is no death."""
        self._shutting_down = True
        def mark() -> None:
            try:
                client = self.redis()
                if client is not None:
                    client.set(rules.SHUTDOWN_PREFIX + self.boot, self.pod, ex=rules.LEDGER_TTL_SECONDS)
            except Exception as e:  # noqa: BLE001 (at worst, what the shutdown gives back counts as deaths)
                log.warning("celery-operator: graceful shutdown not recorded: %s", e)

        thread = threading.Thread(target=mark, daemon=True)  # its own connection, not one in use
        thread.start()
        thread.join(5)

    def on_worker_init(self, **_: Any) -> None:
        """The worker's main process, before its pool starts: an earlier run's leftovers go (an emptyDir
        survives container restarts) and the termination message starts empty. Only there: any other process
        that loads the app in the pod (`kubectl exec ... celery inspect`) must leave the worker's record alone."""
        try:
            os.makedirs(self.inflight_dir, exist_ok=True)
            for name in os.listdir(self.inflight_dir):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.inflight_dir, name))
        except OSError as e:
            log.warning("celery-operator: no termination message of the tasks in flight: %s", e)
            return
        self._update_termination(".none", None)  # an empty message, not the last run's

    def connect(self) -> None:
        signals.worker_init.connect(self.on_worker_init, weak=False)
        signals.task_prerun.connect(self.on_prerun, weak=False)
        signals.task_postrun.connect(self.on_postrun, weak=False)
        signals.task_received.connect(self.on_received, weak=False)
        signals.task_revoked.connect(self.on_revoked, weak=False)
        signals.worker_shutting_down.connect(self.on_shutting_down, weak=False)
        _install_request_class(self)


def _install_request_class(poison: Poison) -> None:
    """Make the main process remember how a child running a task died (Celery's WorkerLostError says:
    "exitcode 1", "signal 9 (SIGKILL)"), for the death it records when the task is delivered again.
    Tasks with a Request class of their own keep it (their deaths read "child process lost")."""
    from celery.worker.request import Request

    base = poison.app.Task
    if getattr(base, "Request", None) not in (None, "celery.worker.request:Request", Request):
        return

    class PoisonRequest(Request):  # type: ignore[misc]
        def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)
            if isinstance(exc, (WorkerLostError, SystemExit)):
                text = str(exc)
                if "exited prematurely:" in text:
                    text = text.split("exited prematurely:", 1)[1].split(" Job:", 1)[0].strip().rstrip(".")
                poison.child_died(str(self.id), text[:200] or type(exc).__name__)
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    base.Request = PoisonRequest


def install(app: Any, quarantine_queues: Mapping[str, str] | None = None) -> Poison | None:
    """Protect the worker from poison tasks when the operator asks for it (its environment variable)."""
    raw = os.environ.get(ENV_MAX_WORKER_DEATHS)
    if not raw:
        return None
    try:
        max_deaths = max(1, int(raw))
    except ValueError:
        log.warning("celery-operator: %s=%r is not a number: poison-task protection is off", ENV_MAX_WORKER_DEATHS, raw)
        return None
    poison = Poison(app, max_deaths, os.environ.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG,
                    os.environ.get(ENV_INFLIGHT_DIR) or DEFAULT_INFLIGHT_DIR, quarantine_queues)
    poison.connect()
    return poison
