"""A reference partner dashboard for a Heroku add-on, wired to authz.

What a partner copies (see README.md beside this file):

- ``POST /heroku/sso`` is the add-on's ``sso_url``. The browser arrives with Heroku's SSO form;
  the form goes, unchanged, to authz (``SessionService.ExchangeSso``), which checks the tokens, the
  timestamp window, replays and the user's current role on the app. Only the session token authz
  returns is kept, in an HttpOnly, SameSite=Lax cookie (Secure, and ``__Host-``, over TLS).
- ``GET /addons/{resource_id}`` asks authz once which of the dashboard's functions this session
  may use (``ListAllowedActions``) and renders only those. A session that may not even view the
  dashboard (expired, revoked, add-on deprovisioned, user no longer on the app) is sent back to
  Heroku to open the add-on again.
- Every change is a form POST that asks authz (``Check``) first; a DENY gets a page with the
  decision id, which names the decision's audit record (``authz audit show <id>``).

It uses the public Python client (``authz.client``) and nothing else of authz.

Choices, written down (Heroku's current "Add-on Single Sign-On" article and the ownership
guidelines):

- ``nav-data`` is not rendered: it is deprecated, and the current article no longer asks partners
  to inject Heroku's navigation header (its 2014 version did). The field still reaches authz with
  the rest of the form.
- SameSite=Lax, not Strict: Heroku's form is a cross-site POST followed by our redirect, and
  browsers do not send Strict cookies along such a chain, so Strict would log nobody in. Lax
  cookies are not sent on cross-site POSTs, and every POST here also checks ``Origin``.
- No "log out", password, username, email, deactivate, add-user, roles or billing function is
  ever shown to a Heroku SSO user (Heroku manages those); their handlers exist for the partner's
  other customers and still ask authz, and refuse SSO users even if a policy allowed it.
- The email and app name from the form are display data only, held in memory with a hash of the
  session token; no privilege is ever derived from them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from authz.client import (
    DEFAULT_TARGET,
    AllowedActions,
    AsyncAuthzClient,
    AuthzCallError,
    AuthzInvalid,
    AuthzNotFound,
    AuthzRefused,
    Decision,
    Resource,
    Tls,
)

log = logging.getLogger("heroku_dashboard")

HERE = Path(__file__).resolve().parent
VIEW = "dashboard.view"
SSO_PATH = "/heroku/sso"
PLANS = ("basic", "pro")
"""The add-on's plans (the bundled simulator's: ``authz:basic``, ``authz:pro``)."""
MAX_FORM_BYTES = 16_384
"""Heroku's SSO form is well under 2 KiB (its nav-data included); the settings forms smaller."""
MAX_VISITS = 10_000
"""Display data (email, app) kept for this many sessions at most; the oldest go first."""


class InputError(ValueError):
    """A form field the user must fix; nothing was changed."""


# -- the dashboard's functions, and the authz action each one needs ---------------------------


@dataclass(frozen=True)
class Function:
    """One function of the dashboard: ``key`` names its panel and its POST route
    (``/addons/{id}/{key}``), ``action`` the authz action it needs."""

    key: str
    title: str
    action: str
    description: str
    sso_users: bool = True
    """False: a function of the partner's own accounts, which Heroku SSO users never get here
    whatever a policy says (Heroku manages who they are and how they log in)."""


