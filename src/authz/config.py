"""One settings object, read from the environment (AUTHZ_*, PORT, DATABASE_URL)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MAX_ACCESS_TTL = 300.0
"""Heroku's rule: a cached list of authorized users is never older than 5 minutes."""
MAX_SSO_PAST_SECONDS = 300.0
MAX_SSO_FUTURE_SECONDS = 60.0
MIN_SSO_SALT_LENGTH = 16
"""Heroku generates long random salts; a short one is a typo or a fragment of a list."""

SHA1_NEVER = "never"
SHA1_LEGACY_ADDONS = "legacy-addons"
SSO_SHA1_MODES = (SHA1_NEVER, SHA1_LEGACY_ADDONS)
"""AUTHZ_SSO_ALLOW_SHA1: ``never`` refuses every form without a valid SHA-256
``user_scoped_resource_token``; ``legacy-addons`` also accepts the SHA-1 ``resource_token``, but
only for an add-on that has never sent a SHA-256 token (authz.login)."""
AUDIT_MODES = ("durable", "async", "off")
STATE_DB_NAME = "state.db"
"""The SQLite file under AUTHZ_DATA_DIR for the registry, sessions, SSO replay guard and tokens."""
AUDIT_DB_NAME = "audit.db"
"""The SQLite file under AUTHZ_DATA_DIR for the audit log."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json", "logfmt")
"""AUTHZ_LOG_FORMAT (authz.logs): ``text`` for people, ``json`` one object per line, ``logfmt``
key=value lines as Heroku's log drains and its own router write them."""
EVENT_LOOPS = ("uvloop", "asyncio")
"""AUTHZ_EVENT_LOOP (authz.server.eventloop): ``uvloop`` (libuv's loop; less CPU per call for
grpc.aio and uvicorn) or ``asyncio``, the standard library's own."""
CPU_AFFINITIES = ("auto", "off")
"""AUTHZ_CPU_AFFINITY (authz.server.workers): ``auto`` keeps each worker of ``serve --workers N``
on a core of its own when there are at least N cores to give, ``off`` lets the kernel move them."""
RECALL_MODES = ("on", "off")
"""AUTHZ_RECALL (authz.server.app.apply_recall): ``on`` reuses what earlier requests converted
and evaluated, ``off`` converts and evaluates every request afresh."""
SWITCH = ("0", "1")
"""The values of an on/off setting (AUTHZ_LOG_DECISIONS, AUTHZ_METRICS_OPEN, ...)."""
OTLP_PROTOCOLS = ("http/protobuf",)
"""The one OTLP transport authz exports traces with (OTEL_EXPORTER_OTLP_PROTOCOL)."""


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the variable and the fix."""


def _read_secret(env: Mapping[str, str], name: str) -> str:
    """A secret comes from NAME, or from the file named by NAME_FILE (for mounted secrets).

    Messages name the variable and the file, never the value.
    """
    file_name = env.get(f"{name}_FILE")
    if env.get(name) and file_name:
        raise ConfigError(f"both {name} and {name}_FILE are set; keep one")
    if env.get(name):
        return env[name]
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from None
    return ""


MAX_CALLER_NAME = 128
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class CallerToken:
    """One entry of the AUTHZ_CALLER_TOKENS file: a caller's name and its token's SHA-256."""

    name: str
    digest: bytes = field(repr=False)
    source: str = ""  # file:line, for messages

    @classmethod
    def of(cls, name: str, token: str, source: str = "") -> CallerToken:
        """An entry for a plain token (for tests and tooling; files hold only the hash)."""
        return cls(name, hashlib.sha256(token.encode()).digest(), source)


def parse_caller_tokens(text: str, source: str) -> tuple[CallerToken, ...]:
    """Lines of `name sha256-hex-of-token`; `#` starts a comment; blank lines are skipped.

    Every malformed line is refused with its `source:line`, so a typo never silently locks a
    service out (or in). The same name may appear more than once (token rotation); the same
    hash may not (one token would then name two callers).
    """
    entries: list[CallerToken] = []
    problems: list[str] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            problems.append(
                f"{where}: expected 'name sha256-hex-of-token' (2 fields), found {len(fields)}"
            )
            continue
        name, hex_digest = fields
        if len(name) > MAX_CALLER_NAME or not name.isprintable():
            problems.append(
                f"{where}: the caller name must be printable and at most {MAX_CALLER_NAME} "
                "characters"
            )
            continue
        if not _SHA256_HEX.fullmatch(hex_digest):
            problems.append(
                f"{where}: the second field must be the token's SHA-256 as 64 hex digits "
                "(store the hash, never the token: printf %s TOKEN | sha256sum)"
            )
            continue
        digest = bytes.fromhex(hex_digest)
        if digest in seen:
            problems.append(f"{where}: the same token hash is already listed at {seen[digest]}")
            continue
        seen[digest] = where
        entries.append(CallerToken(name, digest, where))
    if problems:
        raise ConfigError("; ".join(problems))
    if not entries:
        raise ConfigError(
            f"{source}: AUTHZ_CALLER_TOKENS names a file with no tokens; add "
            "'name sha256-hex-of-token' lines or unset it"
        )
    return tuple(entries)


def load_caller_tokens(path: Path | str) -> tuple[CallerToken, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"AUTHZ_CALLER_TOKENS: cannot read {path}: {reason}") from None
    return parse_caller_tokens(text, str(path))


POLICY_STRICT_MODES = ("off", "on")


def choice(env: Mapping[str, str], name: str, accepted: Sequence[str], default: str) -> str:
    """An enumerated (or boolean) setting: unset or empty means ``default``; anything else must
    be one of ``accepted`` exactly (no case folding, no trimming), so a typo, a synonym or a
    stray space stops the service at start instead of quietly meaning something else."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return accepted_value(name, raw, accepted)


