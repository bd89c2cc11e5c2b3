"""Real RabbitMQ and Redis servers for tests and benchmarks, run from the Debian packages.

Each server binds only 127.0.0.1 on random free ports and keeps its data, logs and config in a
work directory, so several runs (and several engineers) on one machine never clash: RabbitMQ gets a
unique node name, Erlang cookie (via HOME), distribution port and its own epmd on its own port.

`stop()` then `start()` (or `restart()`) brings a server back on the SAME ports with the same data,
which is what tests need to prove the operator survives a broker outage.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from celery_operator.brokers.base import BrokerUnreachable
from celery_operator.brokers.rabbitmq import ManagementClient, ManagementHttpError
from localenv.procs import ServerError, free_port, pid_alive, tail

RABBITMQ_SBIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_installed(*binaries: str) -> None:
    """apt-get install the broker packages when a binary is missing (the Makefile does this too)."""
    if all(shutil.which(b) or (RABBITMQ_SBIN / b).exists() for b in binaries):
        return
    try:
        subprocess.run(["apt-get", "install", "-y", "rabbitmq-server", "redis-server"],
                       check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise ServerError(f"{', '.join(binaries)} missing and apt-get install failed: {e}") from e


def management_request(client: ManagementClient, method: str, path: str, body: Any = None,
                       timeout: float = 10) -> Any:
    """One request to a RabbitMQ's management API through the operator's client, with the harness's errors:
    an HTTP error is a ServerError whose text has "HTTP <code>"; no answer, an OSError."""
    try:
        return client.request(method, path, body, timeout=timeout)
    except ManagementHttpError as e:
        raise ServerError(str(e)) from e
    except BrokerUnreachable as e:
        raise OSError(str(e)) from e


class RabbitMQAdmin:
    """What tests and benchmarks do as a RabbitMQ's administrator `user`, through its management API (`api`)."""

    user = "admin"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        raise NotImplementedError

    def add_vhost(self, name: str) -> None:
        q = urllib.parse.quote(name, safe="")
        self.api("PUT", f"/api/vhosts/{q}", {})
        self.api("PUT", f"/api/permissions/{q}/{self.user}", {"configure": ".*", "write": ".*", "read": ".*"})

    def delete_vhost(self, name: str) -> None:
        try:
            self.api("DELETE", f"/api/vhosts/{urllib.parse.quote(name, safe='')}")
        except ServerError as e:
            if "HTTP 404" not in str(e):
                raise

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/queues/{urllib.parse.quote(vhost, safe='')}/"
                                    f"{urllib.parse.quote(name, safe='')}"))


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it after `timeout` seconds (at once when 0)."""
    if proc.poll() is not None:
        return
    try:
        if timeout <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class _Server:
    """Shared lifecycle: work dir, context manager, restart."""

    name = "server"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, graceful: bool = True) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Kill (no graceful shutdown: the data goes) and remove the work dir if this object made it."""
        self.stop(graceful=False)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


