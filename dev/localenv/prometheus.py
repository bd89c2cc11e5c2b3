"""A real Prometheus server (the Debian `prometheus` binary) scraping given targets every second.

Besides static `targets`, it takes whole `scrape_configs` (e.g. Kubernetes service discovery).

Binds 127.0.0.1 on a free port; config, TSDB and log live in a temp directory removed on `stop()`.
`query(promql)` runs an instant query through the HTTP API; `wait_for(promql)` polls until it
returns something, since a fresh server needs a scrape or two before data appears.
`MetricsTarget` serves any exposition callable on loopback from a thread: a scrape target for tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from localenv.procs import ServerError, free_port, spawn, stop, tail, wait_until

PROMETHEUS_BIN = "/usr/bin/prometheus"
READY_TIMEOUT_SECONDS = 60.0
SCRAPE_INTERVAL = "1s"


def binary() -> str:
    """Path of the prometheus binary; ServerError when it is not installed."""
    found = shutil.which("prometheus") or (PROMETHEUS_BIN if Path(PROMETHEUS_BIN).exists() else None)
    if found is None:
        raise ServerError("prometheus is not installed (apt-get install -y prometheus)")
    return found


def scrape_config(targets: Sequence[str], metrics_path: str = "/metrics",
                  scrape_configs: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    static = [{
        "job_name": "targets",
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": list(targets)}],
    }] if targets else []
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [*static, *scrape_configs],
    }


class Prometheus:
    def __init__(self, targets: Sequence[str], workdir: Path | None = None, metrics_path: str = "/metrics",
                 rule_files: Sequence[Path] = (), scrape_configs: Sequence[dict[str, Any]] = ()) -> None:
        self.targets = list(targets)
        self.metrics_path = metrics_path
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_configs = list(scrape_configs)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self) -> Self:
        exe = binary()
        config = scrape_config(self.targets, self.metrics_path, self.scrape_configs)
        if self.rule_files:
            config["rule_files"] = [str(p.resolve()) for p in self.rule_files]
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = spawn([
            exe,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ], self.log, cwd=self.workdir)
        try:
            wait_until(self._ready, READY_TIMEOUT_SECONDS, "prometheus", proc=self.proc, log=self.log)
        except BaseException:
            stop(self.proc)
            self.proc = None
            raise
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
            return int(r.status) == 200

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, ServerError otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ServerError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result: [{"metric": {...labels}, "value": [ts, "text"]}, ...]."""
        data = self.api("query", query=promql)
        result = data["result"]
        if data["resultType"] == "scalar" or data["resultType"] == "string":
            return [{"metric": {}, "value": result}]
        return list(result)

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll `query` until it returns at least one series."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise ServerError(f"no result for {promql!r} after {timeout:.0f}s; targets: "
                                  f"{self.api('targets')}\n{tail(self.log)}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MetricsTarget:
    """A stdlib HTTP server on 127.0.0.1 answering `/metrics` with `exposition()`, in a thread."""

    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self.exposition = exposition
        self.scrapes = 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = target.exposition()
                target.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-target", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
