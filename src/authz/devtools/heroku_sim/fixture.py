"""Reading a YAML fixture and building the simulated world from it."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from authz.devtools.heroku_sim.world import (
    PROVIDER_REGIONS,
    Addon,
    App,
    Team,
    User,
    World,
)


class FixtureError(ValueError):
    """The fixture is malformed; the message names the offending entry."""


def load_fixture(path: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML fixture; without a path, the demo fixture shipped with the package."""
    if path is None:
        text = resources.files("authz.devtools").joinpath("heroku_fixture.yaml").read_text()
        source = "heroku_fixture.yaml"
    else:
        text = Path(path).read_text()
        source = str(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when built
    data = yaml.load(text, Loader=loader)  # a safe loader either way
    if not isinstance(data, dict):
        raise FixtureError(f"{source}: the fixture must be a YAML mapping")
    return data


def items(fixture: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = fixture.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise FixtureError(f"fixture: {key!r} must be a list of mappings")
    return value


def required(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise FixtureError(f"fixture: {where} needs a non-empty string {key!r}")
    return value


def populate(world: World, fixture: Mapping[str, Any]) -> None:
    """Users, teams, apps (with collaborators) and add-ons; no events are announced."""
    now = world.now()
    try:
        for entry in items(fixture, "users"):
            user_id = required(entry, "id", "a user")
            world.add_user(
                User(
                    id=user_id,
                    email=required(entry, "email", f"user {user_id}"),
                    name=str(entry.get("name") or ""),
                    handle=str(entry.get("handle") or ""),
                    federated=bool(entry.get("federated", False)),
                    two_factor=bool(entry.get("two_factor_authentication", False)),
                )
            )
        for entry in items(fixture, "teams"):
            team_id = required(entry, "id", "a team")
            team = Team(id=team_id, name=required(entry, "name", f"team {team_id}"))
            world.teams[team_id] = team
            for member in entry.get("members") or []:
                world.put_team_member(
                    team,
                    world.user(member.get("user")),
                    member.get("role"),
                    member.get("identity_provider"),
                )
        for entry in items(fixture, "apps"):
            app_id = required(entry, "id", "an app")
            team_ref = entry.get("team")
            region = str(entry.get("region") or "us")
            if region not in PROVIDER_REGIONS:
                raise FixtureError(
                    f"fixture: app {app_id} region must be one of {', '.join(PROVIDER_REGIONS)}"
                )
            app = App(
                id=app_id,
                name=required(entry, "name", f"app {app_id}"),
                owner_id=world.user(entry.get("owner")).id,
                team_id=world.team(team_ref).id if team_ref else None,
                region=region,
                created_at=now,
                updated_at=now,
            )
            world.apps[app_id] = app
            for collab in entry.get("collaborators") or []:
                world.put_collaborator(
                    app,
                    world.user(collab.get("user")),
                    collab.get("role", "collaborator"),
                    collab.get("permissions"),
                    announce=False,
                )
        for entry in items(fixture, "addons"):
            resource_id = required(entry, "id", "an add-on")
            state = str(entry.get("state") or "provisioned")
            world.addons[resource_id] = Addon(
                id=resource_id,
                name=str(entry.get("name") or f"{world.addon_service}-{resource_id[:8]}"),
                app_id=world.app(entry.get("app")).id,
                plan=world.plan_name(str(entry.get("plan") or "basic")),
                state=state,
                created_at=now,
                updated_at=now,
            )
    except (LookupError, ValueError) as exc:
        if isinstance(exc, FixtureError):
            raise
        raise FixtureError(f"fixture: {str(exc).strip(chr(39) + chr(34))}") from None
