"""A simulator of Heroku's identity service and Platform API for Partners, over real HTTP.

The demo and the tests run against it instead of id.heroku.com and api.heroku.com. One base URL
serves both the OAuth token endpoint and the API, so a client points its id URL and its API URL
at the same place::

    with HerokuSimulator(load_fixture()) as sim:
        code = sim.create_grant("ce9b8461-8f28-4524-bffc-bd6d349c4ef0")
        ...  # POST {sim.base_url}/oauth/token, GET {sim.base_url}/addons/{id}, ...

What it models (see docs reference "heroku-addon.md", sections 3 and 4):

- ``POST /oauth/token``: ``authorization_code`` and ``refresh_token`` grants. Grant codes are
  single-use and belong to one add-on; an access token only reads the app of its add-on.
- ``GET /addons/{id}``, ``GET /apps/{id_or_name}``, ``GET /apps/{app}/collaborators``,
  ``GET /teams/{id_or_name}/members`` with Heroku's JSON shapes, ``Accept`` version check,
  ``Ratelimit-Remaining`` on every reply and ``Range``/``Next-Range`` pagination (206 while more
  remain; clients echo ``Next-Range`` as their next ``Range``).
- Admin while running, as methods and as JSON endpoints under ``/__sim/``: change collaborators,
  team members and emails, create grants, expire or revoke tokens, inject faults (latency, 5xx or
  any status, 429, malformed JSON, dropped connection), read and reset request counters.

Admin endpoints (JSON bodies; users, apps, teams and add-ons may be named by id, fixture
handle or name)::

    GET    /__sim/state                           everything but tokens
    POST   /__sim/users                           {email, name?, handle?}
    PATCH  /__sim/users/{user}                    {email}
    POST   /__sim/apps/{app}/collaborators        {user, role?, permissions?}
    PATCH  /__sim/apps/{app}/collaborators/{user} {role?, permissions?}
    DELETE /__sim/apps/{app}/collaborators/{user}
    POST   /__sim/teams/{team}/members            {user, role?}
    PATCH  /__sim/teams/{team}/members/{user}     {role}
    DELETE /__sim/teams/{team}/members/{user}
    POST   /__sim/grants                          {resource_id, ttl?} -> {code}
    POST   /__sim/tokens/expire                   {resource_id?}
    POST   /__sim/tokens/revoke                   {resource_id}
    GET    /__sim/faults | POST {kind, path_prefix?, count?, seconds?, status?, retry_after?}
    DELETE /__sim/faults[/{id}]
    GET    /__sim/counters | DELETE (reset)
    DELETE /__sim/rate-limits

It is a development tool: no TLS, tokens live in memory, and the fixture's client secret is a
throwaway value.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import re
import secrets
import signal
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from authz.clock import Clock, system_clock

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FixtureError",
    "HerokuSimulator",
    "load_fixture",
    "serve_forever",
]

HEROKU_MEDIA_TYPE = "application/vnd.heroku+json"
FAULT_KINDS = ("latency", "error", "rate_limit", "malformed", "drop")
COLLABORATOR_ROLES = ("owner", "admin", "collaborator", "member", "viewer")
TEAM_ROLES = ("admin", "owner", "member", "collaborator", "viewer")
PERMISSION_DESCRIPTIONS = {
    "view": "Can view the app's settings, add-ons, resources and metrics.",
    "deploy": "Can deploy the app, run one-off dynos and change config vars.",
    "operate": "Can restart and scale dynos and change the app's maintenance mode.",
    "manage": "Can manage the app's collaborators, add-ons, domains and settings.",
}
_NAMESPACE = uuid.UUID("b0f6c1d2-3e4f-5a6b-8c7d-9e0f1a2b3c4d")
_RANGE_RE = re.compile(
    r"^\s*(?P<field>[a-z_]+)\s+(?P<exclusive>\]?)(?P<start>[^.;\s]*)\s*\.\.\s*(?P<end>[^;\s]*)"
    r"\s*(?P<params>(?:;.*)?)$"
)


class FixtureError(ValueError):
    """The fixture is malformed; the message names the offending entry."""


def _derived_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _timestamp(ts: float) -> str:
    """Heroku's timestamps: second precision, UTC, with a Z."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# State


@dataclass
class _User:
    id: str
    email: str
    name: str
    handle: str = ""
    federated: bool = False
    two_factor: bool = False


@dataclass
class _Collaborator:
    id: str
    user_id: str
    role: str | None
    permissions: list[str]
    created_at: str
    updated_at: str


