"""The SSO form Heroku's dashboard posts when a user opens an add-on (for the demo and tests)."""

from __future__ import annotations

import time

from authz.facts.sso import resource_token, user_scoped_resource_token


def heroku_sso_form(
    resource_id: str,
    user_id: str,
    email: str,
    salt: str,
    *,
    timestamp: int | None = None,
    app: str = "",
    token: str = "sha256",
) -> dict[str, str]:
    """Fields exactly as Heroku sends them; `token` picks "sha256", "sha1" or "both"."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    form = {
        "resource_id": resource_id,
        "timestamp": ts,
        "user_id": user_id,
        "email": email,
        "app": app,
        "context_app": app,
    }
    if token in ("sha256", "both"):
        form["user_scoped_resource_token"] = user_scoped_resource_token(
            resource_id, salt, ts, user_id, email
        )
    if token in ("sha1", "both"):
        form["resource_token"] = resource_token(resource_id, salt, ts)
    return form
