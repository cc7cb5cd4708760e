"""Heroku's identity service and Platform API for Partners: OAuth tokens and app access lists.

One :class:`PlatformClient` serves every add-on; each call names the add-on's access token.
It follows Heroku's own recipe for an add-on's access list, in this order::

    GET /addons/{resource_id}        -> app {id, name}
    GET /apps/{app_id}               -> owner {id, email}, team {id, name} | null
    GET /apps/{app_id}/collaborators -> [{role, permissions, user {id, email}}]  (paginated)
    GET /teams/{team_id}/members     -> [{role, user {id, email}}]   (team apps only, paginated)

and returns an :class:`AccessList` keyed by Heroku user id (emails are display data only).

Sources: Dev Center "Platform API for Partners" and "Syncing User Access as an Ecosystem
Partner" (the recipe); the Platform API schema (``schema.json`` in heroku/heroku-go):
``collaborator`` ``{role, permissions [{name, description}], user {id, email, federated}}``
where ``role`` is the ``team.role`` enum (admin, collaborator, member, owner or null);
``team-member`` ``{role, email, user {id, email, name}, identity_provider, ...}`` whose List link
declares ``"ranges": ["email"]``, so team members page by ``Range: email ..; max=1000`` while
collaborators page by ``id``; Dev Center "Platform API Reference" for ``RateLimit-Remaining`` (a
pool of 4500 request tokens per account, refilled at about 75 a minute).

Choices made where Heroku's documentation is silent, written down here:

- A role that is null, not a string, or a word this module does not know grants nothing, and the
  rest of the list stands: a null role adds no role (the user is still listed, with their
  permissions), a lowercase word unknown here (``viewer``, a role Heroku may add) is kept as is
  (team roles prefixed ``team_``) so policies can see it but no rule grants it anything; anything
  else is dropped. A row without a usable ``user.id`` is skipped (it can match nobody).
- A team member's roles are prefixed ``team_`` (``team_admin``, ``team_member``...), so a policy
  can tell app roles from team roles. Whether a plain team member without an app entry may use
  the dashboard is a policy decision, not this module's.
- Permission names are kept as Heroku lists them (lowercase words only); what they imply for
  owners, admins and personal apps is worked out in facts/access.py (``authz.decide.access_fact``).
- Unknown fields are ignored; a missing or mistyped field the recipe itself needs (the add-on's
  app, the app's id and owner, a list that is not a list) is a ``bad_response`` (never a
  silently shorter list).
- ``RateLimit-Remaining: 0`` on a successful reply is honoured: the data of that reply is kept,
  but when the recipe needs another request the client stops with ``rate_limited`` rather than
  spending a call that Heroku would refuse. The lowest value seen during a fetch travels with the
  :class:`AccessList` (``ratelimit_remaining``) so the cache can stretch its TTL as the account's
  budget runs low.
- Error messages name the request (method and path, which hold only resource and app ids) and
  the HTTP status, never a token, a secret or a grant code; upstream error messages are not
  copied (only Heroku's short error ``id``).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final
from urllib.parse import quote

import httpx

from authz.clock import Clock, system_clock
from authz.errors import AuthzError, ErrorKind

__all__ = [
    "HEROKU_ACCEPT",
    "ROLE_ORDER",
    "AccessList",
    "AddonInfo",
    "AppMember",
    "OAuthTokens",
    "PlatformClient",
    "PlatformError",
    "WebhookSubscription",
]

HEROKU_ACCEPT: Final = "application/vnd.heroku+json; version=3"
ROLE_ORDER: Final = (
    "owner",
    "admin",
    "collaborator",
    "member",
    "team_owner",
    "team_admin",
    "team_member",
)
"""Roles from strongest to weakest; other roles (e.g. ``viewer``) sort after these."""

DEFAULT_RATE_LIMIT_WAIT: Final = 60.0
"""Seconds to wait after a 429 without Retry-After (Heroku refills its budget gradually)."""
_MAX_PAGES: Final = 100
_ERROR_ID = re.compile(r"^[a-z0-9_]{1,40}$")
_WORD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a role or permission name worth keeping
COLLABORATOR_RANGE: Final = "id ..; max=1000"
TEAM_MEMBER_RANGE: Final = "email ..; max=1000"  # schema: team-member List ranges ["email"]


class PlatformError(AuthzError):
    """A Platform API or identity call failed.

    ``failure`` is one of: ``unauthorized`` (401 or a refused grant/refresh), ``forbidden``
    (403), ``not_found`` (404), ``bad_request`` (other 4xx), ``rate_limited`` (429 or no calls
    left; ``retry_after`` says how long to wait), ``upstream_error`` (5xx), ``bad_response`` (not
    the JSON the recipe needs), ``unreachable`` (connection error or timeout), ``no_tokens`` (the
    add-on has no OAuth tokens stored), ``app_mismatch`` (the add-on belongs to another app).
    ``code`` is ``HEROKU_`` and the failure in capitals; ``kind`` follows from the failure
    (authz.errors). The message never holds a token, a secret or a grant code.
    """

    def __init__(
        self,
        failure: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{failure}: {message}")
        self.failure = failure
        self.code = f"HEROKU_{failure.upper()}"
        self.kind = _FAILURE_KINDS.get(failure, "unavailable")
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"PlatformError({self.failure!r}, {self.message!r}, status={self.status!r})"


_FAILURE_KINDS: Mapping[str, ErrorKind] = {
    # Heroku said no: sending the same again will not help.
    "unauthorized": "refused",
    "forbidden": "refused",
    "bad_request": "refused",
    "no_tokens": "refused",
    "app_mismatch": "refused",
    "not_found": "not_found",
    # Anything else (rate limits, 5xx, garbage, timeouts) may pass: "unavailable".
}


@dataclass(frozen=True)
class OAuthTokens:
    """One add-on's OAuth token pair. ``expires_at`` is Unix seconds; repr hides the tokens."""

    access_token: str
    refresh_token: str
    expires_at: float
    user_id: str = ""

    def __repr__(self) -> str:
        return (
            f"OAuthTokens(access_token=<hidden>, refresh_token=<hidden>, "
            f"expires_at={self.expires_at!r}, user_id={self.user_id!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class AppMember:
    """A Heroku user with some access to an app. ``email`` is for display only."""

    user_id: str
    email: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...] = ()
    team_role: str | None = None