FUNCTIONS: tuple[Function, ...] = (
    Function("data", "Usage data", "addon.read_data", "What the add-on recorded for your app."),
    Function("settings", "Settings", "dashboard.configure", "How the add-on behaves."),
    Function("plan", "Change plan", "addon.change_plan", "Move the add-on to another plan."),
    Function(
        "password",
        "Change password",
        "account.change_password",
        "Set a new login password.",
        sso_users=False,
    ),
    Function("username", "Change username", "account.change_username", "Rename the login.", False),
    Function("email", "Change login email", "account.change_email", "Log in elsewhere.", False),
    Function("deactivate", "Deactivate account", "account.deactivate", "Close the account.", False),
    Function("add-user", "Add a user", "account.add_user", "Invite someone to log in.", False),
    Function("roles", "Roles", "account.change_role", "Change what each user may do.", False),
    Function("billing", "Billing", "billing.update", "Update payment details.", False),
)
BY_KEY = {f.key: f for f in FUNCTIONS}
ASKED = (VIEW, *(f.action for f in FUNCTIONS))
"""What the dashboard asks authz about before it draws a page: viewing, and every function."""


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardSettings:
    """Where authz is, how to reach it, and where Heroku's dashboard is. From the environment:

    - ``AUTHZ_SERVER``: authz's gRPC address (default 127.0.0.1:50051);
    - ``AUTHZ_CALLER_TOKEN``: this dashboard's bearer token, when authz asks callers for one;
    - ``AUTHZ_CA_FILE``: PEM of the CA that signed authz's certificate (turns TLS on; a target
      that is not on this machine needs it);
    - ``HEROKU_DASHBOARD_URL``: where a user is sent to open the add-on again
      (default https://dashboard.heroku.com/).
    """

    authz_target: str = DEFAULT_TARGET
    authz_token: str | None = field(default=None, repr=False)
    authz_ca_file: Path | None = None
    heroku_dashboard_url: str = "https://dashboard.heroku.com/"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DashboardSettings:
        ca = env.get("AUTHZ_CA_FILE") or None
        return cls(
            authz_target=env.get("AUTHZ_SERVER") or DEFAULT_TARGET,
            authz_token=env.get("AUTHZ_CALLER_TOKEN") or None,
            authz_ca_file=Path(ca) if ca else None,
            heroku_dashboard_url=env.get("HEROKU_DASHBOARD_URL") or cls.heroku_dashboard_url,
        )

    def client(self) -> AsyncAuthzClient:
        tls = Tls.from_files(ca=self.authz_ca_file) if self.authz_ca_file else None
        return AsyncAuthzClient(self.authz_target, token=self.authz_token, tls=tls)


# -- the add-on's own data (the partner's side; in memory for the example) --------------------


@dataclass(frozen=True)
class Change:
    """A change made from the dashboard, with the id of the authz decision that allowed it."""

    what: str
    decision_id: str


@dataclass
class AddonRecord:
    retention_days: int = 30
    plan: str = ""  # "": as provisioned on Heroku
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class Visit:
    """Display data from the SSO form, and the add-on the session is for; never a privilege."""

    email: str
    app: str
    resource_id: str


