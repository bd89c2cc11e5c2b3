"""RabbitMQ side effects: declares over AMQP (py-amqp), depth from the management HTTP API.

Depth costs ONE HTTP request per vhost per poll, whatever the number of queues:
`GET /api/queues/<vhost>?columns=name,messages_ready,messages_unacknowledged,consumers` with
`disable_stats=true&enable_queue_totals=true`. That mode (RabbitMQ 3.8+) reads the message totals
live from the queues and skips the statistics database, so the counts are fresh and cheap; its
price is that it has no consumer counts (`consumers` is None). `stats="full"` drops
`disable_stats` to get consumer counts from the statistics database, which lag by up to
`collect_statistics_interval` (5 s by default) and cost the broker more; that listing also gives
each queue's head message timestamp and delivery rate (`STATISTICS_COLUMNS`, for the queue wait). A
queue the statistics database has not reached yet (declared less than an interval ago) is listed there by
name only; its counts then come from a second, live-totals request.

When the management API cannot be reached but AMQP can, depth falls back to one passive
`queue.declare` per queue over one connection: ready and consumers are live, in-flight is unknown.

Queue settings that can change on a live queue (TTL, max length, dead-lettering: see
`topology.queue_policy`) are not declare arguments, which RabbitMQ never lets change: each queue
that sets them gets its own policy, `celery-operator.<queue>`, through the management API
(`PUT /api/policies/<vhost>/<name>`): pattern `^<queue>$` (regex-escaped, so it matches that queue
only), `apply-to: queues`, priority `POLICY_PRIORITY`. RabbitMQ applies one policy per queue, the
highest-priority match, so this one takes over from users' policies of lower priority that match
the same queue. A declare costs one `GET /api/policies/<vhost>` plus one request per policy that
changes; a queue whose settings are all unset loses its policy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import amqp
import amqp.exceptions

from celery_operator import api
from celery_operator.brokers.base import (
    CONNECT_TIMEOUT_SECONDS,
    IO_TIMEOUT_SECONDS,
    BrokerError,
    BrokerUnreachable,
    DeclareResult,
    DepthReport,
    QueueDepth,
    queue_exchange,
)
from celery_operator.brokers.urls import (
    ManagementUrl,
    management_for,
    parse_amqp,
    parse_management,
    redact,
)
from celery_operator.models import CeleryExchange, CeleryQueue
from celery_operator.topology import policy_fields, queue_arguments, queue_policy
from celery_operator.waits import published_at

PRECONDITION_FAILED = 406
NOT_FOUND = 404
QUEUE_COLUMNS = "name,messages_ready,messages_unacknowledged,consumers"
# Only the statistics listing has these: the head message's `timestamp` property (classic queues) and the
# rate messages were delivered to consumers over the last statistics interval (queue wait, waits.py).
STATISTICS_COLUMNS = "head_message_timestamp,message_stats.deliver_get_details.rate"
LIVE_COUNTS = ("messages_ready", "messages_unacknowledged")  # what a statistics poll takes from the live totals
# The queue listing asks RabbitMQ for the app's queues only (a name regex; apps often share a vhost with
# thousands of other queues) unless the regex would make the request line longer than this; then it lists
# the vhost and keeps the app's rows. RabbitMQ pages filtered listings (at most 500 rows a page).
NAME_FILTER_MAX_CHARS = 4000
PAGE_SIZE = 500
# Operator-owned policies: the name marks them ours; the priority puts them above users' policies,
# which usually keep the default priority 0 or a small number.
POLICY_PREFIX = "celery-operator."
POLICY_PRIORITY = 100
POLICY_APPLY_TO = "queues"


def policy_name(queue: str) -> str:
    return f"{POLICY_PREFIX}{queue}"


def policy_pattern(queue: str) -> str:
    """A regex that matches exactly the queue named `queue` (metacharacters escaped)."""
    return f"^{re.escape(queue)}$"


def policy_body(queue: str, definition: dict[str, Any]) -> dict[str, Any]:
    return {"pattern": policy_pattern(queue), "definition": definition, "priority": POLICY_PRIORITY,
            "apply-to": POLICY_APPLY_TO}

# Errors that mean "the network or the broker went away", as opposed to a refused operation.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError, amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError,
)


class ManagementClient:
    """RabbitMQ's management HTTP API, one request a call: basic auth, JSON in and out. The one client of it
    in the project: the operator's broker, the local cluster's servers and the tests' fixtures use it."""

    def __init__(self, management: ManagementUrl, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        self.management = management
        self.timeout = timeout

    @classmethod
    def of(cls, url: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> ManagementClient:
        """From http(s)://user:pass@host:port[/prefix]."""
        return cls(parse_management(url), timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                timeout: float | None = None, headers: Mapping[str, str] | None = None) -> Any:
        """One request; the decoded JSON answer (None when empty).
        Raises `ManagementHttpError` for an HTTP error, BrokerUnreachable when no answer came."""
        base = self.management.base
        url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        token = base64.b64encode(f"{self.management.username}:{self.management.password}".encode()).decode()
        headers = {**(headers or {}), "Authorization": f"Basic {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ManagementHttpError(method, f"{base}{path}", e.code, _error_text(e)) from None
        except OSError as e:
            raise BrokerUnreachable(f"management API {base}: {_describe(e)}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError as e:
            raise BrokerUnreachable(f"management API {base}: {_describe(e)}") from None


class RabbitMQBroker:
    """`url` is the AMQP URL (its vhost is the one used); `management_url` is the management API
    (http(s)://user:pass@host:port), derived from the AMQP URL when not given."""

    def __init__(self, url: str, management_url: str | None = None, *,
                 stats: Literal["totals", "full"] = "totals",
                 connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 io_timeout: float = IO_TIMEOUT_SECONDS) -> None:
        self.url = parse_amqp(url)
        self.management: ManagementUrl = (parse_management(management_url) if management_url
                                          else management_for(self.url))
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.management_api = ManagementClient(self.management, timeout=connect_timeout)
        self._where = redact(url)

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self._where!r})"

    # -- AMQP -------------------------------------------------------------------------------------

    def _open(self) -> amqp.Connection:
        conn = amqp.Connection(
            host=f"{self.url.host}:{self.url.port}", userid=self.url.username,
            password=self.url.password, virtual_host=self.url.vhost,
            ssl=ssl.create_default_context() if self.url.tls else False,
            connect_timeout=self.connect_timeout, read_timeout=self.io_timeout,
            write_timeout=self.io_timeout,
            client_properties={"connection_name": "celery-operator"},
        )
        try:
            conn.connect()
        except (OSError, amqp.exceptions.AMQPError) as e:  # refused, timed out, bad login, no vhost
            with contextlib.suppress(Exception):
                conn.collect()
            raise BrokerUnreachable(f"cannot connect to {self._where}: {_describe(e)}") from None
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[amqp.Connection]:
        conn = self._open()
        try:
            yield conn
        except _NETWORK_ERRORS as e:
            raise BrokerUnreachable(f"lost connection to {self._where}: {_describe(e)}") from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            with contextlib.suppress(Exception):
                conn.collect()

    def declare(self, exchanges: Sequence[CeleryExchange],
                queues: Sequence[CeleryQueue]) -> list[DeclareResult]:
        results: list[DeclareResult] = []
        declared_exchanges = {x.name for x in exchanges}
        with self._connection() as conn:
            ch = _Channel(conn)
            for x in exchanges:
                results.append(ch.run("exchange", x.name, lambda c, x=x: c.exchange_declare(
                    x.name, x.type, durable=x.durable, auto_delete=x.auto_delete,
                    arguments=dict(x.arguments))))
            for q in queues:
                if q.exchange is None and q.name not in declared_exchanges:
                    # Celery's implicit exchange, declared as kombu's Exchange(name) would be.
                    declared_exchanges.add(q.name)
                    results.append(ch.run("exchange", q.name, lambda c, q=q: c.exchange_declare(
                        q.name, "direct", durable=True, auto_delete=False)))
                results.append(ch.run("queue", q.name, lambda c, q=q: c.queue_declare(
                    q.name, durable=q.durable, auto_delete=q.auto_delete,
                    arguments=queue_arguments(q))))
            for q in queues:
                ex = queue_exchange(q)
                if not ex:
                    results.append(_default_exchange_binding(q))
                    continue
                results.append(ch.run("binding", q.name, lambda c, q=q, ex=ex: c.queue_bind(
                    q.name, ex, q.routing_key), exchange=ex, routing_key=q.routing_key))
        return results + self.apply_policies(queues)

    def delete_queue(self, name: str) -> None:
        with self._connection() as conn:
            result = _Channel(conn).run("queue", name, lambda c: c.queue_delete(name))
        if not result.ok and NOT_FOUND_TEXT not in result.message:
            raise BrokerError(f"deleting queue {name!r}: {result.message}")
        try:
            self._http("DELETE", f"/api/policies/{self._vhost}/{_quote(policy_name(name))}")
        except ManagementHttpError as e:
            if e.code != NOT_FOUND:
                raise BrokerError(f"queue {name!r} deleted, but not its policy {policy_name(name)!r}: {e}") from None
        except BrokerError as e:
            raise BrokerError(f"queue {name!r} deleted, but not its policy {policy_name(name)!r}: {e}") from None

    # -- policies ---------------------------------------------------------------------------------

    def policies(self) -> dict[str, dict[str, Any]]:
        """The operator-owned policies of the vhost, by name (one management-API request)."""
        rows = self._http("GET", f"/api/policies/{self._vhost}")
        if not isinstance(rows, list):
            raise BrokerError(f"management API {self.management.base} answered {type(rows).__name__}")
        return {r["name"]: r for r in rows
                if isinstance(r, dict) and str(r.get("name", "")).startswith(POLICY_PREFIX)}

    def apply_policies(self, queues: Sequence[CeleryQueue]) -> list[DeclareResult]:
        """Make each queue's operator-owned policy match its changeable settings: create or replace
        it (keys that were unset disappear with the old definition), delete it when none is set.
        One `policy` result per queue that has settings, or whose stale policy could not be removed."""
        wanted = {q.name: queue_policy(q) for q in queues}
        try:
            existing = self.policies()
        except BrokerError as e:
            # Without the management API nothing can be compared: only queues with settings say so.
            return [self._policy_failure(q, e) for q in queues if wanted[q.name]]
        results: list[DeclareResult] = []
        for q in queues:
            name, definition = policy_name(q.name), wanted[q.name]
            current = existing.get(name)
            try:
                if not definition:
                    if current is not None:
                        self._http("DELETE", f"/api/policies/{self._vhost}/{_quote(name)}")
                    continue
                body = policy_body(q.name, definition)
                if current is None or any(current.get(k) != v for k, v in body.items()):
                    self._http("PUT", f"/api/policies/{self._vhost}/{_quote(name)}", body)
            except BrokerError as e:
                results.append(self._policy_failure(q, e, stale=not definition))
                continue
            results.append(DeclareResult(kind="policy", name=q.name, ok=True,
                                         message=f"policy {name} applied: {json.dumps(definition)}"))
        return results

    def _policy_failure(self, q: CeleryQueue, e: BrokerError, stale: bool = False) -> DeclareResult:
        name = policy_name(q.name)
        if stale:
            what = f"the unset settings are still applied by its old policy {name}, which"
        else:
            what = (f"{', '.join(policy_fields(q))} not applied: they are the policy {name}, which the "
                    f"operator writes through RabbitMQ's management API, and that")
        if isinstance(e, ManagementHttpError) and e.code in (401, 403):
            fix = "give the management user the policymaker (or administrator) tag"
        elif isinstance(e, ManagementHttpError):
            fix = "fix the reported problem"
        else:
            fix = ("set spec.broker.external.managementUrlSecretRef to a reachable management API URL "
                   "(a user with the policymaker tag), or remove these settings from the CeleryQueue")
        return DeclareResult(kind="policy", name=q.name, ok=False, reason=api.Reason.POLICY_NOT_APPLIED,
                             message=f"{what} failed: {e}; {fix}")

    # -- management HTTP API ----------------------------------------------------------------------

    @property
    def _vhost(self) -> str:
        return _quote(self.url.vhost)

    def _http(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        return self.management_api.request(method, path, body, query)

    def connections(self) -> list[dict[str, Any]]:
        """The vhost's client connections: name, peer_host, connected_at (ms since the epoch)."""
        rows = self._http("GET", f"/api/vhosts/{self._vhost}/connections",
                          query={"columns": "name,peer_host,connected_at"})
        return [r for r in rows or [] if isinstance(r, dict)]

    def close_connection(self, name: str, reason: str) -> None:
        """Close a client connection (RabbitMQ requeues what it left unacknowledged); one already gone is
        fine."""
        try:
            self.management_api.request("DELETE", f"/api/connections/{_quote(name)}", headers={"X-Reason": reason})
        except ManagementHttpError as e:
            if e.code != 404:
                raise

    def delete_exchange(self, name: str) -> None:
        with self._connection() as conn:
            result = _Channel(conn).run("exchange", name, lambda c: c.exchange_delete(name))
        if not result.ok and NOT_FOUND_TEXT not in result.message:
            raise BrokerError(f"deleting exchange {name!r}: {result.message}")

    # -- depth ------------------------------------------------------------------------------------

    def measure(self, queue_names: Sequence[str], count_in_flight: bool = False) -> DepthReport:
        """Depth from the management API; passive declares when it cannot be reached.
        `count_in_flight` is accepted for the interface: RabbitMQ reports in-flight for free."""
        try:
            by_name = _by_name(self.list_queues(queue_names))
            if self.stats == "full":
                # The statistics database lags the queues (its counts can be seconds old on a busy broker, and
                # it lists a new queue by name only), so a statistics poll takes the message counts from the
                # live totals too (one more request): a backlog is never read as smaller than it is, and a
                # pool never scaled in on it. The listing adds consumers, head timestamps and delivery rates.
                live = _by_name(self.list_queues(queue_names, statistics=False))
                by_name = {n: {**by_name.get(n, {}), **{k: r[k] for k in LIVE_COUNTS if k in r}}
                           for n, r in live.items()}
        except BrokerError as e:
            return self.measure_passive(queue_names, note=f"management API unavailable: {e}")
        depths: dict[str, QueueDepth] = {}
        missing: list[str] = []
        for name in dict.fromkeys(queue_names):
            row = by_name.get(name)
            if row is None:
                missing.append(name)
                continue
            depths[name] = QueueDepth(
                name=name,
                ready=int(row.get("messages_ready") or 0),
                in_flight=_int_or_none(row.get("messages_unacknowledged")),
                consumers=_int_or_none(row.get("consumers")),
                oldest_published=published_at(row.get("head_message_timestamp")),
                drain_rate=_deliver_rate(row),
            )
        return DepthReport(source="management", queues=depths, missing=tuple(missing),
                           statistics=self.stats == "full")

    def list_queues(self, names: Sequence[str] | None = None, statistics: bool | None = None) -> list[dict[str, Any]]:
        """The vhost's queues (`names`: at least those; usually only those), in ONE request to the
        management API (one per 500 queues when filtered by name); from the statistics database or the live
        totals (`statistics`; by default as `stats` says)."""
        params = {"columns": QUEUE_COLUMNS}
        if self.stats == "full" if statistics is None else statistics:
            params["columns"] += "," + STATISTICS_COLUMNS
        else:
            params.update(disable_stats="true", enable_queue_totals="true")
        regex = name_regex(names) if names else None
        if regex is None or len(regex) > NAME_FILTER_MAX_CHARS:
            return self._rows(self._http("GET", f"/api/queues/{self._vhost}", query=params))
        params.update(name=regex, use_regex="true", pagination="true", page_size=str(PAGE_SIZE))
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self._http("GET", f"/api/queues/{self._vhost}", query={**params, "page": str(page)})
            if not isinstance(data, dict):
                raise BrokerError(f"management API {self.management.base} answered {type(data).__name__} "
                                  "to a paginated listing")
            rows += self._rows(data.get("items"))
            if page >= int(data.get("page_count") or 1):
                return rows
            page += 1

    def _rows(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list):
            raise BrokerError(f"management API {self.management.base} answered {type(data).__name__}")
        return data

    def measure_passive(self, queue_names: Sequence[str], note: str = "") -> DepthReport:
        """One passive queue.declare per queue over one AMQP connection (no in-flight counts)."""
        depths: dict[str, QueueDepth] = {}
        missing: list[str] = []
        with self._connection() as conn:
            ch = _Channel(conn)
            for name in dict.fromkeys(queue_names):
                ok = ch.call(lambda c, name=name: c.queue_declare(name, passive=True))
                if isinstance(ok, DeclareError):
                    if ok.code == NOT_FOUND:
                        missing.append(name)
                        continue
                    raise BrokerError(f"passive declare of {name!r}: {ok.text}")
                depths[name] = QueueDepth(name=name, ready=int(ok.message_count), in_flight=None,
                                          consumers=int(ok.consumer_count))
        return DepthReport(source="passive", queues=depths, missing=tuple(missing), note=note)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Nothing to close: every call opens and closes its own connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


NOT_FOUND_TEXT = "NOT_FOUND"


class ManagementHttpError(BrokerError):
    """The management API answered with an HTTP error status."""

    def __init__(self, method: str, url: str, code: int, text: str) -> None:
        super().__init__(f"{method} {url}: HTTP {code}{f' {text}' if text else ''}")
        self.code = code


def name_regex(names: Sequence[str]) -> str:
    """A regular expression RabbitMQ's listing filter matches exactly these queue names with."""
    return "^(?:" + "|".join(re.escape(n) for n in dict.fromkeys(names)) + ")$"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _error_text(e: urllib.error.HTTPError) -> str:
    """RabbitMQ's own reason from an error answer ({"error": ..., "reason": ...}), kept short."""
    try:
        body = json.loads(e.read() or b"{}")
    except (OSError, ValueError):
        return ""
    return str(body.get("reason") or body.get("error") or "")[:300] if isinstance(body, dict) else ""


class DeclareError:
    """A channel-level refusal (the broker closed the channel)."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text


class _Channel:
    """One channel that is reopened after the broker closes it for a refused operation."""

    def __init__(self, conn: amqp.Connection) -> None:
        self.conn = conn
        self.ch: amqp.Channel | None = None

    def call(self, op: Any) -> Any:
        if self.ch is None or not self.ch.is_open:
            self.ch = self.conn.channel()
        try:
            return op(self.ch)
        except amqp.exceptions.ChannelError as e:
            self.ch = None  # the broker closed it; the next call opens a fresh one
            return DeclareError(int(getattr(e, "reply_code", 0) or 0), _describe(e))

    def run(self, kind: Any, name: str, op: Any, *, exchange: str | None = None,
            routing_key: str | None = None) -> DeclareResult:
        out = self.call(op)
        if isinstance(out, DeclareError):
            return DeclareResult(kind=kind, name=name, ok=False,
                                 conflict=out.code == PRECONDITION_FAILED, message=out.text,
                                 exchange=exchange, routing_key=routing_key)
        return DeclareResult(kind=kind, name=name, ok=True, exchange=exchange,
                             routing_key=routing_key)


def _default_exchange_binding(q: CeleryQueue) -> DeclareResult:
    return DeclareResult(kind="binding", name=q.name, ok=True, exchange="", routing_key=q.name,
                         message="the default exchange routes by queue name; nothing to bind")


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A queue listing's rows by queue name."""
    return {r["name"]: r for r in rows if isinstance(r, dict) and "name" in r}


def _int_or_none(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) else None


def _deliver_rate(row: dict[str, Any]) -> float | None:
    stats = row.get("message_stats")
    details = stats.get("deliver_get_details") if isinstance(stats, dict) else None
    rate = details.get("rate") if isinstance(details, dict) else None
    return float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None


def _describe(e: BaseException) -> str:
    text = getattr(e, "reply_text", None)
    if text:
        return str(text)
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__
