"""The Platform API for Partners: routes, Heroku's refusals, ``Range`` pagination, rate limits.

Sources: Dev Center "Platform API Reference" (sections Clients/Accept, Ranges, Errors, Rate Limits,
as quoted in Heroku's blog post on client rate throttling and in the Errors table), "Platform API
for Partners", and the schema (``schema.json`` in heroku/heroku-go: ``team-member`` List declares
``"ranges": ["email"]``; other lists here declare none, so they range over ``id``).

- ``Accept`` must name ``application/vnd.heroku+json; version=3``, else 406 ``not_acceptable``.
- A missing, unknown or expired bearer token is 401 ``unauthorized``; a valid token asking for an
  add-on, app or team that is not its add-on's is 403 ``forbidden``; unknown ids are 404.
- ``Range: <field> [start]..[end][; max=N][, order=asc|desc]``: a field the list does not range
  over (``id`` on team members) or a malformed header is 416 ``requested_range_not_satisfiable``.
  Answers are 206 with ``Next-Range`` while more remain, 200 on the last page; ``Accept-Ranges``
  names the list's field; ``max`` is at most 1000, 200 when not given.
- Rate limits: "Each account has a pool of request tokens that can hold at most 4500 tokens. Each
  API call removes one token from the pool. Tokens are added to the account pool at a rate of
  roughly 75 per minute (or 4500 per hour), up to a maximum of 4500. If no tokens remain, further
  calls will return 429 Too Many Requests". ``RateLimit-Remaining`` is on every answer.

Choices made where Heroku's documentation is silent, written down here:

- The account is the partner's add-on service (its OAuth client): every add-on's token draws on
  one pool, as add-on partner tokens belong to the add-on service, not to the app's users.
- The pool refills continuously (``rate_limit`` per hour, pro rata), not in hourly steps. An
  answer's ``RateLimit-Remaining`` is the whole tokens left after that call.
- The ``Accept`` check comes first and costs nothing; an unauthenticated call costs nothing (it
  cannot be charged to an account); every authenticated call costs one token, refused or not.
  ``POST /oauth/token`` (the identity service) and ``GET /account/rate-limits`` cost nothing.
- A 429 carries ``Retry-After``: the seconds until one token is back (at least 1).
- A token reads its own add-on, that add-on's app, the app's collaborators and the app's team's
  members; another add-on of the same app is 403 like any other.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from authz.clock import Clock
from authz.devtools.heroku_sim.http import Reply
from authz.devtools.heroku_sim.webhooks import Webhooks
from authz.devtools.heroku_sim.world import App, World

HEROKU_MEDIA_TYPE = "application/vnd.heroku+json"
DEFAULT_PAGE = 200
MAX_PAGE = 1000
_ACCEPT_VERSION = re.compile(r"(?:^|;)\s*version\s*=\s*3\s*(?:;|$)")
_RANGE_RE = re.compile(
    r"^\s*(?P<field>[a-z_]+)\s+(?P<exclusive>\]?)(?P<start>[^;\s]*?)\s*\.\.\s*(?P<end>[^;\s]*)"
    r"\s*(?P<params>(?:;.*)?)$"
)


class AccountBudget:
    """One account's pool of request tokens, refilled continuously."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit = int(limit)
        self._clock = clock
        self._tokens = float(limit)
        self._since = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._since:
            self._tokens = min(self.limit, self._tokens + (now - self._since) * self.limit / 3600)
        self._since = now

    def remaining(self) -> int:
        self._refill()
        return int(self._tokens)

    def spend(self) -> int:
        """Take one token and return what is left, or raise 429."""
        self._refill()
        if self._tokens < 1:
            wait = math.ceil((1 - self._tokens) * 3600 / max(1, self.limit))
            raise Reply(
                429,
                "rate_limit",
                "Your account reached the API rate limit",
                headers={"Retry-After": str(max(1, wait)), "RateLimit-Remaining": "0"},
            )
        self._tokens -= 1
        return int(self._tokens)

    def reset(self, tokens: int | None = None) -> None:
        """Refill the pool (or set it to `tokens`, as if other calls had spent the rest)."""
        if tokens is not None and not 0 <= tokens <= self.limit:
            raise ValueError(f"remaining must be between 0 and the pool size {self.limit}")
        self._tokens = float(self.limit if tokens is None else tokens)
        self._since = self._clock()


