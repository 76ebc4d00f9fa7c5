"""Security at the boundaries, written once: gRPC TLS, callers and roles, the deployment check.

* **Settings** (:class:`SecuritySettings`, part of ``CommonSettings.security``): certificate files,
  client-certificate mode, the token file, the caller's own token, ``MF_ALLOW_INSECURE``; every
  secret also from ``<NAME>_FILE``.
* **Callers**: a bearer token (``authorization: Bearer <token>``) looked up by its SHA-256 in the
  token file, compared in constant time, or a client certificate whose common name is
  ``<role>/<name>`` (for ``trader-self`` the name is the account id). Either gives a
  :class:`Principal` (id, role, account).
* **Roles** (:data:`ROLES`): ``reader`` queries; ``trader-self`` queries about its own account
  only; ``risk-admin`` queries and admin calls; ``service`` queries, service to service.
* **Policy**: each servicer declares ``AUTH_POLICY = {"Method": Rule, ...}``; one interceptor
  (:class:`AuthInterceptor`, installed by ``grpcserver.build_server``) enforces it for every
  call: UNAUTHENTICATED without valid credentials, PERMISSION_DENIED for a role the method does not
  allow or an account that is not the trader's own. A method without a rule is refused. Health and
  reflection stay open. Calls whose rule is ``audit=True`` (admin calls) are written to the audit
  sink with who, what, when and the result, refused ones included.
* **Open mode** (no token file and no required client certificate, the loopback default of the
  tests): calls without credentials pass as ``anonymous``, except audited (admin) calls, which
  always need a token. :func:`check_deployment` refuses a non-loopback deployment in that mode, or
  without TLS, unless ``MF_ALLOW_INSECURE=true``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc

from marginflow.shared.config import ConfigError, choice, env, parse_bool, read_secret_file

READER = "reader"
TRADER_SELF = "trader-self"
RISK_ADMIN = "risk-admin"
SERVICE = "service"
ROLES = (READER, TRADER_SELF, RISK_ADMIN, SERVICE)
ANONYMOUS = "anonymous"

AUTHORIZATION = "authorization"
# Health checking and reflection answer anyone (load balancers, grpcurl) as the servers always did.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
MAX_SUMMARY_CHARS = 1000


# ---- policy ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    """Who may call one RPC. ``account_field``: the request field (a string or a repeated string)
    a ``trader-self`` caller's account must equal; without it ``trader-self`` is refused unless
    ``public``. ``audit``: every call is an audit event."""

    roles: frozenset[str]
    account_field: str = ""
    audit: bool = False
    public: bool = False   # market-wide data: any authenticated caller, trader-self included
    rate_limited: bool = False   # costly queries (what-if, explain): MF_GRPC_RATE_PER_CALLER applies

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")


def public() -> Rule:
    """Market-wide data (marks, instruments, risk parameters): every role."""
    return Rule(frozenset(ROLES), public=True)


def account_read(account_field: str = "account_id") -> Rule:
    """A query about accounts named in ``account_field``: readers, admins, services, and the trader
    of that account."""
    return Rule(frozenset(ROLES), account_field=account_field)


def costly_read(account_field: str = "account_id") -> Rule:
    """An account query that costs computation (what-if, explain): as account_read, rate-limited per
    caller (services are not limited: they forward calls a first server already counted)."""
    return Rule(frozenset(ROLES), account_field=account_field, rate_limited=True)


def any_account_read() -> Rule:
    """A query across accounts (lists, by instrument): not for trader-self."""
    return Rule(frozenset({READER, RISK_ADMIN, SERVICE}))


def admin() -> Rule:
    """An admin call (money movement, modes, liquidation pause/resume, ADL): risk-admin, audited."""
    return Rule(frozenset({RISK_ADMIN}), audit=True)


Policy = Mapping[str, Rule]


# ---- callers -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``id`` is the token's id (first 12 hex digits of its hash) or the
    certificate's common name; ``via`` is ``token``, ``certificate`` or ``anonymous``."""

    id: str
    role: str
    account: str = ""
    via: str = "token"


ANONYMOUS_PRINCIPAL = Principal("anonymous", ANONYMOUS, via="anonymous")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the token file stores it (tokens are random, so no salt)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