class Redis(_Server):
    """`redis-server` with a password, no persistence, 64 databases."""

    name = "redis"
    databases = 64

    def __init__(self, workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.logfile = self.workdir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        if self.running:
            return
        ensure_installed("redis-server")
        conf = self.workdir / "redis.conf"
        conf.write_text("\n".join([
            "bind 127.0.0.1",
            f"port {self.port}",
            f"requirepass {self.password}",
            'save ""',
            "appendonly no",
            f"dir {self.workdir}",
            f"logfile {self.logfile}",
            "daemonize no",
            f"databases {self.databases}",
            "protected-mode yes",
        ]) + "\n")
        self._proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"redis-server exited with {self._proc.returncode}:\n{self.logs()}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"redis-server not ready on port {self.port} after 30s:\n{self.logs()}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(256)
                    if not chunk:
                        return False
                    data += chunk
                return data.endswith(b"+PONG\r\n")
        except OSError:
            return False

    def stop(self, graceful: bool = True) -> None:
        if self._proc is not None:
            _terminate(self._proc, STOP_TIMEOUT_SECONDS if graceful else 0)
            self._proc = None

    def logs(self) -> str:
        return tail(self.logfile)


class RabbitMQ(_Server, RabbitMQAdmin):
    """`rabbitmq-server` with the management plugin, an admin user and isolated Erlang distribution."""

    name = "rabbitmq"

    def __init__(self, workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        self.password = secrets.token_hex(12)
        self.nodename = f"rabbit-{secrets.token_hex(4)}@localhost"
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.home = self.workdir / "home"
        self.log_dir = self.workdir / "log"
        self._epmd: subprocess.Popen[bytes] | None = None
        self._cookie = secrets.token_hex(16)
        self._attached: list[int] = []  # the pids of a server another process started (`attach`)

    # -- shared by processes ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What another process needs to use this running server (`attach`) and, at the end, stop it."""
        assert self._proc is not None and self._epmd is not None, "not started here"
        return {"workdir": str(self.workdir), "password": self.password, "nodename": self.nodename,
                "amqp_port": self.amqp_port, "management_port": self.management_port, "dist_port": self.dist_port,
                "epmd_port": self.epmd_port, "cookie": self._cookie, "pids": [self._proc.pid, self._epmd.pid]}

    @classmethod
    def attach(cls, state: dict[str, Any]) -> RabbitMQ:
        """A server another process started and left running (`python -m localenv rabbitmq up`): usable
        as one started here, except that it cannot be started again; `stop()` ends it."""
        server = cls(state["workdir"])
        server._owns_workdir = True  # `cleanup()` (the run's end) removes it
        server.password, server.nodename, server._cookie = state["password"], state["nodename"], state["cookie"]
        server.amqp_port, server.management_port = state["amqp_port"], state["management_port"]
        server.dist_port, server.epmd_port = state["dist_port"], state["epmd_port"]
        server._attached = [int(p) for p in state["pids"]]
        return server

    @property
    def running(self) -> bool:
        if self._attached:
            return all(pid_alive(p) for p in self._attached)
        return super().running

    # -- addresses --------------------------------------------------------------------------------

    def url(self, vhost: str = "/") -> str:
        return (f"amqp://{self.user}:{self.password}@127.0.0.1:{self.amqp_port}/"
                f"{urllib.parse.quote(vhost, safe='')}")

    @property
    def management_url(self) -> str:
        """Base URL of the management API with credentials (as an operator user would give it)."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.management_port}"

    @property
    def _management(self) -> ManagementClient:
        return ManagementClient.of(self.management_url)

    # -- lifecycle --------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=str(self.home),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback,
            RABBITMQ_CTL_ERL_ARGS=loopback,
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.dist_port + 1),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.dist_port + 50),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.workdir / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            "management.tcp.ip = 127.0.0.1",
            f"management.tcp.port = {self.management_port}",
            "loopback_users = none",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "default_user_tags.administrator = true",
            "disk_free_limit.absolute = 1MB",
            "vm_memory_high_watermark.relative = 0.8",
            "log.console = false",
            "log.file.level = info",
            # Stats are only needed for message rates; depth comes from queue totals.
            "collect_statistics_interval = 1000",
        ]) + "\n")

    def start(self) -> None:
        if self.running:
            return
        if self._attached:
            raise ServerError(f"the shared RabbitMQ {self.nodename} is gone (pids {self._attached}):\n{self.logs()}")
        ensure_installed("rabbitmq-server")
        self._write_config()
        env = self._env()
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        stdout = open(self.workdir / "server.out", "ab")  # noqa: SIM115 - lives as long as the server
        try:
            self._proc = subprocess.Popen([str(RABBITMQ_SBIN / "rabbitmq-server")], env=env,
                                          cwd=self.workdir, stdout=stdout, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            stdout.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise ServerError(f"rabbitmq-server exited with {code}:\n{self.logs()}")
            if port_open(self.amqp_port) and self._management_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"rabbitmq-server not ready after {START_TIMEOUT_SECONDS}s:\n{self.logs()}")

    def _management_ready(self) -> bool:
        try:
            self.api("GET", "/api/overview")
            return True
        except (OSError, ServerError):
            return False

    def stop(self, graceful: bool = True) -> None:
        # An attached server is stopped only at its run's end, when its data does not matter: killed at once.
        for pid in self._attached:  # each leads a process group of its own (start_new_session)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self._attached = []
        if self._proc is not None:
            _terminate(self._proc, STOP_TIMEOUT_SECONDS if graceful else 0)
            self._proc = None
        if self._epmd is not None:
            _terminate(self._epmd, 5)
            self._epmd = None

    def logs(self) -> str:
        parts = [tail(self.workdir / "server.out", 20),
                 tail(self.log_dir / f"{self.nodename}.log", 40)]
        return "\n".join(parts)

    def log_text(self) -> str:
        """What the node logged so far (empty before its log exists)."""
        path = self.log_dir / f"{self.nodename}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- administration ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the management HTTP API (the operator's client); the decoded JSON (None for empty bodies).
        An HTTP error is a ServerError ("... HTTP <code> ..."); no answer, an OSError."""
        return management_request(self._management, method, path, body, timeout)

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this node (its name, cookie and epmd); returns stdout."""
        proc = subprocess.run([str(RABBITMQ_SBIN / "rabbitmqctl"), "-n", self.nodename, *args],
                              env=self._env(), capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ServerError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): "
                              f"{proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode(errors="replace")