class PlatformApi:
    """Route one Platform API request; the caller holds the world lock."""

    def __init__(
        self,
        world: World,
        authenticate: Callable[[str], str],
        budget: AccountBudget,
        webhooks: Webhooks,
        page_size: int,
    ) -> None:
        self.world = world
        self.authenticate = authenticate
        self.budget = budget
        self.webhooks = webhooks
        self.page_size = page_size

    def handle(
        self, method: str, parts: list[str], headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        accept = (headers.get("Accept") or "").lower()
        if HEROKU_MEDIA_TYPE not in accept or not _ACCEPT_VERSION.search(accept):
            raise Reply(
                406,
                "not_acceptable",
                "Please specify a version along with Heroku's API MIME type. For example, "
                "`Accept: application/vnd.heroku+json; version=3`.",
            )
        resource_id = self.authenticate(headers.get("Authorization") or "")
        if method == "GET" and parts == ["account", "rate-limits"]:
            return 200, {"remaining": self.budget.remaining()}, {}
        remaining = self.budget.spend()
        try:
            status, doc, extra = self._route(method, parts, headers, body, resource_id)
        except Reply as reply:
            reply.headers.setdefault("RateLimit-Remaining", str(remaining))
            raise
        except LookupError as exc:
            message = str(exc).strip("'\"")
            raise Reply(
                404, "not_found", message, headers={"RateLimit-Remaining": str(remaining)}
            ) from None
        return status, doc, {**extra, "RateLimit-Remaining": str(remaining)}

    def _route(
        self, method: str, parts: list[str], headers: Any, body: bytes, resource_id: str
    ) -> tuple[int, Any, dict[str, str]]:
        world = self.world
        own = world.addons[resource_id]
        own_app = world.apps[own.app_id]

        def allowed(app: App) -> None:
            if app.id != own_app.id:
                raise Reply(403, "forbidden", "This add-on's token cannot read that app.")

        def own_addon(ref: str) -> None:
            if world.addon(ref).id != own.id:
                raise Reply(403, "forbidden", "This add-on's token cannot read that add-on.")

        match method, parts:
            case "GET", ["addons", ref]:
                own_addon(ref)
                return 200, world.addon_json(own), {}
            case "GET", ["apps", ref]:
                app = world.app(ref)
                allowed(app)
                return 200, world.app_json(app), {}
            case "GET", ["apps", ref, "collaborators"]:
                app = world.app(ref)
                allowed(app)
                docs = [world.collaborator_json(app, c) for c in app.collaborators.values()]
                return self._paginate(headers, docs, "id")
            case "GET", ["teams", ref, "members"]:
                team = world.team(ref)
                if own_app.team_id != team.id:
                    raise Reply(403, "forbidden", "This add-on's token cannot read that team.")
                docs = [world.member_json(m) for m in team.members.values()]
                return self._paginate(headers, docs, "email")
            case "POST", ["addons", ref, "webhooks"]:
                own_addon(ref)
                doc, extra = self.webhooks.create(own, _json_body(body))
                return 201, doc, extra
            case "GET", ["addons", ref, "webhooks"]:
                own_addon(ref)
                return 200, self.webhooks.listing(own), {}
            case "GET", ["addons", ref, "webhooks", webhook_id]:
                own_addon(ref)
                return 200, self.webhooks.json(self.webhooks.find(own, webhook_id)), {}
            case "PATCH", ["addons", ref, "webhooks", webhook_id]:
                own_addon(ref)
                return 200, self.webhooks.update(own, webhook_id, _json_body(body)), {}
            case "DELETE", ["addons", ref, "webhooks", webhook_id]:
                own_addon(ref)
                return 200, self.webhooks.delete(own, webhook_id), {}
            case "GET", ["addons", ref, "webhook-deliveries", *rest]:
                own_addon(ref)
                found = [d for d in self.webhooks.deliveries.values() if d.event.addon_id == own.id]
                if rest:
                    match = [d for d in found if [d.id] == rest]
                    if not match:
                        raise Reply(404, "not_found", "Couldn't find that delivery.")
                    return 200, self.webhooks.delivery_json(match[0]), {}
                return 200, [self.webhooks.delivery_json(d) for d in found], {}
            case "GET", ["addons", ref, "webhook-events", *rest]:
                own_addon(ref)
                events = [e for e in self.webhooks.events.values() if e.addon_id == own.id]
                if rest:
                    match_e = [e for e in events if [e.id] == rest]
                    if not match_e:
                        raise Reply(404, "not_found", "Couldn't find that event.")
                    return 200, self.webhooks.event_json(match_e[0]), {}
                return 200, [self.webhooks.event_json(e) for e in events], {}
        raise Reply(404, "not_found", "Not found.")

    def _paginate(
        self, headers: Any, docs: list[dict[str, Any]], field_name: str
    ) -> tuple[int, Any, dict[str, str]]:
        """``Range: <field> ..; max=N``, answered with ``Next-Range: <field> ]<last>..; max=N``."""
        exclusive, start, end, order = False, "", "", "asc"
        limit = min(DEFAULT_PAGE, self.page_size)
        raw = headers.get("Range")
        if raw:
            m = _RANGE_RE.match(raw)
            if m is None:
                raise _range_error(f"Invalid Range header; use `{field_name} ..; max=1000`.")
            if m["field"] != field_name:
                raise _range_error(
                    f"This list cannot be ranged by {m['field']!r}; use `{field_name} ..`."
                )
            exclusive, start, end = m["exclusive"] == "]", m["start"], m["end"]
            for param in re.split(r"[;,]", m["params"]):
                key, _, value = param.strip().partition("=")
                if key == "max" and value.isdigit() and 0 < int(value) <= MAX_PAGE:
                    limit = min(int(value), self.page_size)
                elif key == "order" and value in ("asc", "desc"):
                    order = value
                elif key:
                    raise _range_error(f"Invalid Range parameter {param.strip()!r}.")
        items = sorted(docs, key=lambda d: str(d[field_name]), reverse=order == "desc")

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

        selected = [
            d for d in items if after_start(str(d[field_name])) and before_end(str(d[field_name]))
        ]
        page, rest = selected[:limit], selected[limit:]
        out = {"Accept-Ranges": field_name}
        suffix = f"; max={limit}" + (f", order={order}" if order != "asc" else "")
        if page:
            first, last = page[0][field_name], page[-1][field_name]
            out["Content-Range"] = f"{field_name} {first}..{last}{suffix}"
        if rest:
            out["Next-Range"] = f"{field_name} ]{page[-1][field_name]}..{end}{suffix}"
            return 206, page, out
        return 200, page, out


def _range_error(message: str) -> Reply:
    return Reply(416, "requested_range_not_satisfiable", message)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError:
        raise Reply(400, "bad_request", "The request body is not valid JSON.") from None
