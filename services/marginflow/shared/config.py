"""Settings from the environment, parsed once at start into frozen values.

Every service declares a frozen dataclass whose fields carry the environment variable that sets
them (``env("NAME", parse, default)``); :func:`load` reads them all, and a missing or bad value
raises :class:`ConfigError` naming the variable, which the entry point turns into a clean exit.

The common part (Kafka, Redis, topic names, ports, logging) is :class:`CommonSettings`; a
service's own settings class holds ``common: CommonSettings`` beside its own fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()

# Largest consumed Kafka payload, bytes (MF_MAX_MESSAGE_BYTES). Nothing the platform publishes comes
# near it (a full risk-parameter version is ~100 KiB); a larger record is dead-lettered `oversized`
# before protobuf parses it, so one bad producer cannot make a consumer parse and hold huge messages.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def env(name: str, parse: Callable[[str], Any] = str, default: Any = _MISSING, doc: str = "",
        secret: bool = False) -> Any:
    """Declare a dataclass field read from the environment variable ``name``.

    ``secret=True``: the value may instead come from the file named by ``<name>_FILE`` (docker
    secrets), and it never appears in the settings' repr (so never in a log line).
    """
    meta = {"env": name, "parse": parse, "doc": doc, "secret": secret}
    if default is _MISSING:
        return dataclasses.field(metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def read_secret_file(variable: str, path: str) -> str:
    """The content of a secret file (trailing newline stripped); a ConfigError names the variable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None


# ---- parsers: each raises ValueError with a readable reason ---------------------------------

def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return port


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not (0.0 < value < 1.0):
        raise ValueError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be an integer > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be an integer >= 0, got {text!r}")
    return value


def iso_date(text: str) -> str:
    import datetime as _dt

    _dt.date.fromisoformat(text.strip())
    return text.strip()


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_ASSET = re.compile(r"^[A-Z0-9]{2,12}$")


def asset_symbol(text: str) -> str:
    """A collateral asset symbol: 2-12 of A-Z 0-9 ("USDC", "BTC")."""
    value = text.strip()
    if not _ASSET.match(value):
        raise ValueError(f"an asset symbol is 2-12 of A-Z 0-9, got {text!r}")
    return value


def asset_list(text: str) -> tuple[str, ...]:
    return tuple(asset_symbol(a) for a in csv_list(text))


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers."""
    values = tuple(float(x) for x in csv_list(text))
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"every value must be finite, got {text!r}")
    return values


def choice(*options: str) -> Callable[[str], str]:
    """A parser accepting one of ``options`` (case-insensitive, returned lower-case)."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return value

    return parse


def bootstrap_servers(text: str) -> tuple[str, ...]:
    servers = csv_list(text)
    if not servers:
        raise ValueError("needs at least one host:port")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{server!r} is not host:port")
        parse_port(port)
    return servers


def redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {text!r}")
    return text


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}")
    return level


# ---- loading --------------------------------------------------------------------------------