def accepted_value(name: str, value: str, accepted: Sequence[str]) -> str:
    if value not in accepted:
        raise ConfigError(f"{name}={value!r} is not accepted; use one of: {', '.join(accepted)}")
    return value


def parse_sso_salts(text: str, name: str = "AUTHZ_SSO_SALT") -> tuple[str, ...]:
    """Salts separated by whitespace (spaces or one per line in a ``_FILE``), so a salt may hold
    any other character, commas included. Each must be at least 16 characters; the message
    says which one (by position) breaks the rule and never shows a salt."""
    salts = tuple(text.split())
    check_sso_salts(salts, name)
    return salts


def check_sso_salts(salts: Sequence[str], name: str = "AUTHZ_SSO_SALT") -> None:
    for position, salt in enumerate(salts, start=1):
        if len(salt) < MIN_SSO_SALT_LENGTH:
            raise ConfigError(
                f"{name}: salt {position} of {len(salts)} is shorter than "
                f"{MIN_SSO_SALT_LENGTH} characters; use the add-on manifest's sso_salt, and "
                "separate several salts with spaces or newlines (not commas)"
            )
        if any(ch.isspace() for ch in salt):
            raise ConfigError(
                f"{name}: salt {position} of {len(salts)} contains whitespace, which separates "
                "salts; a salt may not contain it"
            )