@dataclass
class _TeamMember:
    id: str
    user_id: str
    role: str
    created_at: str
    updated_at: str


@dataclass
class _Team:
    id: str
    name: str
    members: dict[str, _TeamMember] = field(default_factory=dict)


@dataclass
class _App:
    id: str
    name: str
    owner_id: str
    team_id: str | None
    created_at: str
    collaborators: dict[str, _Collaborator] = field(default_factory=dict)


@dataclass
class _Addon:
    id: str
    name: str
    app_id: str
    plan: str
    state: str
    created_at: str


@dataclass
class _Grant:
    resource_id: str
    expires_at: float | None


@dataclass
class _AccessToken:
    resource_id: str
    expires_at: float


@dataclass
class Fault:
    """One injected fault. ``remaining`` None means until cleared."""

    id: str
    kind: str
    path_prefix: str = ""
    remaining: int | None = None
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "path_prefix": self.path_prefix,
            "count": self.remaining,
            "seconds": self.seconds,
            "status": self.status,
            "retry_after": self.retry_after,
        }


class _Reply(Exception):
    """Raised inside request handling to answer with an error document."""

    def __init__(
        self,
        status: int,
        error_id: str,
        message: str,
        *,
        remaining: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.remaining = remaining
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------------------
# Fixture


def load_fixture(path: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML fixture; without a path, the demo fixture shipped with the package."""
    if path is None:
        text = resources.files("authz.devtools").joinpath("heroku_fixture.yaml").read_text()
        source = "heroku_fixture.yaml"
    else:
        text = Path(path).read_text()
        source = str(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when built
    data = yaml.load(text, Loader=loader)  # a safe loader either way
    if not isinstance(data, dict):
        raise FixtureError(f"{source}: the fixture must be a YAML mapping")
    return data


def _items(fixture: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = fixture.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise FixtureError(f"fixture: {key!r} must be a list of mappings")
    return value


def _required(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise FixtureError(f"fixture: {where} needs a non-empty string {key!r}")
    return value


# --------------------------------------------------------------------------------------------
# The simulator


class HerokuSimulator:
    """Heroku identity + Platform API for Partners on 127.0.0.1, in a background thread."""

    def __init__(
        self,
        fixture: Mapping[str, Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_ttl: float = 28800,
        page_size: int = 200,
        rate_limit: int = 4500,
        client_secret: str | None = None,
        grant_ttl: float = 300.0,
        clock: Clock = system_clock,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._host = host
        self._port = port
        self.access_token_ttl = float(access_token_ttl)
        self.page_size = int(page_size)
        self.rate_limit = int(rate_limit)
        self.grant_ttl = float(grant_ttl)
        self._clock = clock
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

        self._users: dict[str, _User] = {}
        self._teams: dict[str, _Team] = {}
        self._apps: dict[str, _App] = {}
        self._addons: dict[str, _Addon] = {}
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> resource id
        # resource id -> (calls spent, when last counted); refilled like Heroku's, per hour
        self._rate_used: dict[str, tuple[float, float]] = {}
        self._faults: list[Fault] = []
        self._fault_ids = itertools.count(1)
        self._counts: Counter[str] = Counter()

        oauth = fixture.get("oauth") or {}
        secret = client_secret if client_secret is not None else oauth.get("client_secret")
        if not isinstance(secret, str) or not secret:
            raise FixtureError("fixture: oauth.client_secret is missing (or pass client_secret=)")
        self.client_secret = secret
        self._load(fixture)

    # -- fixture -----------------------------------------------------------------------------

    def _load(self, fixture: Mapping[str, Any]) -> None:
        now = _timestamp(self._clock())
        for entry in _items(fixture, "users"):
            user_id = _required(entry, "id", "a user")
            self._users[user_id] = _User(
                id=user_id,
                email=_required(entry, "email", f"user {user_id}"),
                name=str(entry.get("name") or ""),
                handle=str(entry.get("handle") or ""),
                federated=bool(entry.get("federated", False)),
                two_factor=bool(entry.get("two_factor_authentication", False)),
            )
        for entry in _items(fixture, "teams"):
            team_id = _required(entry, "id", "a team")
            team = _Team(id=team_id, name=_required(entry, "name", f"team {team_id}"))
            self._teams[team_id] = team
            for member in entry.get("members") or []:
                self._put_team_member(team, self._user(member.get("user")), member.get("role"))
        for entry in _items(fixture, "apps"):
            app_id = _required(entry, "id", "an app")
            team_ref = entry.get("team")
            app = _App(
                id=app_id,
                name=_required(entry, "name", f"app {app_id}"),
                owner_id=self._user(entry.get("owner")).id,
                team_id=self._team(team_ref).id if team_ref else None,
                created_at=now,
            )
            self._apps[app_id] = app
            for collab in entry.get("collaborators") or []:
                self._put_collaborator(
                    app,
                    self._user(collab.get("user")),
                    collab.get("role", "collaborator"),
                    collab.get("permissions"),
                )
        for entry in _items(fixture, "addons"):
            resource_id = _required(entry, "id", "an add-on")
            self._addons[resource_id] = _Addon(
                id=resource_id,
                name=str(entry.get("name") or f"authz-{resource_id[:8]}"),
                app_id=self._app(entry.get("app")).id,
                plan=str(entry.get("plan") or "authz:basic"),
                state=str(entry.get("state") or "provisioned"),
                created_at=now,
            )
        for entry in _items(fixture, "grants"):
            code = _required(entry, "code", "a grant")
            expires_in = entry.get("expires_in")
            self._grants[code] = _Grant(
                resource_id=self._addon(entry.get("addon")).id,
                expires_at=None if expires_in is None else self._clock() + float(expires_in),
            )

    # -- lookups (accept ids, handles and names) -------------------------------------------

    def _user(self, ref: Any) -> _User:
        if isinstance(ref, str):
            if ref in self._users:
                return self._users[ref]
            for user in self._users.values():
                if ref == user.handle:
                    return user
        raise LookupError(f"unknown user {ref!r}")

    def _team(self, ref: Any) -> _Team:
        if isinstance(ref, str):
            if ref in self._teams:
                return self._teams[ref]
            for team in self._teams.values():
                if ref == team.name:
                    return team
        raise LookupError(f"unknown team {ref!r}")

    def _app(self, ref: Any) -> _App:
        if isinstance(ref, str):
            if ref in self._apps:
                return self._apps[ref]
            for app in self._apps.values():
                if ref == app.name:
                    return app
        raise LookupError(f"unknown app {ref!r}")

    def _addon(self, ref: Any) -> _Addon:
        if isinstance(ref, str):
            if ref in self._addons:
                return self._addons[ref]
            for addon in self._addons.values():
                if ref == addon.name:
                    return addon
        raise LookupError(f"unknown add-on {ref!r}")

    def user(self, ref: str) -> dict[str, Any]:
        """A user by id or fixture handle, as ``{id, email, name, handle}``."""
        with self._lock:
            u = self._user(ref)
            return {"id": u.id, "email": u.email, "name": u.name, "handle": u.handle}

    def app(self, ref: str) -> dict[str, Any]:
        """An app by id or name, in the Platform API's shape."""
        with self._lock:
            return self._app_json(self._app(ref))

    def addon(self, ref: str) -> dict[str, Any]:
        """An add-on by resource id or name, in the Platform API's shape."""
        with self._lock:
            return self._addon_json(self._addon(ref))

    def team(self, ref: str) -> dict[str, Any]:
        with self._lock:
            t = self._team(ref)
            return {"id": t.id, "name": t.name}

    # -- admin: people ---------------------------------------------------------------------

    def _put_collaborator(
        self, app: _App, user: _User, role: Any, permissions: Any
    ) -> _Collaborator:
        if role is not None and role not in COLLABORATOR_ROLES:
            raise ValueError(f"collaborator role must be one of {COLLABORATOR_ROLES} or null")
        perms = ["view"] if permissions is None else list(permissions)
        unknown = [p for p in perms if p not in PERMISSION_DESCRIPTIONS]
        if unknown:
            raise ValueError(f"unknown app permissions {unknown}")
        now = _timestamp(self._clock())
        existing = app.collaborators.get(user.id)
        collab = _Collaborator(
            id=existing.id if existing else _derived_id("collaborator", app.id, user.id),
            user_id=user.id,
            role=role,
            permissions=perms,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        app.collaborators[user.id] = collab
        return collab

    def _put_team_member(self, team: _Team, user: _User, role: Any) -> _TeamMember:
        if role not in TEAM_ROLES:
            raise ValueError(f"team role must be one of {TEAM_ROLES}")
        now = _timestamp(self._clock())
        existing = team.members.get(user.id)
        member = _TeamMember(
            id=existing.id if existing else _derived_id("team-member", team.id, user.id),
            user_id=user.id,
            role=role,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        team.members[user.id] = member
        return member

    def add_user(self, email: str, *, name: str = "", handle: str = "", id: str = "") -> str:
        """Create a Heroku user; returns the user id."""
        with self._lock:
            user_id = id or str(uuid.uuid4())
            if user_id in self._users:
                raise ValueError(f"user {user_id} exists")
            self._users[user_id] = _User(id=user_id, email=email, name=name, handle=handle)
            return user_id

    def set_user_email(self, user: str, email: str) -> None:
        """Heroku users may change their email at any time; their id stays."""
        with self._lock:
            self._user(user).email = email

    def add_collaborator(
        self,
        app: str,
        user: str,
        role: str | None = "collaborator",
        permissions: list[str] | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) a collaborator on an app; returns the collaborator JSON."""
        with self._lock:
            a = self._app(app)
            c = self._put_collaborator(a, self._user(user), role, permissions)
            return self._collaborator_json(a, c)

    def remove_collaborator(self, app: str, user: str) -> None:
        with self._lock:
            a, u = self._app(app), self._user(user)
            if a.collaborators.pop(u.id, None) is None:
                raise LookupError(f"{u.id} is not a collaborator of {a.name}")

    def set_collaborator_role(
        self, app: str, user: str, role: str | None, permissions: list[str] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            a, u = self._app(app), self._user(user)
            existing = a.collaborators.get(u.id)
            if existing is None:
                raise LookupError(f"{u.id} is not a collaborator of {a.name}")
            perms = existing.permissions if permissions is None else permissions
            return self._collaborator_json(a, self._put_collaborator(a, u, role, perms))

    def add_team_member(self, team: str, user: str, role: str = "member") -> dict[str, Any]:
        with self._lock:
            t = self._team(team)
            return self._member_json(self._put_team_member(t, self._user(user), role))

    def set_team_member_role(self, team: str, user: str, role: str) -> dict[str, Any]:
        with self._lock:
            t, u = self._team(team), self._user(user)
            if u.id not in t.members:
                raise LookupError(f"{u.id} is not a member of team {t.name}")
            return self._member_json(self._put_team_member(t, u, role))

    def remove_team_member(self, team: str, user: str) -> None:
        with self._lock:
            t, u = self._team(team), self._user(user)
            if t.members.pop(u.id, None) is None:
                raise LookupError(f"{u.id} is not a member of team {t.name}")

    # -- admin: OAuth ----------------------------------------------------------------------

    def create_grant(self, resource_id: str, *, ttl: float | None = None) -> str:
        """A fresh single-use grant code for an add-on, as provisioning would send it."""
        with self._lock:
            addon = self._addon(resource_id)
            code = str(uuid.uuid4())
            lifetime = self.grant_ttl if ttl is None else ttl
            self._grants[code] = _Grant(addon.id, self._clock() + lifetime)
            return code

    def expire_access_tokens(self, resource_id: str | None = None) -> int:
        """Make every (or one add-on's) access token expired; refresh tokens keep working."""
        with self._lock:
            past = self._clock() - 1
            n = 0
            for token in self._access_tokens.values():
                if resource_id is None or token.resource_id == resource_id:
                    token.expires_at = min(token.expires_at, past)
                    n += 1
            return n

    def revoke_tokens(self, resource_id: str) -> int:
        """Forget an add-on's access and refresh tokens (as deprovisioning does)."""
        with self._lock:
            rid = self._addon(resource_id).id
            before = len(self._access_tokens) + len(self._refresh_tokens)
            self._access_tokens = {
                k: v for k, v in self._access_tokens.items() if v.resource_id != rid
            }
            self._refresh_tokens = {k: v for k, v in self._refresh_tokens.items() if v != rid}
            return before - len(self._access_tokens) - len(self._refresh_tokens)

    def reset_rate_limits(self) -> None:
        with self._lock:
            self._rate_used.clear()

    # -- admin: faults and counters --------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        path_prefix: str = "",
        count: int | None = None,
        seconds: float = 0.0,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> str:
        """Inject a fault into requests whose path starts with ``path_prefix``.

        kinds: ``latency`` (wait ``seconds`` then answer normally), ``error`` (answer ``status``,
        default 503), ``rate_limit`` (429 with ``Ratelimit-Remaining: 0`` and ``Retry-After``
        when given), ``malformed`` (200 with a body that is not JSON), ``drop`` (close the
        connection without a reply). ``count`` limits how many requests it affects.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if kind == "error":
            status = 503 if status is None else int(status)
            if not 400 <= status <= 599:
                raise ValueError("an error fault's status must be 4xx or 5xx")
        with self._lock:
            fault = Fault(
                id=f"f{next(self._fault_ids)}",
                kind=kind,
                path_prefix=path_prefix,
                remaining=count,
                seconds=float(seconds),
                status=429 if kind == "rate_limit" else (status or 503),
                retry_after=retry_after,
            )
            self._faults.append(fault)
            return fault.id

    def clear_faults(self, fault_id: str | None = None) -> int:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if fault_id not in (None, f.id)]
            return before - len(self._faults)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def counters(self) -> dict[str, Any]:
        """Requests seen per ``"METHOD /path"`` and in total (admin calls are not counted)."""
        with self._lock:
            return {"total": sum(self._counts.values()), "requests": dict(self._counts)}

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """How many requests matched a method (any if None) and a path prefix."""
        with self._lock:
            total = 0
            for key, n in self._counts.items():
                m, _, path = key.partition(" ")
                if (method is None or m == method) and path.startswith(path_prefix):
                    total += n
            return total

    def reset_counters(self) -> None:
        with self._lock:
            self._counts.clear()

    def state(self) -> dict[str, Any]:
        """Everything the simulator knows, for the demo's curious reader (no tokens)."""
        with self._lock:
            return {
                "users": [
                    {"id": u.id, "email": u.email, "name": u.name, "handle": u.handle}
                    for u in self._users.values()
                ],
                "teams": [
                    {"id": t.id, "name": t.name, "members": [self._member_json(m) for m in tm]}
                    for t in self._teams.values()
                    for tm in [list(t.members.values())]
                ],
                "apps": [
                    {
                        **self._app_json(a),
                        "collaborators": [
                            self._collaborator_json(a, c) for c in a.collaborators.values()
                        ],
                    }
                    for a in self._apps.values()
                ],
                "addons": [self._addon_json(a) for a in self._addons.values()],
                "faults": [f.as_dict() for f in self._faults],
            }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Listen and serve in a background thread; returns the base URL."""
        if self._server is not None:
            return self.base_url
        sim = self

        class Handler(_Handler):
            simulator = sim

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="heroku-sim",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving, wake any request sleeping in a latency fault, close connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"

    def __enter__(self) -> HerokuSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- JSON shapes -------------------------------------------------------------------------

    def _addon_json(self, addon: _Addon) -> dict[str, Any]:
        app = self._apps[addon.app_id]
        return {
            "id": addon.id,
            "name": addon.name,
            "app": {"id": app.id, "name": app.name},
            "addon_service": {"id": _derived_id("service", "authz"), "name": "authz"},
            "plan": {"id": _derived_id("plan", addon.plan), "name": addon.plan},
            "state": addon.state,
            "config_vars": ["AUTHZ_URL"],
            "created_at": addon.created_at,
            "updated_at": addon.created_at,
            "web_url": None,
        }

    def _app_json(self, app: _App) -> dict[str, Any]:
        owner = self._users[app.owner_id]
        team = self._teams.get(app.team_id) if app.team_id else None
        team_json = {"id": team.id, "name": team.name} if team else None
        return {
            "id": app.id,
            "name": app.name,
            "owner": {"id": owner.id, "email": owner.email},
            "team": team_json,
            "organization": team_json,  # the older name of the same field
            "region": {"id": _derived_id("region", "us"), "name": "us"},
            "stack": {"id": _derived_id("stack", "heroku-24"), "name": "heroku-24"},
            "created_at": app.created_at,
            "updated_at": app.created_at,
            "web_url": f"https://{app.name}.herokuapp.com/",
        }

    def _collaborator_json(self, app: _App, c: _Collaborator) -> dict[str, Any]:
        user = self._users[c.user_id]
        return {
            "id": c.id,
            "role": c.role,
            "permissions": [
                {"name": p, "description": PERMISSION_DESCRIPTIONS[p]} for p in c.permissions
            ],
            "user": {"id": user.id, "email": user.email, "federated": user.federated},
            "app": {"id": app.id, "name": app.name},
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        }

    def _member_json(self, m: _TeamMember) -> dict[str, Any]:
        user = self._users[m.user_id]
        return {
            "id": m.id,
            "email": user.email,
            "role": m.role,
            "user": {"id": user.id, "email": user.email, "name": user.name},
            "two_factor_authentication": user.two_factor,
            "federated": user.federated,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }

    # -- request handling --------------------------------------------------------------------

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handle(self, h: _Handler) -> None:
        method = h.command
        path = urlsplit(h.path).path
        body = h.read_body()
        if path.startswith("/__sim/") or path == "/__sim":
            self._handle_admin(h, method, path, body)
            return
        with self._lock:
            self._counts[f"{method} {path}"] += 1
            delay, fault = self._take_faults(path)
        if delay > 0 and self._stopping.wait(delay):
            h.drop()
            return
        if fault is not None:
            self._apply_fault(h, fault)
            return
        headers: dict[str, str] = {}
        remaining = self.rate_limit
        try:
            if path == "/oauth/token":
                if method != "POST":
                    raise _Reply(405, "method_not_allowed", "Use POST.")
                status, doc = self._oauth(body)
            elif method != "GET":
                raise _Reply(404, "not_found", "Not found.")
            else:
                status, doc, headers, remaining = self._api(h, path)
        except _Reply as r:
            status, doc = r.status, {"id": r.error_id, "message": r.message}
            headers = r.headers
            remaining = self.rate_limit if r.remaining is None else r.remaining
        h.send_json(status, doc, remaining, headers)

    def _take_faults(self, path: str) -> tuple[float, Fault | None]:
        """Latency faults add up; the first other matching fault answers the request."""
        delay = 0.0
        chosen: Fault | None = None
        for fault in list(self._faults):
            if not path.startswith(fault.path_prefix):
                continue
            if fault.kind == "latency":
                delay += fault.seconds
            elif chosen is None:
                chosen = fault
            else:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        return delay, chosen

    def _apply_fault(self, h: _Handler, fault: Fault) -> None:
        if fault.kind == "drop":
            h.drop()
        elif fault.kind == "malformed":
            h.send_raw(200, b'{"id": "truncated', self.rate_limit, {})
        elif fault.kind == "rate_limit":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            doc = {"id": "rate_limit", "message": "Your account reached the API rate limit."}
            h.send_json(429, doc, 0, headers)
        else:
            doc = {"id": "unavailable", "message": "Simulated failure."}
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            h.send_json(fault.status, doc, self.rate_limit, headers)

    def _oauth(self, body: bytes) -> tuple[int, dict[str, Any]]:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

        def get(name: str) -> str:
            return form.get(name, [""])[0]

        grant_type = get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise _Reply(400, "bad_request", "grant_type must be authorization_code or refresh")
        if not hmac.compare_digest(get("client_secret").encode(), self.client_secret.encode()):
            raise _Reply(401, "unauthorized", "Invalid client credentials.")
        with self._lock:
            now = self._clock()
            if grant_type == "authorization_code":
                grant = self._grants.pop(get("code"), None)
                if grant is None or (grant.expires_at is not None and grant.expires_at <= now):
                    raise _Reply(401, "unauthorized", "Invalid, expired or already used grant.")
                resource_id = grant.resource_id
                refresh_token = "sim-refresh-" + secrets.token_urlsafe(24)
                self._refresh_tokens[refresh_token] = resource_id
            else:
                refresh_token = get("refresh_token")
                found = self._refresh_tokens.get(refresh_token)
                if not refresh_token or found is None:
                    raise _Reply(401, "unauthorized", "Invalid refresh token.")
                resource_id = found
            access_token = "sim-access-" + secrets.token_urlsafe(24)
            self._access_tokens[access_token] = _AccessToken(
                resource_id, now + self.access_token_ttl
            )
        return 200, {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": int(self.access_token_ttl),
            "token_type": "Bearer",
            # The add-on acts as its own Heroku user; derive a stable id for it.
            "user_id": _derived_id("addon-user", resource_id),
        }

    def _api(self, h: _Handler, path: str) -> tuple[int, Any, dict[str, str], int]:
        accept = (h.headers.get("Accept") or "").replace(" ", "").lower()
        if HEROKU_MEDIA_TYPE not in accept or "version=3" not in accept:
            raise _Reply(
                400,
                "bad_request",
                "Please specify a version along with Heroku's API MIME type. For example, "
                "`Accept: application/vnd.heroku+json; version=3`.",
            )
        auth = h.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        with self._lock:
            found = self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            if found is None or found.expires_at <= self._clock():
                raise _Reply(401, "unauthorized", "Invalid credentials provided.")
            spent = self._spend(found.resource_id)
            remaining = max(0, int(self.rate_limit - spent))
            if spent > self.rate_limit:
                raise _Reply(
                    429,
                    "rate_limit",
                    "Your account reached the API rate limit.",
                    remaining=0,
                    headers={"Retry-After": "60"},
                )
            token_app = self._apps[self._addons[found.resource_id].app_id]
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                status, doc, headers = self._route(h, parts, token_app)
            except LookupError as exc:
                raise _Reply(404, "not_found", str(exc).strip("'\"")) from None
            except _Reply as r:
                r.remaining = remaining if r.remaining is None else r.remaining
                raise
        return status, doc, headers, remaining

    def _spend(self, resource_id: str) -> float:
        """One call off the add-on's budget, which refills at ``rate_limit`` calls per hour."""
        now = self._clock()
        spent, since = self._rate_used.get(resource_id, (0.0, now))
        spent = max(0.0, spent - (now - since) * self.rate_limit / 3600.0) + 1
        self._rate_used[resource_id] = (spent, now)
        return spent

    def _route(
        self, h: _Handler, parts: list[str], token_app: _App
    ) -> tuple[int, Any, dict[str, str]]:
        def allowed(app: _App) -> None:
            if app.id != token_app.id:
                raise _Reply(403, "forbidden", "This add-on's token cannot read that app.")

        match parts:
            case ["addons", ref]:
                addon = self._addon(ref)
                allowed(self._apps[addon.app_id])
                return 200, self._addon_json(addon), {}
            case ["apps", ref]:
                app = self._app(ref)
                allowed(app)
                return 200, self._app_json(app), {}
            case ["apps", ref, "collaborators"]:
                app = self._app(ref)
                allowed(app)
                docs = [self._collaborator_json(app, c) for c in app.collaborators.values()]
                return self._paginate(h, docs)
            case ["teams", ref, "members"]:
                team = self._team(ref)
                if token_app.team_id != team.id:
                    raise _Reply(403, "forbidden", "This add-on's token cannot read that team.")
                return self._paginate(h, [self._member_json(m) for m in team.members.values()])
        raise _Reply(404, "not_found", "Not found.")

    def _paginate(self, h: _Handler, docs: list[dict[str, Any]]) -> tuple[int, Any, dict[str, str]]:
        """Heroku-style ranges: ``Range: id ..; max=N``, ``Next-Range: ]<last id>..; max=N``."""
        field_name, exclusive, start, end, limit, order = "id", False, "", "", self.page_size, "asc"
        raw = h.headers.get("Range")
        if raw:
            m = _RANGE_RE.match(raw)
            if m is None:
                raise _Reply(400, "bad_request", "Invalid Range header.")
            field_name, exclusive = m["field"], m["exclusive"] == "]"
            start, end = m["start"], m["end"]
            for param in m["params"].split(";"):
                key, _, value = param.strip().partition("=")
                if key == "max" and value.isdigit() and int(value) > 0:
                    limit = min(int(value), self.page_size)
                elif key == "order" and value in ("asc", "desc"):
                    order = value
                elif key:
                    raise _Reply(400, "bad_request", f"Invalid Range parameter {key!r}.")
        if not all(isinstance(d.get(field_name), str) for d in docs):
            raise _Reply(400, "bad_request", f"Cannot range over {field_name!r}.")
        items = sorted(docs, key=lambda d: d[field_name], reverse=order == "desc")

        def after_start(v: str) -> bool:
            if not start:
                return True
            if order == "asc":
                return v > start if exclusive else v >= start
            return v < start if exclusive else v <= start

        def before_end(v: str) -> bool:
            if not end:
                return True
            return v <= end if order == "asc" else v >= end

        selected = [d for d in items if after_start(d[field_name]) and before_end(d[field_name])]
        page, rest = selected[:limit], selected[limit:]
        headers = {"Accept-Ranges": "id"}
        suffix = f"; max={limit}" + (f", order={order}" if order != "asc" else "")
        if page:
            first, last = page[0][field_name], page[-1][field_name]
            headers["Content-Range"] = f"{field_name} {first}..{last}{suffix}"
        if rest:
            headers["Next-Range"] = f"{field_name} ]{page[-1][field_name]}..{end}{suffix}"
            return 206, page, headers
        return 200, page, headers

    # -- admin endpoints -------------------------------------------------------------------

    def _handle_admin(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        try:
            doc: Any = json.loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the request body must be a JSON object")
            status, reply = self._admin(method, [unquote(p) for p in path.split("/")[2:]], doc)
        except LookupError as exc:
            status, reply = 404, {"id": "not_found", "message": str(exc).strip("'\"")}
        except (ValueError, TypeError) as exc:
            status, reply = 400, {"id": "bad_request", "message": str(exc)}
        h.send_json(status, reply, self.rate_limit)

    def _admin(self, method: str, parts: list[str], doc: dict[str, Any]) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["state"]:
                return 200, self.state()
            case "POST", ["users"]:
                user_id = self.add_user(
                    doc["email"], name=doc.get("name", ""), handle=doc.get("handle", "")
                )
                return 201, self.user(user_id)
            case "PATCH", ["users", user]:
                self.set_user_email(user, doc["email"])
                return 200, self.user(user)
            case "POST", ["apps", app, "collaborators"]:
                reply = self.add_collaborator(
                    app, doc["user"], doc.get("role", "collaborator"), doc.get("permissions")
                )
                return 201, reply
            case "PATCH", ["apps", app, "collaborators", user]:
                return 200, self.set_collaborator_role(
                    app, user, doc.get("role"), doc.get("permissions")
                )
            case "DELETE", ["apps", app, "collaborators", user]:
                self.remove_collaborator(app, user)
                return 200, {"removed": True}
            case "POST", ["teams", team, "members"]:
                return 201, self.add_team_member(team, doc["user"], doc.get("role", "member"))
            case "PATCH", ["teams", team, "members", user]:
                return 200, self.set_team_member_role(team, user, doc["role"])
            case "DELETE", ["teams", team, "members", user]:
                self.remove_team_member(team, user)
                return 200, {"removed": True}
            case "POST", ["grants"]:
                rid = doc["resource_id"]
                return 201, {"code": self.create_grant(rid, ttl=doc.get("ttl")), "resource_id": rid}
            case "POST", ["tokens", "expire"]:
                return 200, {"expired": self.expire_access_tokens(doc.get("resource_id"))}
            case "POST", ["tokens", "revoke"]:
                return 200, {"revoked": self.revoke_tokens(doc["resource_id"])}
            case "GET", ["faults"]:
                return 200, self.faults()
            case "POST", ["faults"]:
                fault_id = self.add_fault(
                    doc["kind"],
                    path_prefix=doc.get("path_prefix", ""),
                    count=doc.get("count"),
                    seconds=float(doc.get("seconds", 0.0)),
                    status=doc.get("status"),
                    retry_after=doc.get("retry_after"),
                )
                return 201, {"id": fault_id}
            case "DELETE", ["faults"]:
                return 200, {"cleared": self.clear_faults()}
            case "DELETE", ["faults", fault_id]:
                return 200, {"cleared": self.clear_faults(fault_id)}
            case "GET", ["counters"]:
                return 200, self.counters()
            case "DELETE", ["counters"]:
                self.reset_counters()
                return 200, self.counters()
            case "DELETE", ["rate-limits"]:
                self.reset_rate_limits()
                return 200, {"reset": True}
        raise LookupError(f"no admin endpoint {method} /__sim/{'/'.join(parts)}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "heroku-sim/1"
    timeout = 30
    simulator: HerokuSimulator

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every keep-alive request.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.simulator._track(self.connection, True)

    def finish(self) -> None:
        self.simulator._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def _dispatch(self) -> None:
        try:
            self.simulator._handle(self)
        except Exception as exc:  # a simulator bug: say so rather than hang up
            doc = {"id": "internal_error", "message": f"simulator error: {type(exc).__name__}"}
            self.send_json(500, doc, self.simulator.rate_limit)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests and the demo read counters, not access logs."""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(
        self, status: int, doc: Any, remaining: int, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(doc).encode()
        self.send_raw(
            status, body, remaining, {"Content-Type": "application/json", **(headers or {})}
        )

    def send_raw(
        self, status: int, body: bytes, remaining: int, headers: Mapping[str, str]
    ) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Ratelimit-Remaining", str(remaining))
            self.send_header("Request-Id", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def drop(self) -> None:
        """Close the connection without a reply, as a crashed router would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------
# Command line


def serve_forever(host: str, port: int, fixture_path: str | None) -> None:
    """Run the simulator in the foreground until SIGINT or SIGTERM (``authz dev heroku-sim``)."""
    sim = HerokuSimulator(load_fixture(fixture_path), host=host, port=port)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        url = sim.start()
        out = sys.stdout
        print(f"Heroku simulator listening on {url}", file=out)
        print(f"  AUTHZ_HEROKU_API_URL={url} AUTHZ_HEROKU_ID_URL={url}", file=out)
        print(f"  OAuth client secret (simulator only): {sim.client_secret}", file=out)
        with sim._lock:
            grants = {g.resource_id: code for code, g in sim._grants.items()}
            for addon in sim._addons.values():
                app = sim._apps[addon.app_id]
                code = grants.get(addon.id, "-")
                print(
                    f"  add-on {addon.name} resource_id={addon.id} app={app.name} grant={code}",
                    file=out,
                )
        print("  admin: GET/POST/PATCH/DELETE /__sim/... ; Ctrl-C to stop", file=out, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
