"""Heroku as the caller of the add-on partner: provisioning, plan changes, deprovisioning, SSO.

Sources: Dev Center "Add-on Partner API Reference" (v3): calls to the manifest's ``base_url``
carry ``Authorization: Basic base64(<manifest id>:<api password>)``; provisioning is
``POST {base_url}`` with ``Accept: application/vnd.heroku-addons+json; version=3`` and the JSON
body ``{callback_url, name, oauth_grant {code, expires_at, type: "authorization_code"}, options,
plan, region ("amazon-web-services::us-east-1"), uuid, log_input_url, log_drain_token}`` (no app
id: the partner exchanges the grant and reads ``GET /addons/{uuid}``); plan change is
``PUT {base_url}/{uuid}`` ``{plan}``; deprovision is ``DELETE {base_url}/{uuid}``. Requests may
be sent more than once (at-least-once delivery). Dev Center "Add-on Single Sign-On": the dashboard
POSTs a signed form to the manifest's ``sso_url``.

Choices made where Heroku's documentation is silent, written down here:

- ``plan`` in the provisioning and plan-change bodies is the plan's slug (``basic``), as in the
  reference's example; ``GET /addons/{id}`` shows ``authz:basic`` (the schema's ``plan.name``).
- ``oauth_grant.expires_at`` is RFC 3339 UTC (``...Z``); the grant lives ``grant_ttl`` seconds.
- A 200 or 201 answer to provisioning makes the add-on ``provisioned``; 202 (asynchronous
  provisioning) leaves it ``provisioning`` until an admin marks it; anything else removes it, its
  grant and its tokens, as Heroku reports a failed provisioning to the user. Redeliveries
  (``resend_provisioning``) post the very same body, grant code included.
- A plan change the partner refuses (non-2xx) leaves the plan as it was. A deprovision answered
  2xx, 404 or 410 deprovisions (tokens revoked, webhook subscriptions deleted); another answer
  leaves the add-on provisioned.
- ``nav-data`` (deprecated, still listed by the SSO article) is base64url JSON
  ``{addon, appname, addons: [{slug, name, current}]}``.
- Partner calls wait ``timeout`` seconds (25, the reference's upper bound for a response).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from authz.devtools.heroku_sim.oauth import OAuth
from authz.devtools.heroku_sim.webhooks import Webhooks
from authz.devtools.heroku_sim.world import (
    PROVIDER_REGIONS,
    Addon,
    World,
    derived_id,
    timestamp,
)
from authz.devtools.sso_forms import auto_submit_page, heroku_sso_form

ADDONS_MEDIA = "application/vnd.heroku-addons+json; version=3"


@dataclass
class Manifest:
    """The add-on manifest's fields Heroku uses to call the partner (``api`` section)."""

    id: str
    password: str
    sso_salt: str
    base_url: str | None = None
    sso_url: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "base_url": self.base_url, "sso_url": self.sso_url}


