"""Parse broker connection URLs (AMQP and Redis) and redact their passwords for logs."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_DEFAULT_PORT = 5672
AMQPS_DEFAULT_PORT = 5671
REDIS_DEFAULT_PORT = 6379
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671
REDACTED = "***"

BrokerKind = Literal["rabbitmq", "redis"]


class InvalidBrokerUrl(ValueError):
    """The URL cannot be used to reach a broker. The message never holds the password."""


@dataclass(frozen=True)
class AmqpUrl:
    host: str
    port: int
    username: str
    password: str
    vhost: str
    tls: bool

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return (f"AmqpUrl(host={self.host!r}, port={self.port}, username={self.username!r}, "
                f"vhost={self.vhost!r}, tls={self.tls})")


@dataclass(frozen=True)
class RedisUrl:
    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: bool

    def __repr__(self) -> str:
        return (f"RedisUrl(host={self.host!r}, port={self.port}, username={self.username!r}, "
                f"db={self.db}, tls={self.tls})")


@dataclass(frozen=True)
class ManagementUrl:
    """RabbitMQ management API: `base` has no credentials and no trailing slash."""

    base: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"ManagementUrl(base={self.base!r}, username={self.username!r})"


def _split(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise InvalidBrokerUrl(f"cannot parse broker URL {redact(url)!r}: {e}") from None
    if not parts.hostname:
        raise InvalidBrokerUrl(f"broker URL {redact(url)!r} names no host")
    return parts


def _unquote(s: str | None) -> str | None:
    return urllib.parse.unquote(s) if s is not None else None


def broker_kind(url: str) -> BrokerKind:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in AMQP_SCHEMES:
        return "rabbitmq"
    if scheme in REDIS_SCHEMES:
        return "redis"
    raise InvalidBrokerUrl(f"unsupported broker URL scheme {scheme!r} in {redact(url)!r}")


def parse_amqp(url: str) -> AmqpUrl:
    """amqp://user:pass@host:port/vhost as kombu reads it: vhost is the unquoted path minus one
    leading slash, `/` when empty (so `amqp://h//` and `amqp://h/%2F` both mean `/`)."""
    parts = _split(url)
    if parts.scheme.lower() not in AMQP_SCHEMES:
        raise InvalidBrokerUrl(f"not an AMQP URL: {redact(url)!r}")
    tls = parts.scheme.lower() == "amqps"
    vhost = urllib.parse.unquote(parts.path[1:]) if parts.path else ""
    return AmqpUrl(
        host=parts.hostname or "",
        port=parts.port or (AMQPS_DEFAULT_PORT if tls else AMQP_DEFAULT_PORT),
        username=_unquote(parts.username) or "guest",
        password=_unquote(parts.password) or "guest",
        vhost=vhost or "/",
        tls=tls,
    )


def parse_redis(url: str) -> RedisUrl:
    """redis://[user]:pass@host:port/db; the db also from `?db=N`, 0 when absent."""
    parts = _split(url)
    if parts.scheme.lower() not in REDIS_SCHEMES:
        raise InvalidBrokerUrl(f"not a Redis URL: {redact(url)!r}")
    db_text = parts.path.strip("/") or urllib.parse.parse_qs(parts.query).get("db", ["0"])[0]
    try:
        db = int(db_text)
    except ValueError:
        raise InvalidBrokerUrl(f"Redis db {db_text!r} in {redact(url)!r} is not a number") from None
    return RedisUrl(
        host=parts.hostname or "",
        port=parts.port or REDIS_DEFAULT_PORT,
        username=_unquote(parts.username) or None,
        password=_unquote(parts.password),
        db=db,
        tls=parts.scheme.lower() == "rediss",
    )


def parse_management(url: str) -> ManagementUrl:
    """http(s)://user:pass@host:port[/prefix] of the RabbitMQ management API."""
    parts = _split(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidBrokerUrl(f"management URL must be http(s): {redact(url)!r}")
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))
    return ManagementUrl(base=base, username=_unquote(parts.username) or "guest",
                         password=_unquote(parts.password) or "guest")


def management_for(amqp: AmqpUrl) -> ManagementUrl:
    """The management API a RabbitMQ normally serves: same host and credentials, port 15672
    (https on 15671 when the AMQP URL uses TLS)."""
    host = f"[{amqp.host}]" if ":" in amqp.host else amqp.host
    scheme, port = ("https", MANAGEMENT_TLS_PORT) if amqp.tls else ("http", MANAGEMENT_PORT)
    return ManagementUrl(base=f"{scheme}://{host}:{port}", username=amqp.username,
                         password=amqp.password)


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, user name and everything else kept.

    Errs towards hiding: the user info runs to the LAST `@`, so a password holding an unescaped
    `@` or `/` is still hidden whole.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:{REDACTED}@{rest[at + 1:]}"
