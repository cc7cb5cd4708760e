"""The SSO form Heroku's dashboard posts when a user opens an add-on (for the demo and tests).

Fields as Dev Center "Add-on Single Sign-On" lists them: ``resource_id``, ``timestamp``,
``user_scoped_resource_token`` (SHA-256), ``resource_token`` (SHA-1), ``user_id``, ``email``,
``app`` (the billing app), ``context_app`` (the app the user came from) and the deprecated
``nav-data`` (base64url JSON navigation data).
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Mapping

from authz.facts.sso import resource_token, user_scoped_resource_token


def heroku_sso_form(
    resource_id: str,
    user_id: str,
    email: str,
    salt: str,
    *,
    timestamp: int | None = None,
    app: str = "",
    context_app: str | None = None,
    token: str = "sha256",
    nav_data: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """Fields exactly as Heroku sends them; `token` picks "sha256", "sha1" or "both"."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    form = {
        "resource_id": resource_id,
        "timestamp": ts,
        "user_id": user_id,
        "email": email,
        "app": app,
        "context_app": app if context_app is None else context_app,
    }
    if token in ("sha256", "both"):
        form["user_scoped_resource_token"] = user_scoped_resource_token(
            resource_id, salt, ts, user_id, email
        )
    if token in ("sha1", "both"):
        form["resource_token"] = resource_token(resource_id, salt, ts)
    if nav_data is not None:
        raw = json.dumps(dict(nav_data), separators=(",", ":")).encode()
        form["nav-data"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return form


def auto_submit_page(action: str, form: Mapping[str, str], *, title: str = "Opening add-on") -> str:
    """An HTML page whose form POSTs `form` to `action` as soon as it loads (Heroku's button)."""
    inputs = "\n".join(
        f'    <input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in form.items()
    )
    return (
        "<!doctype html>\n"
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        '<body onload="document.forms[0].submit()">\n'
        f'  <form method="post" action="{html.escape(action)}"'
        ' enctype="application/x-www-form-urlencoded">\n'
        f"{inputs}\n"
        '    <noscript><button type="submit">Open the add-on</button></noscript>\n'
        "  </form>\n</body></html>\n"
    )