def _nested_type(field: dataclasses.Field) -> type | None:
    """The settings class of a nested field (a dataclass, or a factory that makes one)."""
    factory = field.default_factory
    if factory is dataclasses.MISSING:
        return None
    if isinstance(factory, type):
        return factory if dataclasses.is_dataclass(factory) else None
    made = factory()
    return type(made) if dataclasses.is_dataclass(made) else None


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build the frozen settings ``cls`` from ``environ`` (default: ``os.environ``).

    Nested dataclass fields without an ``env`` marker are loaded recursively from the same
    environment, so a service's settings compose the common ones.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = field.metadata
        if "env" not in meta:
            nested = _nested_type(field)
            if nested is not None:
                values[field.name] = load(nested, environ)
            continue
        name = meta["env"]
        raw = environ.get(name)
        if (raw is None or raw == "") and meta.get("secret") and environ.get(f"{name}_FILE"):
            raw = read_secret_file(f"{name}_FILE", environ[f"{name}_FILE"])
        if raw is None or raw == "":
            if field.default is not dataclasses.MISSING:
                values[field.name] = field.default
                continue
            raise ConfigError(f"{name} is required but not set")
        try:
            values[field.name] = meta["parse"](raw)
        except (ValueError, TypeError) as exc:
            if meta.get("secret"):   # a secret is never echoed, not even a bad one
                raise ConfigError(f"{name} is invalid") from None
            raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting of ``cls``, for the README table and --help."""
    rows: list[tuple[str, str, str]] = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "env" in meta:
            default = "" if field.default is dataclasses.MISSING else str(field.default)
            rows.append((meta["env"], default, meta.get("doc", "")))
        elif _nested_type(field) is not None:
            rows.extend(describe(_nested_type(field)))
    return rows


@dataclasses.dataclass(frozen=True)
class Topics:
    """Kafka topic names, all under one optional prefix (tests use a unique prefix each)."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def ticks(self) -> str:
        return self.name("md.ticks")

    # One dead-letter topic per consuming service (marketdata's holds the ticks it rejected).
    @property
    def ticks_dlq(self) -> str:
        return self.name("md.ticks.dlq")

    @property
    def riskparams_dlq(self) -> str:
        return self.name("riskparams.dlq")

    @property
    def margin_dlq(self) -> str:
        return self.name("margin.dlq")

    @property
    def liquidation_dlq(self) -> str:
        return self.name("liquidation.dlq")

    @property
    def dead_letter_topics(self) -> tuple[str, ...]:
        """Every service's dead-letter topic."""
        return (self.ticks_dlq, self.riskparams_dlq, self.portfolio_dlq, self.margin_dlq, self.liquidation_dlq)

    @property
    def marks(self) -> str:
        return self.name("md.marks")

    @property
    def risk_params(self) -> str:
        return self.name("risk.params")

    @property
    def fills(self) -> str:
        return self.name("trades.fills")

    @property
    def account_events(self) -> str:
        return self.name("account.events")

    @property
    def portfolio_dlq(self) -> str:
        return self.name("portfolio.dlq")

    @property
    def positions(self) -> str:
        return self.name("portfolio.positions")

    @property
    def open_interest(self) -> str:
        """Each trades.fills partition's share of every instrument's open interest (compacted)."""
        return self.name("portfolio.open_interest")

    @property
    def margin_state(self) -> str:
        return self.name("margin.state")

    @property
    def margin_calls(self) -> str:
        return self.name("margin.calls")

    @property
    def margin_snapshot(self) -> str:
        """The margin service's restart snapshots (compacted, key = part and chunk)."""
        return self.name("margin.snapshot")

    @property
    def liquidation_orders(self) -> str:
        return self.name("liquidation.orders")

    @property
    def liquidation_events(self) -> str:
        return self.name("liquidation.events")

    @property
    def liquidation_fund(self) -> str:
        return self.name("liquidation.fund")

    @property
    def liquidation_dlq(self) -> str:
        return self.name("liquidation.dlq")

    @property
    def audit(self) -> str:
        """Admin calls (who, what, when, result): compacted, kept forever."""
        return self.name("audit.events")


def _security():
    from marginflow.shared import security

    return security


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """What every service needs: where Kafka and Redis are, topic names, ports, logging."""

    kafka_bootstrap_servers: tuple[str, ...] = env(
        "KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers, ("127.0.0.1:19092",),
        "Kafka bootstrap servers, host:port[,host:port]")
    redis_url: str = env("REDIS_URL", redis_url, "redis://127.0.0.1:16379/0", "Redis URL")
    topic_prefix: str = env("MF_TOPIC_PREFIX", str, "", "prefix for every Kafka topic name")
    topic_partitions: int = env("MF_TOPIC_PARTITIONS", positive_int, 4,
                                "partitions of the topics marginflow creates")
    bind_host: str = env("MF_BIND_HOST", str, "127.0.0.1",
                         "address gRPC and /metrics listen on (0.0.0.0 in containers)")
    log_level: str = env("MF_LOG_LEVEL", log_level, "INFO", "log level")
    log_json: bool = env("MF_LOG_JSON", parse_bool, True, "JSON log lines (false: plain text)")
    universe_file: str = env("MF_UNIVERSE_FILE", str, "",
                             "instrument universe TOML (default: the packaged config/universe.toml)")
    universe_as_of: str = env("MF_UNIVERSE_AS_OF", iso_date, "",
                              "date (YYYY-MM-DD, UTC) relative expiries resolve from; default today")
    shutdown_grace_seconds: float = env("MF_SHUTDOWN_GRACE_SECONDS", positive_float, 5.0,
                                        "grace given to in-flight gRPC calls at shutdown")
    max_message_bytes: int = env("MF_MAX_MESSAGE_BYTES", positive_int, DEFAULT_MAX_MESSAGE_BYTES,
                                 "largest consumed Kafka payload, bytes; larger ones are dead-lettered")
    security: "SecuritySettings" = dataclasses.field(default_factory=lambda: _security().SecuritySettings())
    kafka_security: "KafkaSecurity" = dataclasses.field(default_factory=lambda: _security().KafkaSecurity())
    redis_auth: "RedisAuth" = dataclasses.field(default_factory=lambda: _security().RedisAuth())

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def bootstrap(self) -> str:
        return ",".join(self.kafka_bootstrap_servers)

    def universe_as_of_ms(self, now_ms: int) -> int:
        """Midnight UTC of MF_UNIVERSE_AS_OF, or of the day of ``now_ms``: every service started
        the same day resolves relative expiries to the same instruments."""
        import datetime as _dt

        if self.universe_as_of:
            day = _dt.date.fromisoformat(self.universe_as_of)
        else:
            day = _dt.datetime.fromtimestamp(now_ms / 1000, tz=_dt.timezone.utc).date()
        return int(_dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp() * 1000)