class Partner:
    """Builds Heroku's calls; sends them without holding the world lock (the partner calls back)."""

    def __init__(
        self,
        world: World,
        oauth: OAuth,
        webhooks: Webhooks,
        manifest: Manifest,
        api_url: Callable[[], str],
        timeout: float = 25.0,
    ) -> None:
        self.world = world
        self.oauth = oauth
        self.webhooks = webhooks
        self.manifest = manifest
        self.api_url = api_url
        self.timeout = timeout
        self.bodies: dict[str, dict[str, Any]] = {}  # resource id -> provisioning body sent

    def _auth(self) -> str:
        raw = f"{self.manifest.id}:{self.manifest.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _base(self, base_url: str | None) -> str:
        url = base_url or self.manifest.base_url
        if not url:
            raise ValueError("no partner base_url: set the manifest's base_url or pass base_url")
        return url.rstrip("/")

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": self._auth(), "Accept": ADDONS_MEDIA}
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
                response = http.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return {"status": None, "error": type(exc).__name__, "body": None}
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        return {"status": response.status_code, "error": None, "body": answer}

    # -- provisioning ----------------------------------------------------------------------

    def provision(
        self,
        app_ref: str,
        plan: str,
        *,
        name: str | None = None,
        options: dict[str, str] | None = None,
        resource_id: str | None = None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """Create an add-on on `app_ref` and send Heroku's v3 provisioning call for it."""
        with self.world.lock:
            url = self._base(base_url)
            app = self.world.app(app_ref)
            full_plan = self.world.plan_name(plan)
            rid = resource_id or str(uuid.uuid4())
            if rid in self.world.addons:
                raise ValueError(f"add-on {rid} exists")
            now = self.world.now()
            addon = Addon(
                id=rid,
                name=name or f"{self.world.addon_service}-{derived_id('name', rid)[:8]}",
                app_id=app.id,
                plan=full_plan,
                state="provisioning",
                created_at=now,
                updated_at=now,
                options=dict(options or {}),
            )
            self.world.addons[rid] = addon
            code = self.oauth.create_grant(rid)
            expires = self.oauth.grant_expiry(code) or self.world.clock()
            body = {
                "callback_url": f"{self.api_url()}/addons/{rid}",
                "name": addon.name,
                "oauth_grant": {
                    "code": code,
                    "expires_at": timestamp(expires),
                    "type": "authorization_code",
                },
                "options": dict(addon.options),
                "plan": full_plan.partition(":")[2],
                "region": PROVIDER_REGIONS[app.region],
                "uuid": rid,
                "log_input_url": f"https://token:t.{rid}@1.us.logplex.example/logs",
                "log_drain_token": f"d.{rid}",
            }
            self.bodies[rid] = body
        return self._deliver_provisioning(rid, url)

    def resend_provisioning(self, addon_ref: str, base_url: str | None = None) -> dict[str, Any]:
        """Post the same provisioning body again, as Heroku's at-least-once delivery may."""
        with self.world.lock:
            rid = self.world.addon(addon_ref).id
            if rid not in self.bodies:
                raise LookupError(f"add-on {rid} was not provisioned through the partner API")
            url = self._base(base_url)
        return self._deliver_provisioning(rid, url)

    def _deliver_provisioning(self, rid: str, url: str) -> dict[str, Any]:
        body = self.bodies[rid]
        answer = self._send("POST", url, body)
        status = answer["status"]
        with self.world.lock:
            addon = self.world.addons.get(rid)
            if addon is not None and addon.state != "deprovisioned":
                if status in (200, 201):
                    self.world.set_state(addon, "provisioned")
                elif status != 202 and addon.state == "provisioning":
                    del self.world.addons[rid]
                    self.oauth.revoke(rid)
            state = self.world.addons[rid].state if rid in self.world.addons else "failed"
        return {"resource_id": rid, "request": body, "response": answer, "state": state}

    def change_plan(
        self, addon_ref: str, plan: str, base_url: str | None = None, *, notify: bool = True
    ) -> dict[str, Any]:
        """``PUT {base_url}/{uuid}``; on a 2xx answer (or with notify=False) the plan changes."""
        with self.world.lock:
            addon = self.world.addon(addon_ref)
            full = self.world.plan_name(plan)
            url = self._base(base_url) if notify else ""
        answer: dict[str, Any] = {"status": None, "error": "not sent", "body": None}
        if notify:
            answer = self._send("PUT", f"{url}/{addon.id}", {"plan": full.partition(":")[2]})
        with self.world.lock:
            if not notify or (answer["status"] is not None and 200 <= answer["status"] < 300):
                self.world.set_plan(addon, full)
            return {"resource_id": addon.id, "plan": addon.plan, "response": answer}

    def deprovision(
        self, addon_ref: str, base_url: str | None = None, *, notify: bool = True
    ) -> dict[str, Any]:
        """``DELETE {base_url}/{uuid}``; then tokens are revoked and subscriptions deleted."""
        with self.world.lock:
            addon = self.world.addon(addon_ref)
            url = self._base(base_url) if notify else ""
        answer: dict[str, Any] = {"status": None, "error": "not sent", "body": None}
        if notify:
            answer = self._send("DELETE", f"{url}/{addon.id}", None)
        status = answer["status"]
        with self.world.lock:
            if not notify or (status is not None and (200 <= status < 300 or status in (404, 410))):
                self.world.set_state(addon, "deprovisioned")
                self.oauth.revoke(addon.id)
                self.webhooks.delete_all(addon.id)
            return {"resource_id": addon.id, "state": addon.state, "response": answer}

    # -- single sign-on --------------------------------------------------------------------

    def sso_form(self, addon_ref: str, user_ref: str) -> dict[str, str]:
        """A freshly signed SSO form for this user and add-on, as the dashboard makes it."""
        with self.world.lock:
            addon = self.world.addon(addon_ref)
            user = self.world.user(user_ref)
            app = self.world.apps[addon.app_id]
            on_app = [a for a in self.world.addons.values() if a.app_id == app.id]
            nav = {
                "addon": self.world.addon_service,
                "appname": app.name,
                "addons": [
                    {"slug": a.plan, "name": a.name, "current": a.id == addon.id} for a in on_app
                ],
            }
            return heroku_sso_form(
                addon.id,
                user.id,
                user.email,
                self.manifest.sso_salt,
                timestamp=int(self.world.clock()),
                app=app.name,
                token="both",
                nav_data=nav,
            )

    def sso_page(self, addon_ref: str, user_ref: str, sso_url: str | None = None) -> str:
        url = sso_url or self.manifest.sso_url
        if not url:
            raise ValueError("no sso_url: set the manifest's sso_url or pass ?sso_url=")
        return auto_submit_page(url, self.sso_form(addon_ref, user_ref))
