"""Who may read the review pages: reviewers (AUTHZ_REVIEWERS) and admins (AUTHZ_ADMINS).

A reviewer proves who they are as any caller does over HTTP (authz.web.auth): a bearer token
(`Authorization: Bearer …`) or a client certificate (mutual TLS). A browser cannot send a
header, so the login form takes the caller token once and answers with a cookie:

- short-lived (SESSION_SECONDS, not renewed: a reviewer logs in again), HttpOnly (no script
  reads it), SameSite=Strict (no other site's page sends it, which is what keeps the two POST
  routes, login and logout, safe from cross-site requests together with the Origin check),
  Secure when the listener serves HTTPS, Path=/audit;
- its value is the caller name, the expiry and an HMAC-SHA256 over both and the SHA-256 of the
  token that logged in, so rotating or removing that token ends the cookie, and a cookie cannot
  be made without the key. The key is derived from AUTHZ_TOKEN_KEY when set (so every worker
  and replica accepts a cookie another made); otherwise it is random per process.

Each request is checked again: a cookie whose caller was removed from AUTHZ_REVIEWERS stops
working on the next page. In development mode (no caller credentials configured) every route
of the listener is open, these too, as over gRPC; the pages say so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from authz.config import CallerToken, Settings
from authz.server.identity import ANONYMOUS, MAX_TOKEN_LENGTH
from authz.web.auth import Access, HttpCallers
from authz.web.errors import HttpError

COOKIE = "authz_review"
COOKIE_PATH = "/audit"
SESSION_SECONDS = 30 * 60
"""How long a login lasts."""


@dataclass(frozen=True)
class Reviewer:
    name: str
    how: str
    """"token", "certificate", "cookie" or "development mode"."""


class ReviewerGate:
    """Authenticates review requests and keeps out everyone but reviewers and admins."""

    def __init__(self, settings: Settings, callers: HttpCallers) -> None:
        self.callers = callers
        self.allowed = settings.reviewers | settings.admins
        self.tokens: tuple[CallerToken, ...] = tuple(settings.caller_tokens)
        # A cookie made by one worker (or replica) must open pages on the others: AUTHZ_TOKEN_KEY
        # when set, else the secret the supervisor gave its workers, else this process's own.
        if settings.token_key:
            secret = settings.token_key.encode()
        else:
            secret = settings.workers_secret or secrets.token_bytes(32)
        self._key = hmac.new(secret, b"authz review cookie v1", hashlib.sha256).digest()

    @property
    def development(self) -> bool:
        return not self.callers.callers.authenticates

    @property
    def login_by_token(self) -> bool:
        """Whether the login form can work: tokens are configured and no certificate is needed."""
        return bool(self.tokens) and not self.callers.callers.mutual_tls

    def identify(self, request: Request) -> Reviewer | None:
        """Who is asking (not yet whether they may): None when no credentials came at all;
        HttpError 401 for credentials that are wrong."""
        if self.development:
            return Reviewer(ANONYMOUS, "development mode")
        has_header = bool(request.headers.getlist("authorization"))
        if not has_header and not self.callers.callers.mutual_tls:
            cookie = request.cookies.get(COOKIE)
            if cookie is None:
                return None
            name = self.cookie_name(cookie)
            return None if name is None else Reviewer(name, "cookie")
        name = self.callers.caller(request, Access.CALLER)  # 401 for bad credentials
        return Reviewer(name, "token" if has_header else "certificate")

    def admit(self, reviewer: Reviewer) -> None:
        if self.development or reviewer.name in self.allowed:
            return
        raise HttpError(
            403,
            f"caller {reviewer.name!r} is not a reviewer: the audit review pages are for the "
            "callers named in AUTHZ_REVIEWERS and AUTHZ_ADMINS",
        )

    # -- login ---------------------------------------------------------------------------------

    def login(self, token: str) -> str:
        """The cookie value for a reviewer's token; HttpError 401/403 otherwise."""
        if not self.login_by_token:
            raise HttpError(
                400,
                "this server does not take tokens in the login form (callers authenticate with "
                "client certificates, or not at all in development mode)",
            )
        token = token.strip()
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise HttpError(401, "paste the caller token issued to you (it was empty or too long)")
        name = self.callers.callers.match_token(token)
        if not name:
            raise HttpError(401, "that token matches no caller; paste the token issued to you")
        self.admit(Reviewer(name, "token"))
        digest = hashlib.sha256(token.encode()).digest()
        expires = int(time.time()) + SESSION_SECONDS
        return self._cookie(name, expires, digest)

    def _cookie(self, name: str, expires: int, digest: bytes) -> str:
        encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        return f"{encoded}.{expires}.{self._mac(name, expires, digest)}"

    def _mac(self, name: str, expires: int, digest: bytes) -> str:
        message = f"{name}\n{expires}\n".encode() + digest
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def cookie_name(self, value: str) -> str | None:
        """The caller a cookie was made for, if it is ours, unexpired and its token still
        configured; None otherwise (the visitor logs in again)."""
        encoded, _, rest = value.partition(".")
        expires_text, _, mac = rest.partition(".")
        try:
            name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            expires = int(expires_text)
        except ValueError:
            return None
        if expires < time.time() or expires > time.time() + SESSION_SECONDS + 60:
            return None
        valid = False
        for entry in self.tokens:  # every entry, in constant time per entry
            if entry.name == name and hmac.compare_digest(
                mac, self._mac(name, expires, entry.digest)
            ):
                valid = True
        return name if valid else None


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def check_same_origin(request: Request) -> None:
    """POSTs (login, logout) only from this listener's own pages. A browser says whether the
    page that sent the request is ours (Sec-Fetch-Site, in every current browser) and names its
    origin (Origin); clients that send neither (curl) are not browsers carrying someone's
    cookie."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise HttpError(
                403, f"a {site} request cannot log in or out here; use this site's form"
            )
        return
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme != request.url.scheme or parts.netloc != request.headers.get("host"):
            raise HttpError(
                403, f"a form from {origin} cannot log in or out here; use this site's form"
            )


def safe_next(target: str) -> str:
    """Where to go after logging in: a review page of this site, never another site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(COOKIE_PATH) or "\\" in target:
        return COOKIE_PATH
    return target
