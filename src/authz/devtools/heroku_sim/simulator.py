"""``HerokuSimulator``: the world, OAuth, the Platform API, webhooks, Heroku-as-caller and the
admin API behind one base URL on 127.0.0.1, served from a background thread."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from authz.clock import Clock, system_clock
from authz.devtools.heroku_sim.admin import admin
from authz.devtools.heroku_sim.api import MAX_PAGE, AccountBudget, PlatformApi
from authz.devtools.heroku_sim.faults import Fault, Faults
from authz.devtools.heroku_sim.fixture import FixtureError, populate
from authz.devtools.heroku_sim.http import Handler, Reply, Server
from authz.devtools.heroku_sim.oauth import OAuth
from authz.devtools.heroku_sim.partner import Manifest, Partner
from authz.devtools.heroku_sim.webhooks import Webhooks
from authz.devtools.heroku_sim.world import User, World


class HerokuSimulator:
    """Heroku identity + Platform API for Partners on 127.0.0.1, in a background thread."""

    def __init__(
        self,
        fixture: Mapping[str, Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_ttl: float = 28800,
        page_size: int = MAX_PAGE,
        rate_limit: int = 4500,
        client_secret: str | None = None,
        grant_ttl: float = 300.0,
        clock: Clock = system_clock,
        webhook_retry_base: float = 1.0,
        webhook_retry_cap: float = 3600.0,
        webhook_max_attempts: int = 180,
        webhook_timeout: float = 10.0,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if rate_limit < 1:
            raise ValueError("rate_limit must be at least 1")
        self.page_size = min(int(page_size), MAX_PAGE)
        self.rate_limit = int(rate_limit)
        self._clock = clock
        oauth_cfg = fixture.get("oauth") or {}
        secret = client_secret if client_secret is not None else oauth_cfg.get("client_secret")
        if not isinstance(secret, str) or not secret:
            raise FixtureError("fixture: oauth.client_secret is missing (or pass client_secret=)")
        manifest_cfg = fixture.get("manifest") or {}
        if not isinstance(manifest_cfg, Mapping):
            raise FixtureError("fixture: 'manifest' must be a mapping")
        self.world = World(clock, addon_service=str(manifest_cfg.get("id") or "authz"))
        self._lock = self.world.lock
        self._oauth = OAuth(secret, clock, access_token_ttl, grant_ttl)
        self._budget = AccountBudget(self.rate_limit, clock)
        self._faults = Faults()
        self._counts: Counter[str] = Counter()
        self._webhooks = Webhooks(
            self.world,
            retry_base=webhook_retry_base,
            retry_cap=webhook_retry_cap,
            max_attempts=webhook_max_attempts,
            timeout=webhook_timeout,
        )
        self._api = PlatformApi(
            self.world, self._oauth.authenticate, self._budget, self._webhooks, self.page_size
        )
        self._partner = Partner(
            self.world,
            self._oauth,
            self._webhooks,
            Manifest(
                id=self.world.addon_service,
                password=str(manifest_cfg.get("password") or "sim-manifest-password"),
                sso_salt=str(manifest_cfg.get("sso_salt") or "sim-sso-salt"),
                base_url=manifest_cfg.get("base_url"),
                sso_url=manifest_cfg.get("sso_url"),
            ),
            lambda: self.base_url,
        )
        self._server = Server(host, port, self._dispatch)
        populate(self.world, fixture)
        self._load_grants(fixture)

    def _load_grants(self, fixture: Mapping[str, Any]) -> None:
        for entry in fixture.get("grants") or []:
            code = entry.get("code") if isinstance(entry, Mapping) else None
            if not isinstance(code, str) or not code:
                raise FixtureError("fixture: a grant needs a non-empty string 'code'")
            try:
                addon = self.world.addon(entry.get("addon"))
            except LookupError as exc:
                raise FixtureError(f"fixture: {str(exc).strip(chr(39))}") from None
            expires_in = entry.get("expires_in")
            self._oauth.create_grant(
                addon.id, ttl=None if expires_in is None else float(expires_in), code=code
            )
            if expires_in is None:
                self._oauth.grants[code].expires_at = None  # fixture grants wait for the demo

    # -- reads -------------------------------------------------------------------------------

    @property
    def client_secret(self) -> str:
        return self._oauth.client_secret

    @property
    def access_token_ttl(self) -> float:
        return self._oauth.access_token_ttl

    @property
    def grant_ttl(self) -> float:
        return self._oauth.grant_ttl

    @property
    def sso_salt(self) -> str:
        return self._partner.manifest.sso_salt

    def user(self, ref: str) -> dict[str, Any]:
        """A user by id or fixture handle, as ``{id, email, name, handle}``."""
        with self._lock:
            u = self.world.user(ref)
            return {"id": u.id, "email": u.email, "name": u.name, "handle": u.handle}

    def app(self, ref: str) -> dict[str, Any]:
        """An app by id or name, in the Platform API's shape."""
        with self._lock:
            return self.world.app_json(self.world.app(ref))

    def addon(self, ref: str) -> dict[str, Any]:
        """An add-on by resource id or name, in the Platform API's shape."""
        with self._lock:
            return self.world.addon_json(self.world.addon(ref))

    def team(self, ref: str) -> dict[str, Any]:
        with self._lock:
            t = self.world.team(ref)
            return {"id": t.id, "name": t.name}

    def state(self) -> dict[str, Any]:
        """Everything the simulator knows, for the demo's curious reader (no tokens)."""
        w = self.world
        with self._lock:
            return {
                "users": [
                    {"id": u.id, "email": u.email, "name": u.name, "handle": u.handle}
                    for u in w.users.values()
                ],
                "teams": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "members": [w.member_json(m) for m in t.members.values()],
                    }
                    for t in w.teams.values()
                ],
                "apps": [
                    {
                        **w.app_json(a),
                        "collaborators": [
                            w.collaborator_json(a, c) for c in a.collaborators.values()
                        ],
                    }
                    for a in w.apps.values()
                ],
                "addons": [w.addon_json(a) for a in w.addons.values()],
                "faults": self._faults.list(),
                "manifest": self._partner.manifest.public(),
            }

    # -- admin: people and apps --------------------------------------------------------------

    def add_user(self, email: str, *, name: str = "", handle: str = "", id: str = "") -> str:
        """Create a Heroku user; returns the user id."""
        with self._lock:
            user_id = id or str(uuid.uuid4())
            self.world.add_user(User(id=user_id, email=email, name=name, handle=handle))
            return user_id

    def set_user_email(self, user: str, email: str) -> None:
        """Heroku users may change their email at any time; their id stays."""
        with self._lock:
            self.world.user(user).email = email

    def update_app(
        self, app: str, *, name: str | None = None, owner: str | None = None
    ) -> dict[str, Any]:
        """Rename and/or transfer an app (announced to ``api:app`` webhook subscribers)."""
        with self._lock:
            a = self.world.app(app)
            new_owner = self.world.user(owner) if owner is not None else None
            self.world.update_app(a, name=name, owner=new_owner)
            return self.world.app_json(a)

    def add_collaborator(
        self,
        app: str,
        user: str,
        role: str | None = "collaborator",
        permissions: list[str] | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) a collaborator on an app; returns the collaborator JSON."""
        with self._lock:
            a = self.world.app(app)
            c = self.world.put_collaborator(a, self.world.user(user), role, permissions)
            return self.world.collaborator_json(a, c)

    def remove_collaborator(self, app: str, user: str) -> None:
        with self._lock:
            self.world.remove_collaborator(self.world.app(app), self.world.user(user))

    def set_collaborator_role(
        self, app: str, user: str, role: str | None, permissions: list[str] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            a, u = self.world.app(app), self.world.user(user)
            existing = a.collaborators.get(u.id)
            if existing is None:
                raise LookupError(f"{u.id} is not a collaborator of {a.name}")
            perms = existing.permissions if permissions is None else permissions
            c = self.world.put_collaborator(a, u, role, perms)
            return self.world.collaborator_json(a, c)

    def add_team_member(
        self,
        team: str,
        user: str,
        role: str | None = "member",
        identity_provider: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            t = self.world.team(team)
            m = self.world.put_team_member(t, self.world.user(user), role, identity_provider)
            return self.world.member_json(m)

    def set_team_member_role(
        self,
        team: str,
        user: str,
        role: str | None,
        identity_provider: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            t, u = self.world.team(team), self.world.user(user)
            if u.id not in t.members:
                raise LookupError(f"{u.id} is not a member of team {t.name}")
            return self.world.member_json(self.world.put_team_member(t, u, role, identity_provider))

    def remove_team_member(self, team: str, user: str) -> None:
        with self._lock:
            t, u = self.world.team(team), self.world.user(user)
            if t.members.pop(u.id, None) is None:
                raise LookupError(f"{u.id} is not a member of team {t.name}")

    # -- admin: OAuth and rate limits --------------------------------------------------------

    def create_grant(self, resource_id: str, *, ttl: float | None = None) -> str:
        """A fresh single-use grant code for an add-on, as provisioning would send it."""
        with self._lock:
            return self._oauth.create_grant(self.world.addon(resource_id).id, ttl)

    def expire_access_tokens(self, resource_id: str | None = None) -> int:
        """Make every (or one add-on's) access token expired; refresh tokens keep working."""
        with self._lock:
            return self._oauth.expire_access_tokens(resource_id)

    def revoke_tokens(self, resource_id: str) -> int:
        """Forget an add-on's grants, access and refresh tokens (as deprovisioning does)."""
        with self._lock:
            return self._oauth.revoke(self.world.addon(resource_id).id)

    def issued_tokens(self) -> dict[str, list[str]]:
        """Every live access and refresh token (tests check that none leaks anywhere)."""
        with self._lock:
            return {
                "access": list(self._oauth.access_tokens),
                "refresh": list(self._oauth.refresh_tokens),
            }

    def webhook_secrets(self) -> list[str]:
        """The signing secret of every webhook subscription (tests check that none leaks)."""
        with self._lock:
            return [sub.secret for sub in self._webhooks.subscriptions.values()]

    def rate_limit_remaining(self) -> int:
        """Request tokens left in the add-on service's one pool."""
        with self._lock:
            return self._budget.remaining()

    def reset_rate_limits(self, remaining: int | None = None) -> None:
        """Refill the account's pool, or leave `remaining` tokens in it."""
        with self._lock:
            self._budget.reset(remaining)

    # -- admin: Heroku calling the partner ---------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        with self._lock:
            return self._partner.manifest.public()

    def set_manifest(
        self, *, base_url: str | None = None, sso_url: str | None = None
    ) -> dict[str, Any]:
        """Point Heroku's partner calls (``base_url``) and the SSO button (``sso_url``)."""
        with self._lock:
            if base_url is not None:
                self._partner.manifest.base_url = base_url or None
            if sso_url is not None:
                self._partner.manifest.sso_url = sso_url or None
            return self._partner.manifest.public()

    def provision(self, app: str, plan: str, **kwargs: Any) -> dict[str, Any]:
        """Heroku's v3 provisioning call for a new add-on on `app` (see partner.py)."""
        return self._partner.provision(app, plan, **kwargs)

    def resend_provisioning(self, addon: str, *, base_url: str | None = None) -> dict[str, Any]:
        return self._partner.resend_provisioning(addon, base_url)

    def change_plan(
        self, addon: str, plan: str, *, base_url: str | None = None, notify: bool = True
    ) -> dict[str, Any]:
        """``PUT {base_url}/{uuid}`` to the partner, then the plan changes (``api:addon``)."""
        return self._partner.change_plan(addon, plan, base_url, notify=notify)

    def deprovision(
        self, addon: str, *, base_url: str | None = None, notify: bool = True
    ) -> dict[str, Any]:
        """``DELETE {base_url}/{uuid}`` to the partner, then tokens and webhooks go."""
        return self._partner.deprovision(addon, base_url, notify=notify)

    def fixture_grants(self) -> dict[str, str]:
        """Resource id -> an unused grant code that never expires (the fixture's, for the demo)."""
        with self._lock:
            return {
                g.resource_id: code
                for code, g in self._oauth.grants.items()
                if g.expires_at is None
            }

    def provisioning_request(self, addon: str) -> dict[str, Any]:
        """The body of the provisioning call sent for `addon`."""
        with self._lock:
            return dict(self._partner.bodies[self.world.addon(addon).id])

    def sso_form(self, addon: str, user: str) -> dict[str, str]:
        return self._partner.sso_form(addon, user)

    def sso_page(self, addon: str, user: str, *, sso_url: str | None = None) -> str:
        return self._partner.sso_page(addon, user, sso_url)

    # -- admin: webhooks ---------------------------------------------------------------------

    def webhook_state(self) -> dict[str, Any]:
        """Subscriptions (without secrets) and deliveries, for tests and the curious."""
        hooks = self._webhooks
        with self._lock:
            return {
                "subscriptions": [hooks.json(s) for s in hooks.subscriptions.values()],
                "deliveries": [hooks.delivery_json(d) for d in hooks.deliveries.values()],
                "pending": hooks.pending(),
            }

    def wait_for_deliveries(self, timeout: float = 5.0) -> bool:
        """Wait (real time) until no delivery waits for an attempt; True if all were made."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self._webhooks.pending() == 0:
                    return True
            time.sleep(0.01)
        return False

    # -- admin: faults and counters ----------------------------------------------------------

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
        default 503), ``rate_limit`` (429 with ``RateLimit-Remaining: 0`` and ``Retry-After``
        when given), ``malformed`` (200 with a body that is not JSON), ``drop`` (close the
        connection without a reply). ``count`` limits how many requests it affects.
        """
        return self._faults.add(
            kind,
            path_prefix=path_prefix,
            count=count,
            seconds=seconds,
            status=status,
            retry_after=retry_after,
        )

    def clear_faults(self, fault_id: str | None = None) -> int:
        return self._faults.clear(fault_id)

    def faults(self) -> list[dict[str, Any]]:
        return self._faults.list()

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

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Listen and serve in a background thread; returns the base URL."""
        self._server.start()
        self._webhooks.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving, wake any request sleeping in a latency fault, close connections."""
        self._stopping = True
        self._webhooks.stop()
        self._server.stop()

    @property
    def base_url(self) -> str:
        return self._server.base_url

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

    # -- request handling --------------------------------------------------------------------

    _stopping = False

    def _dispatch(self, h: Handler) -> None:
        method = h.command
        split = urlsplit(h.path)
        path = split.path
        body = h.read_body()
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "__sim":
            self._handle_admin(h, method, parts[1:], body, split.query)
            return
        with self._lock:
            self._counts[f"{method} {path}"] += 1
        delay, fault = self._faults.take(path)
        if delay > 0 and self._sleep(delay):
            h.drop()
            return
        if fault is not None:
            self._apply_fault(h, fault)
            return
        headers: dict[str, str] = {}
        try:
            with self._lock:
                if path == "/oauth/token":
                    if method != "POST":
                        raise Reply(405, "method_not_allowed", "Use POST.")
                    status, doc = 200, self._oauth.token_endpoint(body)
                else:
                    status, doc, headers = self._api.handle(method, parts, h.headers, body)
        except Reply as r:
            status, doc, headers = r.status, r.document(), r.headers
        if "RateLimit-Remaining" not in headers:
            with self._lock:
                headers["RateLimit-Remaining"] = str(self._budget.remaining())
        h.send_json(status, doc, headers)

    def _sleep(self, seconds: float) -> bool:
        """Sleep in small steps; True if the simulator stopped meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self._server.running:
                return True
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return not self._server.running

    def _apply_fault(self, h: Handler, fault: Fault) -> None:
        remaining = {"RateLimit-Remaining": str(self.rate_limit_remaining())}
        retry = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        if fault.kind == "drop":
            h.drop()
        elif fault.kind == "malformed":
            h.send_raw(200, b'{"id": "truncated', remaining)
        elif fault.kind == "rate_limit":
            doc = {"id": "rate_limit", "message": "Your account reached the API rate limit"}
            h.send_json(429, doc, {**retry, "RateLimit-Remaining": "0"})
        else:
            doc = {"id": "unavailable", "message": "Simulated failure."}
            h.send_json(fault.status, doc, {**remaining, **retry})

    def _handle_admin(
        self, h: Handler, method: str, parts: list[str], body: bytes, query: str
    ) -> None:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            doc: Any = json.loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the request body must be a JSON object")
            status, reply = admin(self, method, parts, doc, params)
        except KeyError as exc:  # a LookupError too: a missing field, not a missing thing
            status, reply = 400, {"id": "bad_request", "message": f"missing field {exc}"}
        except LookupError as exc:
            status, reply = 404, {"id": "not_found", "message": str(exc).strip("'\"")}
        except (ValueError, TypeError) as exc:
            status, reply = 400, {"id": "bad_request", "message": str(exc)}
        if isinstance(reply, str):
            h.send_raw(status, reply.encode(), {"Content-Type": "text/html; charset=utf-8"})
        else:
            h.send_json(status, reply)