@dataclass(frozen=True)
class AccessList:
    """Who has access to one app, keyed by Heroku user id, as fetched at ``fetched_at``."""

    app_id: str
    app_name: str
    team_id: str | None
    owner_id: str
    fetched_at: float
    members: Mapping[str, AppMember] = field(default_factory=lambda: MappingProxyType({}))
    ratelimit_remaining: int | None = None
    """The lowest ``RateLimit-Remaining`` Heroku reported while fetching (None: not reported)."""

    def member(self, user_id: str) -> AppMember | None:
        return self.members.get(user_id)


@dataclass(frozen=True)
class AddonInfo:
    """``GET /addons/{id}``: what Heroku says an add-on is now (schema definition ``add-on``)."""

    resource_id: str
    name: str
    app_id: str
    app_name: str
    plan: str
    """The plan's name as the schema gives it, ``service:plan`` (e.g. ``authz:basic``)."""
    state: str
    """``provisioning``, ``provisioned`` or ``deprovisioned``."""


@dataclass(frozen=True)
class WebhookSubscription:
    """An add-on webhook subscription as Heroku lists it (schema definition ``add-on-webhook``)."""

    webhook_id: str
    url: str
    include: tuple[str, ...]
    level: str


def _role_key(role: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


# --------------------------------------------------------------------------------------------
# JSON checking: every field the recipe needs is checked, by name, without echoing values.


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlatformError("bad_response", f"{what} is not a JSON object")
    return value


def _str(doc: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> str:
    value = doc.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or (not value and not optional):
        raise PlatformError("bad_response", f"{what}: field {key!r} is missing or not a string")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlatformError("bad_response", f"{what} is not a JSON list")
    return value


def _retry_after(response: httpx.Response, default: float) -> float:
    raw = response.headers.get("Retry-After", "")
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value >= 0 else default


def _remaining(response: httpx.Response) -> int | None:
    raw = response.headers.get("RateLimit-Remaining")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class _Sequence:
    """State of one multi-request recipe: stop before a call Heroku would refuse."""

    def __init__(self) -> None:
        self.exhausted = False
        self.remaining: int | None = None

    def saw(self, remaining: int | None) -> None:
        if remaining is None:
            return
        self.remaining = remaining if self.remaining is None else min(self.remaining, remaining)
        if remaining <= 0:
            self.exhausted = True


class PlatformClient:
    """Async client for Heroku's OAuth endpoint and the Platform API for Partners."""

    def __init__(
        self,
        api_url: str,
        id_url: str,
        client_secret: str,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock = system_clock,
        timeout: float = 5.0,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._id_url = id_url.rstrip("/")
        self._client_secret = client_secret
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False
        )
        self._clock = clock
        # For authz.metrics: calls by HTTP status ("unreachable" without an answer), and the
        # last RateLimit-Remaining Heroku sent (None until one is seen).
        self.calls: collections.Counter[str] = collections.Counter()
        self.ratelimit_remaining: int | None = None

    def __repr__(self) -> str:
        return f"PlatformClient(api_url={self._api_url!r}, id_url={self._id_url!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- OAuth -------------------------------------------------------------------------------

    async def exchange_grant(self, code: str) -> OAuthTokens:
        """Trade a provisioning ``oauth_grant.code`` for the add-on's token pair (single use)."""
        if not code:
            raise PlatformError("unauthorized", "no grant code given")
        return await self._token_request(
            {"grant_type": "authorization_code", "code": code}, "grant exchange"
        )

    async def refresh(self, refresh_token: str) -> OAuthTokens:
        """A new access token from the add-on's refresh token."""
        if not refresh_token:
            raise PlatformError("unauthorized", "no refresh token given")
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, "token refresh"
        )

    async def _token_request(self, form: dict[str, str], what: str) -> OAuthTokens:
        if not self._client_secret:
            raise PlatformError("unauthorized", f"{what}: no OAuth client secret configured")
        started = self._clock()
        url = f"{self._id_url}/oauth/token"
        data = {**form, "client_secret": self._client_secret}
        try:
            response = await self._http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            self.calls["unreachable"] += 1
            raise PlatformError("unreachable", f"{what}: {type(exc).__name__}") from None
        self.calls[str(response.status_code)] += 1
        if response.status_code in (400, 401, 403):
            # The identity service answers a bad, used or expired grant, a revoked refresh
            # token or a wrong client secret alike; none of them is worth retrying.
            raise PlatformError(
                "unauthorized",
                f"{what} refused (HTTP {response.status_code}{self._error_id(response)})",
                response.status_code,
            )
        self._raise_for_status(response, f"POST /oauth/token ({what})")
        doc = self._json(response, f"{what} reply")
        body = _obj(doc, f"{what} reply")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise PlatformError("bad_response", f"{what} reply: 'expires_in' is not a number")
        if expires_in <= 0:
            raise PlatformError("bad_response", f"{what} reply: 'expires_in' is not positive")
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise PlatformError("bad_response", f"{what} reply: token_type is not Bearer")
        return OAuthTokens(
            access_token=_str(body, "access_token", f"{what} reply"),
            refresh_token=_str(body, "refresh_token", f"{what} reply"),
            # Measured from before the request, so the token is never thought younger than it is.
            expires_at=started + float(expires_in),
            user_id=_str(body, "user_id", f"{what} reply", optional=True),
        )

    # -- access list -------------------------------------------------------------------------

    async def fetch_access_list(self, resource_id: str, access_token: str) -> AccessList:
        """Heroku's 4-step recipe for the add-on's app, following ``Next-Range`` pagination."""
        if not resource_id:
            raise PlatformError("not_found", "no resource id given")
        fetched_at = self._clock()
        seq = _Sequence()
        addon = await self._addon(resource_id, access_token, seq)
        app_id = addon.app_id
        app_path = f"/apps/{quote(app_id, safe='')}"

        app = _obj(await self._get(app_path, access_token, seq), "app")
        if _str(app, "id", "app") != app_id:
            raise PlatformError("bad_response", "app: id differs from the add-on's app id")
        app_name = _str(app, "name", "app", optional=True) or addon.app_name
        owner = _obj(app.get("owner"), "app 'owner'")
        owner_id = _str(owner, "id", "app 'owner'")
        team_doc = app.get("team")
        team_id: str | None = None
        if team_doc is not None:
            team_id = _str(_obj(team_doc, "app 'team'"), "id", "app 'team'")

        builder = _MembersBuilder()
        builder.add(owner_id, _str(owner, "email", "app 'owner'", optional=True), role="owner")

        path = f"{app_path}/collaborators"
        for item in await self._get_all(path, access_token, seq, COLLABORATOR_RANGE):
            row = _row(item)
            if row is None:
                continue
            entry, user_id, email = row
            role = _word(entry.get("role"))
            builder.add(user_id, email, role=role, permissions=_permissions(entry))

        if team_id is not None:
            team_path = f"/teams/{quote(team_id, safe='')}/members"
            members = await self._get_all(team_path, access_token, seq, TEAM_MEMBER_RANGE)
            for item in members:
                row = _row(item)
                if row is None:
                    continue
                entry, user_id, email = row
                team_role = _word(entry.get("role"))
                builder.add(
                    user_id,
                    email or _str(entry, "email", "team member", optional=True),
                    role=f"team_{team_role}" if team_role else None,
                    team_role=team_role,
                )

        return AccessList(
            app_id=app_id,
            app_name=app_name,
            team_id=team_id,
            owner_id=owner_id,
            fetched_at=fetched_at,
            members=MappingProxyType(builder.build()),
            ratelimit_remaining=seq.remaining,
        )

    # -- the add-on itself ---------------------------------------------------------------------

    async def addon_info(self, resource_id: str, access_token: str) -> AddonInfo:
        """``GET /addons/{id}``: the add-on's app, plan and state as Heroku has them now.

        This is how a partner learns an add-on's app: Heroku's provisioning call names none
        (Dev Center "Add-on Partner API Reference", "Platform API for Partners").
        """
        return await self._addon(resource_id, access_token, _Sequence())

    async def _addon(self, resource_id: str, access_token: str, seq: _Sequence) -> AddonInfo:
        if not resource_id:
            raise PlatformError("not_found", "no resource id given")
        doc = _obj(
            await self._get(f"/addons/{quote(resource_id, safe='')}", access_token, seq),
            "add-on",
        )
        app_ref = _obj(doc.get("app"), "add-on 'app'")
        plan = doc.get("plan")
        return AddonInfo(
            resource_id=_str(doc, "id", "add-on", optional=True) or resource_id,
            name=_str(doc, "name", "add-on", optional=True),
            app_id=_str(app_ref, "id", "add-on 'app'"),
            app_name=_str(app_ref, "name", "add-on 'app'", optional=True),
            plan=_str(plan, "name", "add-on 'plan'", optional=True)
            if isinstance(plan, dict)
            else "",
            state=_str(doc, "state", "add-on", optional=True),
        )

    # -- add-on webhooks ---------------------------------------------------------------------
    # heroku/webhooks-docs ("Using Webhooks as an Add-on Partner"): subscriptions live under
    # /addons/{id}/webhooks and are managed with the add-on's own token; the schema's
    # ``add-on-webhook`` Create takes exactly {include, level, url, secret, authorization}.

    async def create_webhook(
        self,
        resource_id: str,
        access_token: str,
        *,
        include: tuple[str, ...],
        level: str,
        url: str,
        secret: str,
    ) -> WebhookSubscription:
        """Subscribe ``url`` to the add-on's events, signed with ``secret``."""
        body = {"include": list(include), "level": level, "url": url, "secret": secret}
        doc = await self._call("POST", self._webhooks_path(resource_id), access_token, body)
        return _subscription(doc)

    async def list_webhooks(self, resource_id: str, access_token: str) -> list[WebhookSubscription]:
        path = self._webhooks_path(resource_id)
        return [
            _subscription(item)
            for item in _list(await self._call("GET", path, access_token), f"GET {path} reply")
        ]

    async def update_webhook(
        self,
        resource_id: str,
        access_token: str,
        webhook_id: str,
        *,
        include: tuple[str, ...],
        level: str,
        secret: str,
    ) -> WebhookSubscription:
        """Take over an existing subscription: new events, level and secret, same URL."""
        path = f"{self._webhooks_path(resource_id)}/{quote(webhook_id, safe='')}"
        body = {"include": list(include), "level": level, "secret": secret}
        return _subscription(await self._call("PATCH", path, access_token, body))

    async def delete_webhook(self, resource_id: str, access_token: str, webhook_id: str) -> bool:
        """Unsubscribe; False when Heroku no longer has the subscription (404)."""
        path = f"{self._webhooks_path(resource_id)}/{quote(webhook_id, safe='')}"
        try:
            await self._call("DELETE", path, access_token)
        except PlatformError as exc:
            if exc.failure == "not_found":
                return False
            raise
        return True

    @staticmethod
    def _webhooks_path(resource_id: str) -> str:
        if not resource_id:
            raise PlatformError("not_found", "no resource id given")
        return f"/addons/{quote(resource_id, safe='')}/webhooks"

    # -- HTTP --------------------------------------------------------------------------------

    async def _get(self, path: str, access_token: str, seq: _Sequence) -> Any:
        response = await self._send(path, access_token, seq, None)
        if response.status_code != 200:
            raise PlatformError(
                "bad_response", f"GET {path}: unexpected HTTP {response.status_code}"
            )
        return self._json(response, f"GET {path}")

    async def _get_all(
        self, path: str, access_token: str, seq: _Sequence, first_range: str
    ) -> list[Any]:
        """Every page of a list endpoint: ask for ``max=1000``, then echo ``Next-Range``."""
        items: list[Any] = []
        range_header: str | None = first_range
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            response = await self._send(path, access_token, seq, range_header)
            items.extend(_list(self._json(response, f"GET {path}"), f"GET {path} reply"))
            if response.status_code == 200:
                return items
            if response.status_code != 206:
                raise PlatformError(
                    "bad_response", f"GET {path}: unexpected HTTP {response.status_code}"
                )
            next_range = response.headers.get("Next-Range")
            if not next_range:
                raise PlatformError("bad_response", f"GET {path}: 206 without Next-Range")
            if next_range in seen:
                raise PlatformError("bad_response", f"GET {path}: Next-Range repeats itself")
            seen.add(next_range)
            range_header = next_range
        raise PlatformError("bad_response", f"GET {path}: more than {_MAX_PAGES} pages")

    async def _call(
        self, method: str, path: str, access_token: str, body: dict[str, Any] | None = None
    ) -> Any:
        """One request outside the access-list recipe; its JSON reply (None when empty)."""
        response = await self._send(path, access_token, _Sequence(), None, method, body)
        if not response.content:
            return None
        return self._json(response, f"{method} {path}")

    async def _send(
        self,
        path: str,
        access_token: str,
        seq: _Sequence,
        range_header: str | None,
        method: str = "GET",
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        if seq.exhausted:
            raise PlatformError(
                "rate_limited",
                f"{method} {path}: no API calls left (RateLimit-Remaining: 0)",
                retry_after=DEFAULT_RATE_LIMIT_WAIT,
            )
        headers = {"Accept": HEROKU_ACCEPT, "Authorization": f"Bearer {access_token}"}
        if range_header:
            headers["Range"] = range_header
        try:
            response = await self._http.request(
                method, f"{self._api_url}{path}", headers=headers, json=body
            )
        except httpx.HTTPError as exc:
            self.calls["unreachable"] += 1
            raise PlatformError("unreachable", f"{method} {path}: {type(exc).__name__}") from None
        self.calls[str(response.status_code)] += 1
        remaining = _remaining(response)
        if remaining is not None:
            self.ratelimit_remaining = remaining
        seq.saw(remaining)
        self._raise_for_status(response, f"{method} {path}")
        return response

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400 and not 300 <= status < 400:
            return
        detail = f"{what}: HTTP {status}{self._error_id(response)}"
        if status == 429:
            raise PlatformError(
                "rate_limited",
                detail,
                status,
                retry_after=_retry_after(response, DEFAULT_RATE_LIMIT_WAIT),
            )
        if status >= 500:
            raise PlatformError(
                "upstream_error", detail, status, retry_after=_retry_after(response, 0.0) or None
            )
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status)
        if kind is None:
            kind = "bad_response" if status < 400 else "bad_request"
        raise PlatformError(kind, detail, status)

    @staticmethod
    def _error_id(response: httpx.Response) -> str:
        """Heroku's short error id (e.g. ``unauthorized``) when the body has a sane one."""
        try:
            doc = response.json()
        except ValueError:
            return ""
        error_id = doc.get("id") if isinstance(doc, dict) else None
        if isinstance(error_id, str) and _ERROR_ID.match(error_id):
            return f", {error_id}"
        return ""

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PlatformError(
                "bad_response", f"{what}: body is not valid JSON", response.status_code
            ) from None


def _subscription(doc: Any) -> WebhookSubscription:
    body = _obj(doc, "add-on webhook")
    include = body.get("include")
    return WebhookSubscription(
        webhook_id=_str(body, "id", "add-on webhook"),
        url=_str(body, "url", "add-on webhook", optional=True),
        include=tuple(i for i in include if isinstance(i, str))
        if isinstance(include, list)
        else (),
        level=_str(body, "level", "add-on webhook", optional=True),
    )


def _word(value: Any) -> str | None:
    """A role or permission name worth keeping: a lowercase word; anything else is None."""
    return value if isinstance(value, str) and _WORD.match(value) else None


def _row(item: Any) -> tuple[dict[str, Any], str, str] | None:
    """A list row with a usable ``user.id``, else None (such a row can grant nobody anything)."""
    if not isinstance(item, dict) or not isinstance(item.get("user"), dict):
        return None
    user = item["user"]
    user_id = user.get("id")
    if not isinstance(user_id, str) or not user_id:
        return None
    email = user.get("email")
    return item, user_id, email if isinstance(email, str) else ""


def _permissions(entry: Mapping[str, Any]) -> list[str]:
    """Permission names from ``[{name, description}]`` (bare names tolerated, junk dropped)."""
    raw = entry.get("permissions")
    names = []
    for perm in raw if isinstance(raw, list) else []:
        name = _word(perm.get("name") if isinstance(perm, dict) else perm)
        if name is not None:
            names.append(name)
    return names


class _MembersBuilder:
    """Merges the owner, collaborators and team members into one entry per user id."""

    def __init__(self) -> None:
        self._emails: dict[str, str] = {}
        self._roles: dict[str, set[str]] = {}
        self._permissions: dict[str, set[str]] = {}
        self._team_roles: dict[str, str] = {}

    def add(
        self,
        user_id: str,
        email: str,
        *,
        role: str | None,
        permissions: list[str] | None = None,
        team_role: str | None = None,
    ) -> None:
        if email or user_id not in self._emails:
            self._emails[user_id] = email
        roles = self._roles.setdefault(user_id, set())
        if role:
            roles.add(role)
        self._permissions.setdefault(user_id, set()).update(permissions or ())
        if team_role is not None:
            self._team_roles[user_id] = team_role

    def build(self) -> dict[str, AppMember]:
        return {
            user_id: AppMember(
                user_id=user_id,
                email=self._emails[user_id],
                roles=tuple(sorted(roles, key=_role_key)),
                permissions=tuple(sorted(self._permissions[user_id])),
                team_role=self._team_roles.get(user_id),
            )
            for user_id, roles in self._roles.items()
        }