class Store:
    """The partner's data for each add-on, and the display data of each session."""

    def __init__(self) -> None:
        self.addons: dict[str, AddonRecord] = {}
        self._visits: OrderedDict[str, Visit] = OrderedDict()

    def addon(self, resource_id: str) -> AddonRecord:
        return self.addons.setdefault(resource_id, AddonRecord())

    def remember(self, token: str, visit: Visit) -> None:
        self._visits[_digest(token)] = visit
        while len(self._visits) > MAX_VISITS:
            self._visits.popitem(last=False)

    def visit(self, token: str | None) -> Visit | None:
        return self._visits.get(_digest(token)) if token else None

    def forget(self, token: str | None) -> None:
        if token:
            self._visits.pop(_digest(token), None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def change_settings(record: AddonRecord, form: Mapping[str, str]) -> str:
    raw = form.get("retention_days", "").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 365:
        raise InputError("Retention must be a whole number of days from 1 to 365.")
    record.retention_days = int(raw)
    return f"Retention set to {record.retention_days} days."


def change_plan(record: AddonRecord, form: Mapping[str, str]) -> str:
    # Heroku bills plans: a production add-on sends the user to Heroku to change it, and learns
    # the new plan from Heroku's plan-change call. The example keeps the choice itself.
    plan = form.get("plan", "")
    if plan not in PLANS:
        raise InputError(f"Choose a plan: {', '.join(PLANS)}.")
    record.plan = plan
    return f"Plan changed to {plan}."


CHANGES: dict[str, Callable[[AddonRecord, Mapping[str, str]], str]] = {
    "settings": change_settings,
    "plan": change_plan,
}
NOTICES: dict[str, Callable[[AddonRecord], str]] = {
    "settings": lambda record: f"Retention set to {record.retention_days} days.",
    "plan": lambda record: f"Plan changed to {record.plan}.",
}
"""What the page says after a change (``?done=``), from the add-on's state."""


# -- the web app -------------------------------------------------------------------------------


def cookie_name(request: Request) -> str:
    """``__Host-`` binds the cookie to this host and path / (browsers demand Secure for it)."""
    return "__Host-authz_session" if request.url.scheme == "https" else "authz_session"


class Dashboard:
    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.store = Store()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self._authz: AsyncAuthzClient | None = None

    @property
    def authz(self) -> AsyncAuthzClient:
        if self._authz is None:
            raise RuntimeError("the dashboard is not started (its lifespan opens the client)")
        return self._authz

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._authz = self.settings.client()
        try:
            yield
        finally:
            await self._authz.close()
            self._authz = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.home),
                Route(SSO_PATH, self.sso, methods=["POST"]),
                Route("/addons/{resource_id}", self.dashboard),
                Route("/addons/{resource_id}/{function}", self.act, methods=["POST"]),
            ],
            lifespan=self.lifespan,
        )

    # pages

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("heroku_url", self.settings.heroku_dashboard_url)
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def relogin(
        self, request: Request, why: str, decision: Decision | None = None, app: str = ""
    ) -> Response:
        """Back to Heroku: the session cannot be used any more; the cookie goes."""
        token = request.cookies.get(cookie_name(request))
        visit = self.store.visit(token)
        self.store.forget(token)
        response = self.page(
            request,
            "relogin.html",
            403,
            why=why,
            decision=decision,
            app=app or (visit.app if visit else ""),
        )
        response.delete_cookie(cookie_name(request), path="/")
        return response

    def unavailable(self, request: Request, exc: AuthzCallError) -> Response:
        """authz did not answer (or refused this dashboard as a caller: a configuration error,
        logged): nothing is shown or changed."""
        log.warning("no answer from authz: %s", exc)
        return self.page(request, "unavailable.html", 503)

    # routes

    async def home(self, request: Request) -> Response:
        visit = self.store.visit(request.cookies.get(cookie_name(request)))
        if visit is not None:
            return RedirectResponse(f"/addons/{visit.resource_id}", status_code=303)
        return self.page(
            request, "relogin.html", 403, why="This dashboard is opened from Heroku.", app=""
        )

    async def sso(self, request: Request) -> Response:
        """Heroku's SSO form: exchanged unchanged for an authz session, or refused with why."""
        try:
            fields = await read_form(request)
        except InputError as exc:
            return self.page(request, "bad_request.html", 400, why=str(exc))
        try:
            session = await self.authz.exchange_sso(fields, request_id=_request_id(request))
        except (AuthzRefused, AuthzNotFound, AuthzInvalid) as exc:
            # The login is refused (a malformed form is a 400, any other refusal a 403): say why.
            status = 400 if isinstance(exc, AuthzInvalid) else 403
            return self.page(
                request, "sso_refused.html", status, error=exc, app=fields.get("app", "")
            )
        except AuthzCallError as exc:  # no answer: the form may be tried again
            return self.unavailable(request, exc)
        self.store.remember(
            session.session_token,
            Visit(fields.get("email", ""), fields.get("app", ""), session.resource_id),
        )
        response = RedirectResponse(f"/addons/{session.resource_id}", status_code=303)
        response.set_cookie(
            cookie_name(request),
            session.session_token,
            max_age=_seconds_until(session.expires_at),
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",
        )
        return response

    async def dashboard(self, request: Request) -> Response:
        resource_id = request.path_params["resource_id"]
        token = request.cookies.get(cookie_name(request))
        if not token:
            return self.relogin(request, "You have no session here.")
        try:
            allowed = await self.authz.list_allowed_actions(
                Resource("addon", resource_id),
                ASKED,
                session=token,
                request_id=_request_id(request),
            )
        except AuthzInvalid:
            return self.page(request, "bad_request.html", 400, why="No such add-on.")
        except AuthzCallError as exc:  # unreachable, or refusing this dashboard: fail closed
            return self.unavailable(request, exc)
        if VIEW not in allowed:
            return self.relogin(
                request, "Your session has ended or your access changed.", allowed.decision(VIEW)
            )
        visit = self.store.visit(token)
        record = self.store.addon(resource_id)
        done = request.query_params.get("done", "")
        return self.page(
            request,
            "dashboard.html",
            resource_id=resource_id,
            functions=shown(allowed),
            record=record,
            plans=PLANS,
            visit=visit,
            notice=NOTICES[done](record) if done in NOTICES else "",
        )

    async def act(self, request: Request) -> Response:
        """A change: authz is asked first, every time; a DENY says why, with its decision id."""
        resource_id = request.path_params["resource_id"]
        function = BY_KEY.get(request.path_params["function"])
        if function is None or (function.sso_users and function.key not in CHANGES):
            return self.page(request, "bad_request.html", 404, why="No such function.")
        if not same_origin(request):
            return self.page(
                request, "bad_request.html", 403, why="This form was sent from another site."
            )
        token = request.cookies.get(cookie_name(request))
        if not token:
            return self.relogin(request, "You have no session here.")
        resource = Resource("addon", resource_id)
        request_id = _request_id(request)
        try:
            decision = await self.authz.check(
                function.action, resource, session=token, request_id=request_id
            )
            if not decision.allowed:
                # Refused: because of this action, or because the session is over altogether?
                view = await self.authz.check(VIEW, resource, session=token, request_id=request_id)
                if not view.allowed:
                    return self.relogin(
                        request, "Your session has ended or your access changed.", view
                    )
                return self.page(
                    request,
                    "denied.html",
                    403,
                    function=function,
                    decision=decision,
                    resource_id=resource_id,
                )
        except AuthzInvalid:
            return self.page(request, "bad_request.html", 400, why="No such add-on.")
        except AuthzCallError as exc:  # unreachable, or refusing this dashboard: fail closed
            return self.unavailable(request, exc)
        if not function.sso_users:
            # authz allowed an account function to an SSO session: a policy mistake. Heroku's
            # guidelines forbid it here whatever the policy says, so refuse anyway.
            log.error(
                "authz allowed %s to an SSO session (decision %s): refused all the same",
                function.action,
                decision.decision_id,
            )
            return self.page(
                request,
                "denied.html",
                403,
                function=function,
                decision=decision,
                resource_id=resource_id,
            )
        record = self.store.addon(resource_id)
        try:
            done = CHANGES[function.key](record, await read_form(request))
        except InputError as exc:
            return self.page(request, "bad_request.html", 400, why=str(exc))
        record.changes.append(Change(done, decision.decision_id))
        return RedirectResponse(f"/addons/{resource_id}?done={function.key}", status_code=303)


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form (what Heroku's SSO button and these pages send), each field once."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise InputError("Forms here are sent URL-encoded (application/x-www-form-urlencoded).")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InputError(f"The form is larger than {MAX_FORM_BYTES} bytes.")
    try:
        pairs = parse_qsl(
            body.decode(), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError):
        raise InputError("The form is not valid URL-encoded UTF-8.") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InputError(f"The form sent {name!r} twice.")
        fields[name] = value
    return fields


def shown(allowed: AllowedActions) -> list[Function]:
    """The functions to draw: the allowed ones that Heroku SSO users may have at all."""
    return [f for f in FUNCTIONS if f.action in allowed and f.sso_users]


def same_origin(request: Request) -> bool:
    """A POST from our own pages: browsers send Origin on every POST; without one (an old
    client), Lax cookies already kept cross-site POSTs out."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or str(uuid.uuid4())


def _seconds_until(when: datetime | None) -> int | None:
    if when is None:
        return None
    return max(0, int((when - datetime.now(UTC)).total_seconds()))


def create_app(settings: DashboardSettings | None = None) -> Starlette:
    return Dashboard(settings or DashboardSettings.from_env()).app()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The example Heroku add-on dashboard.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8090))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Behind Heroku's router the scheme comes from X-Forwarded-Proto (FORWARDED_ALLOW_IPS="*"
    # there), so the cookie is Secure exactly when the browser used TLS.
    uvicorn.run(create_app(), host=args.host, port=args.port, proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