_HASH = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_ACCOUNT = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def parse_tokens(text: str, source: str = "token file") -> dict[str, Principal]:
    """Lines ``sha256:<hex> <role> [<account>]`` (``#`` comments, blank lines ignored) → hash → principal.

    ``trader-self`` needs the account; the other roles take none. A bad line is a ValueError with
    its line number (the hash itself is not secret).
    """
    table: dict[str, Principal] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source} line {number}"
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}: expected 'sha256:<hex> <role> [<account>]'")
        match = _HASH.match(parts[0].lower())
        if not match:
            raise ValueError(f"{where}: the first field must be a hex SHA-256 (64 digits), optionally 'sha256:'")
        role = parts[1]
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        account = parts[2] if len(parts) == 3 else ""
        if role == TRADER_SELF and not account:
            raise ValueError(f"{where}: a trader-self token needs its account id")
        if role != TRADER_SELF and account:
            raise ValueError(f"{where}: only trader-self tokens name an account")
        if account and not _ACCOUNT.match(account):
            raise ValueError(f"{where}: {account!r} is not an account id")
        digest = match.group(1)
        if digest in table:
            raise ValueError(f"{where}: the same token hash appears twice")
        table[digest] = Principal(digest[:12], role, account, "token")
    return table


class TokenTable:
    """Hashed tokens → principals; a presented token is hashed and compared in constant time."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._entries = [(bytes.fromhex(h), p) for h, p in entries.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for stored, principal in self._entries:   # every entry compared: no early exit on a match
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def principal_from_common_name(common_name: str) -> Principal | None:
    """``<role>/<name>`` from a verified client certificate (``trader-self/<account>``)."""
    role, sep, name = common_name.partition("/")
    if not sep or role not in ROLES or not name:
        return None
    return Principal(common_name, role, name if role == TRADER_SELF else "", "certificate")


# ---- settings ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client (kafka-python and aiokafka) authenticates: TLS and SASL/SCRAM."""

    protocol: str = env("MF_KAFKA_SECURITY_PROTOCOL", choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
                        "plaintext", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = env("MF_KAFKA_SASL_MECHANISM", choice("scram-sha-256", "scram-sha-512", "plain"),
                              "scram-sha-512", "SASL mechanism")
    sasl_username: str = env("MF_KAFKA_SASL_USERNAME", str, "", "SASL user (one per service)")
    sasl_password: str = env("MF_KAFKA_SASL_PASSWORD", str, "", "SASL password", secret=True)
    ssl_ca_file: str = env("MF_KAFKA_SSL_CA_FILE", str, "", "CA of the brokers' certificates")

    def __post_init__(self) -> None:
        if self.protocol.startswith("sasl") and not (self.sasl_username and self.sasl_password):
            raise ConfigError(f"MF_KAFKA_SECURITY_PROTOCOL={self.protocol.upper()} needs "
                              "MF_KAFKA_SASL_USERNAME and MF_KAFKA_SASL_PASSWORD (or _FILE)")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for KafkaProducer / KafkaConsumer / KafkaAdminClient and aiokafka alike."""
        if self.protocol == "plaintext":
            return {}
        opts: dict[str, Any] = {"security_protocol": self.protocol.upper()}
        if self.protocol.startswith("sasl"):
            opts.update(sasl_mechanism=self.sasl_mechanism.upper(), sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password)
        if self.protocol.endswith("ssl") and self.ssl_ca_file:
            opts["ssl_cafile"] = self.ssl_ca_file
        return opts


@dataclasses.dataclass(frozen=True)
class RedisAuth:
    """Redis ACL user and password (TLS: a rediss:// REDIS_URL with the CA below)."""

    username: str = env("MF_REDIS_USERNAME", str, "", "Redis ACL user (one per service)")
    password: str = env("MF_REDIS_PASSWORD", str, "", "Redis password", secret=True)
    tls_ca_file: str = env("MF_REDIS_TLS_CA_FILE", str, "", "CA of the Redis server's certificate (rediss://)")

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.username:
            opts["username"] = self.username
        if self.password:
            opts["password"] = self.password
        if self.tls_ca_file:
            opts["ssl_ca_certs"] = self.tls_ca_file
        return opts


@dataclasses.dataclass(frozen=True)
class SecuritySettings:
    """gRPC TLS and callers; the Kafka and Redis credentials are in KafkaSecurity / the Redis URL."""

    grpc_tls_cert_file: str = env("MF_GRPC_TLS_CERT_FILE", str, "",
                                  "server certificate (PEM chain); with the key file, gRPC serves TLS")
    grpc_tls_key_file: str = env("MF_GRPC_TLS_KEY_FILE", str, "", "server private key (PEM)")
    grpc_tls_ca_file: str = env("MF_GRPC_TLS_CA_FILE", str, "",
                                "CA that signs servers and client certificates (clients verify servers with it)")
    grpc_tls_client_auth: str = env("MF_GRPC_TLS_CLIENT_AUTH", choice("none", "require"), "none",
                                    "client certificates: none, or require (mutual TLS)")
    grpc_tls_client_cert_file: str = env("MF_GRPC_TLS_CLIENT_CERT_FILE", str, "",
                                         "this process's client certificate for mutual TLS")
    grpc_tls_client_key_file: str = env("MF_GRPC_TLS_CLIENT_KEY_FILE", str, "",
                                        "this process's client key for mutual TLS")
    grpc_tls_server_name: str = env("MF_GRPC_TLS_SERVER_NAME", str, "",
                                    "name clients expect in server certificates (default: the host dialled)")
    grpc_tls: bool = env("MF_GRPC_TLS", parse_bool, False,
                         "clients dial TLS (implied by MF_GRPC_TLS_CA_FILE)")
    auth_tokens_file: str = env("MF_AUTH_TOKENS_FILE", str, "",
                                "token file: 'sha256:<hex> <role> [<account>]' per line; set = every call authenticated")
    auth_token: str = env("MF_AUTH_TOKEN", str, "", "this process's own token for the calls it makes",
                          secret=True)
    admin_token: str = env("MF_ADMIN_TOKEN", str, "",
                           "a risk-admin token accepted besides the token file (older single-token setups)",
                           secret=True)
    allow_insecure: frozenset[str] = env("MF_ALLOW_INSECURE", lambda t: _insecure_parts(t), frozenset(),
                                         "start a non-loopback deployment without TLS or authentication anyway: "
                                         "true (all), or some of grpc,kafka,redis")
    grpc_max_message_bytes: int = env("MF_GRPC_MAX_MESSAGE_BYTES", int, 4 * 1024 * 1024,
                                      "largest gRPC request a server accepts, bytes")
    grpc_reflection: bool = env("MF_GRPC_REFLECTION", parse_bool, True,
                                "serve gRPC reflection (open to every caller, like health checking)")
    grpc_rate_per_caller: float = env("MF_GRPC_RATE_PER_CALLER", float, 1000.0,
                                      "what-if/explain calls per second per caller (burst: one second's worth; 0 = no limit)")
    grpc_max_streams_per_caller: int = env("MF_GRPC_MAX_STREAMS_PER_CALLER", int, 16,
                                           "open server streams per caller (0 = no limit)")

    @property
    def server_tls(self) -> bool:
        return bool(self.grpc_tls_cert_file and self.grpc_tls_key_file)

    @property
    def client_tls(self) -> bool:
        return self.grpc_tls or bool(self.grpc_tls_ca_file)

    @property
    def auth_required(self) -> bool:
        """Every call needs credentials (else: open mode, only admin calls need a token)."""
        return bool(self.auth_tokens_file) or self.grpc_tls_client_auth == "require"

    def __post_init__(self) -> None:
        if bool(self.grpc_tls_cert_file) != bool(self.grpc_tls_key_file):
            raise ConfigError("MF_GRPC_TLS_CERT_FILE and MF_GRPC_TLS_KEY_FILE go together")
        if self.grpc_tls_client_auth == "require" and not (self.server_tls and self.grpc_tls_ca_file):
            raise ConfigError("MF_GRPC_TLS_CLIENT_AUTH=require needs MF_GRPC_TLS_CERT_FILE, _KEY_FILE and _CA_FILE")
        if bool(self.grpc_tls_client_cert_file) != bool(self.grpc_tls_client_key_file):
            raise ConfigError("MF_GRPC_TLS_CLIENT_CERT_FILE and MF_GRPC_TLS_CLIENT_KEY_FILE go together")
        if self.grpc_max_message_bytes <= 0:
            raise ConfigError("MF_GRPC_MAX_MESSAGE_BYTES must be > 0")

    def tokens(self) -> TokenTable:
        """The token file's entries plus MF_ADMIN_TOKEN as a risk-admin (ConfigError when unreadable or bad)."""
        entries: dict[str, Principal] = {}
        if self.auth_tokens_file:
            text = read_secret_file("MF_AUTH_TOKENS_FILE", self.auth_tokens_file)
            try:
                entries = parse_tokens(text, self.auth_tokens_file)
            except ValueError as exc:
                raise ConfigError(f"MF_AUTH_TOKENS_FILE: {exc}") from None
        if self.admin_token:
            digest = hash_token(self.admin_token)
            entries.setdefault(digest, Principal("admin-token", RISK_ADMIN, "", "token"))
        return TokenTable(entries)


INSECURE_PARTS = ("grpc", "kafka", "redis")


def _insecure_parts(text: str) -> frozenset[str]:
    value = text.strip().lower()
    try:
        return frozenset(INSECURE_PARTS) if parse_bool(value) else frozenset()
    except ValueError:
        pass
    parts = frozenset(p.strip() for p in value.split(",") if p.strip())
    unknown = parts - set(INSECURE_PARTS)
    if unknown or not parts:
        raise ValueError(f"expected true/false or some of {','.join(INSECURE_PARTS)}, got {text!r}")
    return parts


def _read_bytes(variable: str, path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{variable}={path!r} cannot be read: {exc.strerror}") from None


def server_credentials(sec: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the certificate files, or None (plaintext)."""
    if not sec.server_tls:
        return None
    key = _read_bytes("MF_GRPC_TLS_KEY_FILE", sec.grpc_tls_key_file)
    cert = _read_bytes("MF_GRPC_TLS_CERT_FILE", sec.grpc_tls_cert_file)
    ca = _read_bytes("MF_GRPC_TLS_CA_FILE", sec.grpc_tls_ca_file) if sec.grpc_tls_ca_file else None
    require = sec.grpc_tls_client_auth == "require"
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if require else None,
                                       require_client_auth=require)


# ---- the deployment check ----------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str:
    if "://" in address:
        address = address.split("://", 1)[1]
        address = address.rsplit("@", 1)[-1].split("/", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address


def deployment_problems(common: Any) -> list[tuple[str, str]]:
    """(part, problem) for what makes this deployment unsafe off loopback (empty when fine or on loopback)."""
    sec: SecuritySettings = common.security
    problems: list[tuple[str, str]] = []
    if not is_loopback(common.bind_host):
        if not sec.server_tls:
            problems.append(("grpc", f"gRPC listens on {common.bind_host} without TLS "
                                     "(set MF_GRPC_TLS_CERT_FILE/_KEY_FILE)"))
        if not sec.auth_required:
            problems.append(("grpc", f"gRPC listens on {common.bind_host} without authentication "
                                     "(set MF_AUTH_TOKENS_FILE or MF_GRPC_TLS_CLIENT_AUTH=require)"))
    if any(not is_loopback(_host_of(s)) for s in common.kafka_bootstrap_servers):
        if common.kafka_security.protocol == "plaintext":
            problems.append(("kafka", "Kafka is not on loopback and MF_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"))
    redis_host = _host_of(common.redis_url)
    if not common.redis_url.startswith("unix://") and not is_loopback(redis_host):
        if common.redis_url.startswith("redis://"):
            problems.append(("redis", "Redis is not on loopback and REDIS_URL is not rediss:// (TLS)"))
        if not common.redis_auth.password and "@" not in common.redis_url:
            problems.append(("redis", "Redis is not on loopback and has no password (MF_REDIS_PASSWORD)"))
    return problems


def check_deployment(common: Any) -> None:
    """Refuse to start an unsafe non-loopback deployment unless MF_ALLOW_INSECURE names that part."""
    problems = [text for part, text in deployment_problems(common) if part not in common.security.allow_insecure]
    if problems:
        raise ConfigError("refusing to start an insecure deployment: " + "; ".join(problems)
                          + " (MF_ALLOW_INSECURE=true, or =grpc,kafka,redis for some parts, starts it anyway)")


# ---- audit sink (the Kafka implementation is shared.audit) -------------------------------------

@dataclasses.dataclass(frozen=True)
class AuditRecord:
    event_id: str
    time_ms: int
    service: str
    method: str
    principal: Principal
    peer: str
    request_summary: str
    result_code: str
    result_detail: str


class AuditSink(Protocol):
    def record(self, event: AuditRecord) -> None: ...


def summarize(request: Any) -> str:
    """The request in one line of protobuf text, cut to MAX_SUMMARY_CHARS (requests carry no secrets:
    credentials travel in metadata)."""
    try:
        from google.protobuf import text_format

        text = text_format.MessageToString(request, as_one_line=True)
    except Exception:  # noqa: BLE001 - a summary must never break the call
        text = type(request).__name__
    return text if len(text) <= MAX_SUMMARY_CHARS else text[:MAX_SUMMARY_CHARS - 3] + "..."


# ---- the interceptor ---------------------------------------------------------------------------

class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k.lower() == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return None


class Authenticator:
    """Maps call metadata and the TLS peer to a :class:`Principal`, or refuses."""

    def __init__(self, tokens: TokenTable, auth_required: bool) -> None:
        self.tokens = tokens
        self.auth_required = auth_required

    def principal(self, metadata, context: grpc.ServicerContext | None, needs_token: bool) -> Principal:
        header = _metadata_value(metadata, AUTHORIZATION)
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                               "the 'authorization' metadata must be 'Bearer <token>'")
            found = self.tokens.lookup(token)
            if found is None:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid (unknown or revoked)")
            return found
        cert = self._certificate_principal(context)
        if cert is not None:
            return cert
        if self.auth_required or needs_token:
            if needs_token and not self.auth_required and len(self.tokens) == 0:
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                               "admin calls are disabled: no tokens are configured "
                               "(MF_AUTH_TOKENS_FILE or MF_ADMIN_TOKEN)")
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "credentials required: metadata 'authorization: Bearer <token>' or a client certificate")
        return ANONYMOUS_PRINCIPAL

    @staticmethod
    def _certificate_principal(context) -> Principal | None:
        if context is None:
            return None
        try:
            auth = context.auth_context()
        except Exception:  # noqa: BLE001 - no TLS context on this call
            return None
        names = auth.get("x509_common_name") or []
        if not names:
            return None
        name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        return principal_from_common_name(name)


def authorize(principal: Principal, rule: Rule, request: Any, method: str) -> None:
    """Raise _Refused(PERMISSION_DENIED) unless ``principal`` may make this call."""
    if principal.role == ANONYMOUS:
        if rule.audit:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a {' or '.join(sorted(rule.roles))} token")
        return
    if principal.role not in rule.roles:
        raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                       f"role {principal.role} may not call {method} (needs {' or '.join(sorted(rule.roles))})")
    if principal.role == TRADER_SELF and not rule.public:
        if not rule.account_field:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"role trader-self may not call {method}: it is not about one account")
        value = getattr(request, rule.account_field, "")
        accounts = [value] if isinstance(value, str) else list(value)
        if not accounts or any(a != principal.account for a in accounts):
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"a trader-self caller sees only its own account {principal.account!r}")


class CallerLimits:
    """Per-caller token buckets (costly calls) and open-stream counts; callers are principals, or the
    peer's address for anonymous ones. Bounded: the oldest callers are forgotten past MAX_CALLERS."""

    MAX_CALLERS = 10_000

    def __init__(self, rate_per_s: float, max_streams: int, clock: Callable[[], float] = time.monotonic) -> None:
        import collections
        import threading

        self.rate = rate_per_s
        self.max_streams = max_streams
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (self.rate, now))
            tokens = min(self.rate, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if ok else tokens, now)
            while len(self._buckets) > self.MAX_CALLERS:
                self._buckets.popitem(last=False)
        return ok

    def open_stream(self, caller: str) -> bool:
        with self._lock:
            n = self._streams.get(caller, 0)
            if self.max_streams > 0 and n >= self.max_streams:
                return False
            self._streams[caller] = n + 1
        return True

    def close_stream(self, caller: str) -> None:
        with self._lock:
            n = self._streams.get(caller, 0) - 1
            if n > 0:
                self._streams[caller] = n
            else:
                self._streams.pop(caller, None)


def caller_key(principal: Principal, context) -> str:
    if principal.role != ANONYMOUS:
        return f"{principal.via}:{principal.id}"
    try:
        peer = context.peer()   # ipv4:127.0.0.1:54321 → the host, so reconnecting does not reset it
    except Exception:  # noqa: BLE001
        return "anonymous"
    return "peer:" + peer.rsplit(":", 1)[0]


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call, enforces the per-method policy, audits admin calls."""

    def __init__(self, service: str, policies: Mapping[str, Rule], authenticator: Authenticator,
                 audit: AuditSink | None = None, clock_ms: Callable[[], int] | None = None,
                 limits: CallerLimits | None = None) -> None:
        self._service = service
        self._limits = limits or CallerLimits(0, 0)
        self._policies = dict(policies)   # "/pkg.Service/Method" → rule
        self._auth = authenticator
        self._audit = audit
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        method = details.method
        if method.startswith(OPEN_SERVICES):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        rule = self._policies.get(method)
        short = method.rsplit("/", 1)[-1]
        metadata = details.invocation_metadata
        if handler.unary_unary is not None:
            inner, kind = handler.unary_unary, "unary_unary"
        elif handler.unary_stream is not None:
            inner, kind = handler.unary_stream, "unary_stream"
        else:   # no client-streaming RPCs exist; refuse rather than pass one unchecked
            return _refusing_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                     f"{short}: streaming requests are not allowed by the policy")

        def check(request: Any, context: grpc.ServicerContext, who: list[Principal]) -> None:
            if rule is None:
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{short} has no access rule: refused")
            who[0] = self._auth.principal(metadata, context, needs_token=rule.audit)
            authorize(who[0], rule, request, short)
            if rule.rate_limited and who[0].role != SERVICE and not self._limits.take(caller_key(who[0], context)):
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"rate limit: at most {self._limits.rate:g} {short} calls per second per caller")

        if kind == "unary_unary":
            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                who = [ANONYMOUS_PRINCIPAL]   # who called, as far as it was established
                code, detail = "OK", ""
                try:
                    check(request, context, who)
                    return inner(request, context)
                except _Refused as refused:
                    code, detail = refused.code.name, refused.message
                    context.abort(refused.code, refused.message)
                except Exception:
                    state = context.code() if hasattr(context, "code") else None
                    code = state.name if state is not None else "UNKNOWN"
                    detail = (context.details() if hasattr(context, "details") else "") or ""
                    raise
                finally:
                    if rule is not None and rule.audit:
                        self._record(method, who[0], context, request, code, detail)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

        def stream(request: Any, context: grpc.ServicerContext):
            who = [ANONYMOUS_PRINCIPAL]
            try:
                check(request, context, who)
            except _Refused as refused:
                context.abort(refused.code, refused.message)
            key = caller_key(who[0], context)
            if not self._limits.open_stream(key):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"at most {self._limits.max_streams} open {short} streams per caller")
            try:
                yield from inner(request, context)
            finally:
                self._limits.close_stream(key)

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)

    def _record(self, method: str, principal: Principal, context, request: Any, code: str, detail: str) -> None:
        if self._audit is None:
            return
        try:
            peer = context.peer()
        except Exception:  # noqa: BLE001
            peer = ""
        try:
            self._audit.record(AuditRecord(uuid.uuid4().hex, self._clock_ms(), self._service, method, principal,
                                           peer, summarize(request), code, detail[:MAX_SUMMARY_CHARS]))
        except Exception:  # noqa: BLE001 - the sink logs its own failures; the call's answer stands
            from marginflow.shared.logs import get_logger

            get_logger(__name__).exception("audit event not recorded", extra={"method": method})


def _refusing_handler(handler, code: grpc.StatusCode, message: str):
    def refuse(_request_or_iterator, context):
        context.abort(code, message)

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                                 response_serializer=handler.response_serializer)


def policies_of(registrations: Iterable[tuple[Any, Any, str]]) -> dict[str, Rule]:
    """``/<full service name>/<Method>`` → rule, from each servicer's ``AUTH_POLICY``."""
    table: dict[str, Rule] = {}
    for _add, servicer, full_name in registrations:
        for method, rule in (getattr(servicer, "AUTH_POLICY", None) or {}).items():
            table[f"/{full_name}/{method}"] = rule
    return table


# ---- clients -----------------------------------------------------------------------------------

class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call that does not carry one already."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or ())
        if _metadata_value(metadata, AUTHORIZATION) is None:
            metadata.append(self._header)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def client_channel(target: str, sec: SecuritySettings, token: str | None = None,
                   options: Iterable[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``target`` as this process: TLS when configured (the CA from the settings, the
    client certificate for mutual TLS), ``token`` (default: MF_AUTH_TOKEN) on every call."""
    opts = list(options)
    if sec.client_tls:
        ca = _read_bytes("MF_GRPC_TLS_CA_FILE", sec.grpc_tls_ca_file) if sec.grpc_tls_ca_file else None
        key = cert = None
        if sec.grpc_tls_client_cert_file:
            key = _read_bytes("MF_GRPC_TLS_CLIENT_KEY_FILE", sec.grpc_tls_client_key_file)
            cert = _read_bytes("MF_GRPC_TLS_CLIENT_CERT_FILE", sec.grpc_tls_client_cert_file)
        if sec.grpc_tls_server_name:
            opts.append(("grpc.ssl_target_name_override", sec.grpc_tls_server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert), options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    token = sec.auth_token if token is None else token
    if token:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(token))
    return channel


def default_client_env_file(environ: Mapping[str, str]) -> str:
    """Where ``make run`` leaves the operator's client settings: ``$MF_RUN_DIR/pki/client.env``."""
    import pathlib

    run_dir = environ.get("MF_RUN_DIR") or str(pathlib.Path(__file__).resolve().parents[3] / ".run")
    return str(pathlib.Path(run_dir) / "pki" / "client.env")


CLIENT_VARIABLES = ("MF_GRPC_TLS", "MF_GRPC_TLS_CA_FILE", "MF_AUTH_TOKEN", "MF_AUTH_TOKEN_FILE")


def client_settings(environ: Mapping[str, str] | None = None) -> SecuritySettings:
    """The settings a client process (CLI, supervisor) dials with: the environment, and when it sets
    none of the client variables, the client env file ``make run`` wrote (``MF_CLIENT_ENV_FILE``,
    empty = none), so the CLI in another terminal finds the CA and its token."""
    import os

    from marginflow.shared.config import load

    env_map = dict(os.environ if environ is None else environ)
    path = env_map.get("MF_CLIENT_ENV_FILE")
    if path is None:
        path = default_client_env_file(env_map)
    if path and os.path.isfile(path) and not any(env_map.get(k) for k in CLIENT_VARIABLES):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    env_map.setdefault(key.strip(), value.strip())
    return load(SecuritySettings, env_map)


def generate_token() -> str:
    """A new random token (256 bits, URL-safe)."""
    import secrets

    return secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> int:
    """``python -m marginflow.shared.security hash`` reads a token on stdin and prints its token-file
    hash; ``new ROLE [ACCOUNT]`` prints a new token on stdout and its token-file line on stderr."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hash"]:
        print("sha256:" + hash_token(sys.stdin.readline()))
        return 0
    if args[:1] == ["new"] and len(args) in (2, 3) and args[1] in ROLES:
        token = generate_token()
        print(token)
        print(f"sha256:{hash_token(token)} {' '.join(args[1:])}", file=sys.stderr)
        return 0
    print("usage: python -m marginflow.shared.security hash < token | new ROLE [ACCOUNT]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