def parse_public_url(value: str, name: str = "AUTHZ_PUBLIC_URL") -> str:
    """The URL at which Heroku reaches this service's HTTP listener (webhook deliveries), without
    a trailing slash. It must be https (Heroku delivers only to https URLs and signs the body, not
    the channel), except on loopback for development, where http is accepted and port 0 stands
    for the HTTP listener's own port once it is bound. A path prefix is allowed (behind a proxy);
    credentials, a query or a fragment are not."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    problem = ""
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "must be an absolute https:// URL, e.g. https://authz.example.com"
    elif "@" in parts.netloc:
        # Never echoed: what is before the @ may be a password.
        raise ConfigError(f"{name} must not hold credentials (user:password@)")
    elif port == -1:
        problem = "has a port that is not a number from 0 to 65535"
    elif parts.query or parts.fragment or value.endswith(("?", "#")):
        problem = "must not have a query or a fragment"
    elif not _loopback_host(parts.hostname):
        if parts.scheme != "https":
            problem = "must use https (http is accepted only on loopback, for development)"
        elif port == 0:
            problem = "names port 0, which only a loopback URL may (the HTTP listener's port)"
    if problem:
        raise ConfigError(f"{name}={value!r} {problem}")
    return value.rstrip("/")


def resolve_public_url(public_url: str, http_port: int) -> str:
    """AUTHZ_PUBLIC_URL with a loopback port 0 replaced by the HTTP listener's bound port."""
    parts = urlsplit(public_url)
    if parts.port != 0 or parts.hostname is None:
        return public_url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(parts._replace(netloc=f"{host}:{http_port}"))


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_host_port(value: str, name: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) as (host, port); ConfigError naming `name`."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{name}={value!r} must be host:port, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
        )
    return host, int(port)


def _http_listen(env: Mapping[str, str]) -> str | None:
    """AUTHZ_HTTP_LISTEN, else 0.0.0.0:$PORT: Heroku's router speaks HTTP/1.1 to the dyno's
    $PORT (https://devcenter.heroku.com/articles/http-routing), so on Heroku the port is the
    HTTP listener's, never gRPC's. None (no HTTP listener) when neither is set."""
    if env.get("AUTHZ_HTTP_LISTEN"):
        parse_host_port(env["AUTHZ_HTTP_LISTEN"], "AUTHZ_HTTP_LISTEN")
        return env["AUTHZ_HTTP_LISTEN"]
    if env.get("PORT"):
        port = env["PORT"]
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"PORT={port!r} must be a port number (0-65535)")
        return f"0.0.0.0:{port}"
    return None


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw) if raw else None


def _names(raw: str) -> frozenset[str]:
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def parse_reviewers(raw: str) -> frozenset[str]:
    """AUTHZ_REVIEWERS: caller names separated by commas ("compliance, security-team"); spaces
    around a name are dropped, an empty name between commas or a name that is not printable
    (or longer than a caller name may be) is refused."""
    if not raw.strip():
        return frozenset()
    names = [name.strip() for name in raw.split(",")]
    check_reviewers(names)
    return frozenset(names)


def check_reviewers(names: Iterable[str]) -> None:
    for name in names:
        if not name or len(name) > MAX_CALLER_NAME or not name.isprintable():
            raise ConfigError(
                f"AUTHZ_REVIEWERS: {name!r} is not a caller name; list caller names (as in "
                f"AUTHZ_CALLER_TOKENS or the client certificates), printable and at most "
                f"{MAX_CALLER_NAME} characters, separated by commas"
            )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{name}={value} must be at least 1")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None


def _bounded(name: str, value: float, upper: float) -> float:
    if not 0 < value <= upper:
        raise ConfigError(f"{name}={value:g} must be more than 0 and at most {upper:g} seconds")
    return value


def _request_timeout(env: Mapping[str, str]) -> float:
    """Seconds a call may take to send its request; 0 turns the guard off (trusted callers)."""
    value = _float(env, "AUTHZ_REQUEST_TIMEOUT", 10.0)
    if value == 0:
        return 0.0
    if not 0 < value <= 60.0:
        raise ConfigError(f"AUTHZ_REQUEST_TIMEOUT={value:g} must be 0 (off) or up to 60 seconds")
    return value


MAX_CONNECTION_AGE_LIMIT = 86_400.0


