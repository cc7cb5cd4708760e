"""What Heroku's provisioning call tells a partner about a simulated add-on (demo, bench, tests)."""

from __future__ import annotations

from typing import Any

from authz.devtools.heroku_sim import HerokuSimulator
from authz.devtools.heroku_sim.world import PROVIDER_REGIONS
from authz.v1 import admin_pb2


def provisioning_body(
    sim: HerokuSimulator, addon: str, *, grant_code: str | None = None
) -> dict[str, Any]:
    """Heroku's v3 provisioning body for `addon` (name or id) of the simulator's world, in the
    shape the simulator sends (heroku_sim/partner.py): no app id. A fresh single-use OAuth grant
    is created unless `grant_code` is given."""
    info = sim.addon(addon)
    app = sim.app(info["app"]["id"])
    code = sim.create_grant(info["id"]) if grant_code is None else grant_code
    return {
        "callback_url": f"{sim.base_url}/addons/{info['id']}",
        "name": info["name"],
        "oauth_grant": {"code": code, "type": "authorization_code"},
        "options": {},
        "plan": info["plan"]["name"].partition(":")[2],
        "region": PROVIDER_REGIONS[app["region"]["name"]],
        "uuid": info["id"],
    }


def register_addon_request(
    sim: HerokuSimulator, addon: str, *, grant_code: str | None = None, grant: bool = True
) -> admin_pb2.RegisterAddonRequest:
    """The RegisterAddon request carrying what Heroku's provisioning call carries for `addon`.

    A fresh single-use OAuth grant is created unless `grant_code` is given. With `grant` False
    there is no grant, so the request names the app instead (authz cannot learn it then).
    """
    body = provisioning_body(sim, addon, grant_code=grant_code if grant else "")
    request = admin_pb2.RegisterAddonRequest(
        resource_id=body["uuid"],
        plan=body["plan"],
        region=body["region"],
        oauth_grant_code=body["oauth_grant"]["code"],
        name=body["name"],
        callback_url=body["callback_url"],
        options=body["options"],
    )
    if not request.oauth_grant_code:
        app = sim.addon(addon)["app"]
        request.app_id, request.app_name = app["id"], app["name"]
    return request


def provisioning_fields(
    sim: HerokuSimulator, addon: str, *, grant_code: str | None = None, grant: bool = True
) -> dict[str, Any]:
    """register_addon_request(...) as keyword arguments of authz.client's register_addon."""
    request = register_addon_request(sim, addon, grant_code=grant_code, grant=grant)
    fields: dict[str, Any] = {
        name: getattr(request, name)
        for name in ("resource_id", "app_id", "app_name", "plan", "region", "oauth_grant_code")
        if getattr(request, name)
    }
    fields.update(
        name=request.name, callback_url=request.callback_url, options=dict(request.options)
    )
    return fields
