"""What Heroku's provisioning call tells a partner about a simulated add-on (demo, bench, tests)."""

from __future__ import annotations

from authz.devtools.heroku_sim import HerokuSimulator
from authz.v1 import admin_pb2


def provisioning_fields(
    sim: HerokuSimulator, addon: str, *, grant_code: str | None = None, grant: bool = True
) -> dict[str, str]:
    """The RegisterAddon fields for `addon` (name or id) of the simulator's world.

    A fresh single-use OAuth grant is created unless `grant_code` is given or `grant` is False.
    """
    info = sim.addon(addon)
    app = sim.app(info["app"]["id"])
    if grant_code is None:
        grant_code = sim.create_grant(info["id"]) if grant else ""
    return {
        "resource_id": info["id"],
        "app_id": app["id"],
        "app_name": app["name"],
        "plan": info.get("plan", {}).get("name", "authz:basic"),
        "region": "us",
        "oauth_grant_code": grant_code,
    }


def register_addon_request(
    sim: HerokuSimulator, addon: str, *, grant_code: str | None = None, grant: bool = True
) -> admin_pb2.RegisterAddonRequest:
    """The RegisterAddon request for `addon` (see provisioning_fields)."""
    return admin_pb2.RegisterAddonRequest(
        **provisioning_fields(sim, addon, grant_code=grant_code, grant=grant)
    )
