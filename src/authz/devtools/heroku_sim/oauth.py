"""Heroku's identity service as an add-on partner sees it: ``POST /oauth/token``.

Grant codes are single-use and belong to one add-on (Add-on Partner API reference, "Exchanging
the OAuth Grant"); an access token reads only what its add-on may read. Refresh tokens keep
working until the add-on is deprovisioned or they are revoked.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from authz.clock import Clock
from authz.devtools.heroku_sim.http import Reply
from authz.devtools.heroku_sim.world import derived_id


@dataclass
class Grant:
    resource_id: str
    expires_at: float | None


@dataclass
class AccessToken:
    resource_id: str
    expires_at: float


class OAuth:
    """Grants and tokens; the caller holds the world lock."""

    def __init__(self, client_secret: str, clock: Clock, access_token_ttl: float, grant_ttl: float):
        self.client_secret = client_secret
        self.clock = clock
        self.access_token_ttl = float(access_token_ttl)
        self.grant_ttl = float(grant_ttl)
        self.grants: dict[str, Grant] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> resource id

    def create_grant(self, resource_id: str, ttl: float | None = None, code: str = "") -> str:
        code = code or str(uuid.uuid4())
        lifetime = self.grant_ttl if ttl is None else ttl
        self.grants[code] = Grant(resource_id, self.clock() + lifetime)
        return code

    def grant_expiry(self, code: str) -> float | None:
        grant = self.grants.get(code)
        return grant.expires_at if grant else None

    def expire_access_tokens(self, resource_id: str | None) -> int:
        past = self.clock() - 1
        n = 0
        for token in self.access_tokens.values():
            if resource_id is None or token.resource_id == resource_id:
                token.expires_at = min(token.expires_at, past)
                n += 1
        return n

    def revoke(self, resource_id: str) -> int:
        before = len(self.access_tokens) + len(self.refresh_tokens)
        self.access_tokens = {
            k: v for k, v in self.access_tokens.items() if v.resource_id != resource_id
        }
        self.refresh_tokens = {k: v for k, v in self.refresh_tokens.items() if v != resource_id}
        self.grants = {k: v for k, v in self.grants.items() if v.resource_id != resource_id}
        return before - len(self.access_tokens) - len(self.refresh_tokens)

    def authenticate(self, authorization: str) -> str:
        """The resource id an ``Authorization: Bearer`` header speaks for, or 401."""
        scheme, _, token = authorization.partition(" ")
        found = self.access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if found is None or found.expires_at <= self.clock():
            raise Reply(401, "unauthorized", "Invalid credentials provided.")
        return found.resource_id

    def token_endpoint(self, body: bytes) -> dict[str, Any]:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

        def get(name: str) -> str:
            return form.get(name, [""])[0]

        grant_type = get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise Reply(400, "bad_request", "grant_type must be authorization_code or refresh")
        if not hmac.compare_digest(get("client_secret").encode(), self.client_secret.encode()):
            raise Reply(401, "unauthorized", "Invalid client credentials.")
        now = self.clock()
        if grant_type == "authorization_code":
            grant = self.grants.pop(get("code"), None)
            if grant is None or (grant.expires_at is not None and grant.expires_at <= now):
                raise Reply(401, "unauthorized", "Invalid, expired or already used grant.")
            resource_id = grant.resource_id
            refresh_token = "sim-refresh-" + secrets.token_urlsafe(24)
            self.refresh_tokens[refresh_token] = resource_id
        else:
            refresh_token = get("refresh_token")
            found = self.refresh_tokens.get(refresh_token)
            if not refresh_token or found is None:
                raise Reply(401, "unauthorized", "Invalid refresh token.")
            resource_id = found
        access_token = "sim-access-" + secrets.token_urlsafe(24)
        self.access_tokens[access_token] = AccessToken(resource_id, now + self.access_token_ttl)
        return {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": int(self.access_token_ttl),
            "token_type": "Bearer",
            # The add-on acts as its own Heroku user; derive a stable id for it.
            "user_id": derived_id("addon-user", resource_id),
        }