def _check_connection_age(value: float) -> None:
    """AUTHZ_MAX_CONNECTION_AGE: 0 (off) or from 1 second to a day; ConfigError otherwise."""
    if value != 0 and not 1 <= value <= MAX_CONNECTION_AGE_LIMIT:
        raise ConfigError(
            f"AUTHZ_MAX_CONNECTION_AGE={value:g} must be 0 (off) or from 1 to "
            f"{MAX_CONNECTION_AGE_LIMIT:g} seconds"
        )


def _otlp_traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go, or None (no tracing). OpenTelemetry's "OTLP Exporter Configuration":
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the URL as is; for OTLP/HTTP the signal's path
    (v1/traces) is appended to OTEL_EXPORTER_OTLP_ENDPOINT. Other OTEL_* variables (headers,
    timeout, certificates, sampler, service name) are read by the SDK itself."""
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        choice(env, name, OTLP_PROTOCOLS, OTLP_PROTOCOLS[0])
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = env.get(name)
        if not url:
            continue
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{name} must be an http:// or https:// URL of an OTLP/HTTP receiver, e.g. "
                "http://127.0.0.1:4318"
            )
        if name == "OTEL_EXPORTER_OTLP_ENDPOINT":
            return url.removesuffix("/") + "/v1/traces"
        return url
    return None


def _database_url(env: Mapping[str, str]) -> str | None:
    from authz.store import StoreError, database_url_from_env

    try:
        return database_url_from_env(env)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    # The HTTP listener beside gRPC (authz.web): AUTHZ_HTTP_LISTEN or 0.0.0.0:$PORT; None: off.
    http_listen: str | None = None
    # SO_REUSEPORT on the HTTP socket, so that several worker processes can share one port.
    http_reuse_port: bool = False
    # Random bytes the workers of one `serve --workers N` share (never read from the environment):
    # what must agree between workers but need not outlive them, e.g. the review login cookie's
    # key when AUTHZ_TOKEN_KEY is unset. None: this process makes its own.
    workers_secret: bytes | None = field(default=None, repr=False)
    policy_dir: Path = Path("policies")
    # AUTHZ_POLICY_STRICT=on: policy warnings refuse a set at load and reload, as --strict does
    # for `authz policy validate` / `test`.
    policy_strict: bool = False
    data_dir: Path = Path("data")
    # SSO: several salts may be active at once so a salt can be rotated.
    sso_salts: tuple[str, ...] = field(default=(), repr=False)
    sso_allow_sha1: str = SHA1_NEVER  # one of SSO_SHA1_MODES
    sso_max_age: float = MAX_SSO_PAST_SECONDS
    sso_max_future: float = MAX_SSO_FUTURE_SECONDS
    session_ttl: float = 8 * 3600.0
    # Platform API for Partners.
    heroku_api_url: str = "https://api.heroku.com"
    heroku_id_url: str = "https://id.heroku.com"
    heroku_client_secret: str = field(default="", repr=False)
    token_key: str = field(default="", repr=False)
    access_ttl: float = 60.0
    facts_deadline: float = 2.0
    # Where Heroku reaches this service's HTTP listener (AUTHZ_PUBLIC_URL): add-on webhooks are
    # subscribed to {public_url}/heroku/webhooks/{resource id}. None: no webhooks.
    public_url: str | None = None
    # Audit.
    audit_mode: str = "durable"
    # Shared PostgreSQL store for several replicas (AUTHZ_DATABASE_URL or Heroku's DATABASE_URL);
    # None: SQLite files under data_dir.
    database_url: str | None = field(default=None, repr=False)
    # Who may call: TLS (server certificate), mutual TLS (AUTHZ_CLIENT_CA), bearer tokens.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    caller_tokens: tuple[CallerToken, ...] = field(default=(), repr=False)
    admins: frozenset[str] = frozenset()
    # Callers who may read the audit review pages (/audit on the HTTP listener); admins may too.
    reviewers: frozenset[str] = frozenset()
    insecure: bool = False  # --insecure: allow a non-loopback bind without caller credentials
    max_concurrent_rpcs: int = 1000
    request_timeout: float = 10.0  # seconds a call may take to deliver its request message
    log_level: str = "INFO"  # one of LOG_LEVELS (authz serve)
    # Calls without caller credentials to what stays open (health; reflection in development
    # mode) have a budget of their own, on top of max_concurrent_rpcs; see authz.server.guard.
    open_rpcs: int = 64
    stream_idle: float = 120.0  # seconds an open stream may send and receive nothing
    # Seconds before a connection is asked to move (gRPC: GOAWAY, its calls finish first; HTTP:
    # `Connection: close` on its next answer), so that long-lived connections spread again over
    # the workers; 0: they stay (authz.server.transport, authz.web.server).
    max_connection_age: float = 60.0
    # Observability (authz.logs, authz.metrics, authz.tracing).
    log_format: str = "text"  # one of LOG_FORMATS
    event_loop: str = "uvloop"  # one of EVENT_LOOPS
    cpu_affinity: str = "auto"  # one of CPU_AFFINITIES
    recall: str = "on"  # one of RECALL_MODES
    log_decisions: bool = False  # AUTHZ_LOG_DECISIONS=1: one INFO line per decision
    metrics_open: bool = False  # AUTHZ_METRICS_OPEN=1: GET /metrics for anyone, not callers only
    otlp_traces_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; None: off
    # Heroku: the dyno's name (DYNO) and AUTHZ_ALLOW_EPHEMERAL=1; see check_storage.
    dyno: str = ""
    allow_ephemeral: bool = False

    def __post_init__(self) -> None:
        # Settings built in code (tests, the demo, benchmarks) obey the rules the environment
        # does; the messages name the variable that sets each field.
        check_sso_salts(self.sso_salts)
        accepted_value("AUTHZ_SSO_ALLOW_SHA1", self.sso_allow_sha1, SSO_SHA1_MODES)
        accepted_value("AUTHZ_AUDIT_MODE", self.audit_mode, AUDIT_MODES)
        accepted_value("AUTHZ_LOG_LEVEL", self.log_level, LOG_LEVELS)
        accepted_value("AUTHZ_LOG_FORMAT", self.log_format, LOG_FORMATS)
        accepted_value("AUTHZ_EVENT_LOOP", self.event_loop, EVENT_LOOPS)
        accepted_value("AUTHZ_CPU_AFFINITY", self.cpu_affinity, CPU_AFFINITIES)
        accepted_value("AUTHZ_RECALL", self.recall, RECALL_MODES)
        _check_connection_age(self.max_connection_age)
        if self.public_url is not None:
            parse_public_url(self.public_url)
        self._check_reviewers()

    def _check_reviewers(self) -> None:
        """Reviewers read decisions holding user ids and e-mails: a name that can never
        authenticate is a mistake worth stopping for, not a page nobody can open."""
        if not self.reviewers:
            return
        check_reviewers(self.reviewers)
        if not self.authenticates_callers:
            raise ConfigError(
                "AUTHZ_REVIEWERS names reviewers, but callers are not authenticated (development "
                "mode), so nobody can prove to be one: set AUTHZ_CALLER_TOKENS or AUTHZ_CLIENT_CA, "
                "or unset AUTHZ_REVIEWERS"
            )
        if self.client_ca is None:
            known = {entry.name for entry in self.caller_tokens}
            unknown = sorted(self.reviewers - known)
            if unknown:
                raise ConfigError(
                    f"AUTHZ_REVIEWERS names {', '.join(map(repr, unknown))}, which no entry of "
                    "AUTHZ_CALLER_TOKENS names (and without AUTHZ_CLIENT_CA no certificate can): "
                    "add a token for each reviewer, or fix the name"
                )

    # Where the data lives, decided here only: the server, `authz db migrate` and the commands
    # that read the stores start from these, so every one of them works on both backends.

    @property
    def state_target(self) -> Path | str:
        """The state store (add-on registry, sessions, SSO replay guard, OAuth tokens): the
        PostgreSQL URL when one is set, else ``data_dir/state.db``."""
        return self._database() or self.data_dir / STATE_DB_NAME

    @property
    def audit_target(self) -> Path | str:
        """The audit log: the same PostgreSQL database when one is set (the log the replicas
        share), else ``data_dir/audit.db``."""
        return self._database() or self.data_dir / AUDIT_DB_NAME

    def _database(self) -> str | None:
        from authz.store.connect import normalise_postgres_url

        return normalise_postgres_url(self.database_url) if self.database_url else None

    @property
    def authenticates_callers(self) -> bool:
        """True when callers must prove who they are (mutual TLS or bearer tokens)."""
        return self.client_ca is not None or bool(self.caller_tokens)

    def check_transport(self) -> None:
        """Refuse TLS settings that cannot work together; see authz.server.transport for binds."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "AUTHZ_TLS_CERT and AUTHZ_TLS_KEY go together: set both (the server's certificate "
                "chain and its private key, PEM files) or neither"
            )
        if self.public_url is not None and self.http_listen is None:
            raise ConfigError(
                "AUTHZ_PUBLIC_URL is where Heroku delivers webhooks to the HTTP listener, which "
                "is off: set AUTHZ_HTTP_LISTEN (or PORT), or unset AUTHZ_PUBLIC_URL"
            )
        if self.client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "AUTHZ_CLIENT_CA turns on mutual TLS, which needs the server's own certificate: "
                "set AUTHZ_TLS_CERT and AUTHZ_TLS_KEY too"
            )

    def check_storage(self) -> str:
        """On a Heroku dyno without a database, everything authz keeps (the audit log, sessions,
        the add-on registry, OAuth tokens) would be on the dyno's ephemeral filesystem, which
        is discarded at least once a day and on every deploy and restart (Dev Center "Dynos and
        the Dyno Manager", Ephemeral Filesystem). ConfigError then, unless
        AUTHZ_ALLOW_EPHEMERAL=1, when the warning to log is returned; "" otherwise."""
        if not self.dyno or self.database_url is not None:
            return ""
        problem = (
            f"running on the Heroku dyno {self.dyno!r} without DATABASE_URL: the audit log, "
            f"sessions, the add-on registry and OAuth tokens would be kept in {self.data_dir} "
            "on the dyno's ephemeral filesystem, lost at every restart and deploy (at least "
            "daily), and not shared with other dynos"
        )
        if not self.allow_ephemeral:
            raise ConfigError(
                f"refusing to start: {problem}. Attach Heroku Postgres (heroku addons:create "
                "heroku-postgresql), which sets DATABASE_URL, or set AUTHZ_ALLOW_EPHEMERAL=1 "
                "to accept losing them"
            )
        return f"AUTHZ_ALLOW_EPHEMERAL=1: {problem}. Set DATABASE_URL to keep them"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        salts = parse_sso_salts(_read_secret(env, "AUTHZ_SSO_SALT"))
        tokens_file = _path(env, "AUTHZ_CALLER_TOKENS")
        settings = cls(
            listen=env.get("AUTHZ_LISTEN") or cls.listen,
            http_listen=_http_listen(env),
            policy_dir=Path(env.get("AUTHZ_POLICY_DIR") or cls.policy_dir),
            policy_strict=choice(env, "AUTHZ_POLICY_STRICT", POLICY_STRICT_MODES, "off") == "on",
            data_dir=Path(env.get("AUTHZ_DATA_DIR") or cls.data_dir),
            sso_salts=salts,
            sso_allow_sha1=choice(env, "AUTHZ_SSO_ALLOW_SHA1", SSO_SHA1_MODES, SHA1_NEVER),
            sso_max_age=_bounded(
                "AUTHZ_SSO_MAX_AGE",
                _float(env, "AUTHZ_SSO_MAX_AGE", MAX_SSO_PAST_SECONDS),
                MAX_SSO_PAST_SECONDS,
            ),
            sso_max_future=_bounded(
                "AUTHZ_SSO_MAX_FUTURE",
                _float(env, "AUTHZ_SSO_MAX_FUTURE", MAX_SSO_FUTURE_SECONDS),
                MAX_SSO_FUTURE_SECONDS,
            ),
            session_ttl=_bounded(
                "AUTHZ_SESSION_TTL", _float(env, "AUTHZ_SESSION_TTL", 8 * 3600.0), 7 * 86400.0
            ),
            heroku_api_url=env.get("AUTHZ_HEROKU_API_URL") or cls.heroku_api_url,
            heroku_id_url=env.get("AUTHZ_HEROKU_ID_URL") or cls.heroku_id_url,
            heroku_client_secret=_read_secret(env, "AUTHZ_HEROKU_CLIENT_SECRET"),
            token_key=_read_secret(env, "AUTHZ_TOKEN_KEY"),
            access_ttl=_bounded(
                "AUTHZ_ACCESS_TTL", _float(env, "AUTHZ_ACCESS_TTL", 60.0), MAX_ACCESS_TTL
            ),
            facts_deadline=_bounded(
                "AUTHZ_FACTS_DEADLINE", _float(env, "AUTHZ_FACTS_DEADLINE", 2.0), 30.0
            ),
            public_url=parse_public_url(env["AUTHZ_PUBLIC_URL"])
            if env.get("AUTHZ_PUBLIC_URL")
            else None,
            audit_mode=choice(env, "AUTHZ_AUDIT_MODE", AUDIT_MODES, "durable"),
            database_url=_database_url(env),
            tls_cert=_path(env, "AUTHZ_TLS_CERT"),
            tls_key=_path(env, "AUTHZ_TLS_KEY"),
            client_ca=_path(env, "AUTHZ_CLIENT_CA"),
            caller_tokens=load_caller_tokens(tokens_file) if tokens_file else (),
            admins=_names(env.get("AUTHZ_ADMINS", "")),
            reviewers=parse_reviewers(env.get("AUTHZ_REVIEWERS", "")),
            max_concurrent_rpcs=_positive_int(env, "AUTHZ_MAX_CONCURRENT_RPCS", 1000),
            request_timeout=_request_timeout(env),
            log_level=choice(env, "AUTHZ_LOG_LEVEL", LOG_LEVELS, "INFO"),
            open_rpcs=_positive_int(env, "AUTHZ_OPEN_RPCS", 64),
            stream_idle=_bounded(
                "AUTHZ_STREAM_IDLE", _float(env, "AUTHZ_STREAM_IDLE", 120.0), 3600.0
            ),
            max_connection_age=_float(env, "AUTHZ_MAX_CONNECTION_AGE", 60.0),
            log_format=choice(env, "AUTHZ_LOG_FORMAT", LOG_FORMATS, "text"),
            event_loop=choice(env, "AUTHZ_EVENT_LOOP", EVENT_LOOPS, "uvloop"),
            cpu_affinity=choice(env, "AUTHZ_CPU_AFFINITY", CPU_AFFINITIES, "auto"),
            recall=choice(env, "AUTHZ_RECALL", RECALL_MODES, "on"),
            log_decisions=choice(env, "AUTHZ_LOG_DECISIONS", SWITCH, "0") == "1",
            metrics_open=choice(env, "AUTHZ_METRICS_OPEN", SWITCH, "0") == "1",
            otlp_traces_endpoint=_otlp_traces_endpoint(env),
            dyno=env.get("DYNO", ""),
            allow_ephemeral=choice(env, "AUTHZ_ALLOW_EPHEMERAL", SWITCH, "0") == "1",
        )
        settings.check_transport()
        return settings
