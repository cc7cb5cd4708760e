"""The simulated Heroku world: users, teams, apps, collaborators, add-ons, and their JSON shapes.

Every shape follows the Platform API JSON schema (``schema.json`` in heroku/heroku-go, v6):
definitions ``add-on``, ``app``, ``collaborator``, ``team-member``, ``team-app-permission``.
Every change that Heroku announces through webhooks is also published as a :class:`WorldEvent`
(see webhooks.py), with the ``data`` and ``previous_data`` of Heroku's "Webhook Events" article.

Choices made where Heroku's documentation is silent, written down here:

- Team roles: the schema's ``team.role`` enum is admin, collaborator, member, owner or null, and
  a team member may also be created as ``viewer`` (``team-member.team_role``). The simulator accepts
  those and any other lowercase word, so tests can show what a client does with a role it has never
  seen; a role that is not a lowercase word (``"Boss!"``) is refused as a fixture or admin error.
- Permissions (Heroku Enterprise app permissions ``view``, ``deploy``, ``operate``, ``manage``):
  a team app's collaborator gets ``[view]`` unless told otherwise ("by default, all team members
  have the view permission", Dev Center "Using App Permissions in Enterprise Teams"); a personal
  app's collaborators get none (the schema: permissions are "only applicable if the app is on a
  team").
- Regions are Heroku's common-runtime names on apps (``us``, ``eu``) and Private Space names
  (``virginia``, ``oregon``, ``frankfurt``, ``tokyo``, ``sydney``, ``dublin``); provisioning names
  the cloud region (``amazon-web-services::us-east-1``) as the Add-on Partner API reference does.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from authz.clock import Clock

COLLABORATOR_ROLES = ("owner", "admin", "collaborator", "member", None)
TEAM_ROLES = ("admin", "owner", "member", "collaborator", "viewer", None)
PERMISSION_DESCRIPTIONS = {
    "view": "Can view the app's settings, add-ons, resources and metrics.",
    "deploy": "Can deploy the app, run one-off dynos and change config vars.",
    "operate": "Can restart and scale dynos and change the app's maintenance mode.",
    "manage": "Can manage the app's collaborators, add-ons, domains and settings.",
}
# Heroku's fixed region ids for the common runtime (GET /regions); others are derived here.
REGION_IDS = {
    "us": "59accabd-516d-4f0e-83e6-6e3757701145",
    "eu": "ed30241c-ed8c-4bb6-9714-61953675d0b4",
}
# App region -> the cloud region an add-on partner is told when provisioning.
PROVIDER_REGIONS = {
    "us": "amazon-web-services::us-east-1",
    "eu": "amazon-web-services::eu-west-1",
    "virginia": "amazon-web-services::us-east-1",
    "oregon": "amazon-web-services::us-west-2",
    "frankfurt": "amazon-web-services::eu-central-1",
    "tokyo": "amazon-web-services::ap-northeast-1",
    "sydney": "amazon-web-services::ap-southeast-2",
    "dublin": "amazon-web-services::eu-west-1",
}
ADDON_STATES = ("provisioning", "provisioned", "deprovisioned")
_NAMESPACE = uuid.UUID("b0f6c1d2-3e4f-5a6b-8c7d-9e0f1a2b3c4d")
_ROLE_WORD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{1,29}$")  # schema: app.name pattern


def derived_id(*parts: str) -> str:
    """A stable UUID for simulator-made things (ids Heroku would assign)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def timestamp(ts: float) -> str:
    """Heroku's timestamps: second precision, UTC, with a Z."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_role(role: Any, allowed: tuple[str | None, ...], what: str) -> str | None:
    if role is None or role in allowed:
        return role  # type: ignore[no-any-return]
    if isinstance(role, str) and _ROLE_WORD.match(role):
        return role  # a role Heroku may add one day: clients must cope
    known = ", ".join(r for r in allowed if r)
    raise ValueError(f"{what} role must be one of {known}, null, or another lowercase word")


@dataclass
class User:
    id: str
    email: str
    name: str
    handle: str = ""
    federated: bool = False
    two_factor: bool = False


@dataclass
class Collaborator:
    id: str
    user_id: str
    role: str | None
    permissions: list[str]
    created_at: str
    updated_at: str


@dataclass
class TeamMember:
    id: str
    user_id: str
    role: str | None
    identity_provider: dict[str, Any] | None
    created_at: str
    updated_at: str


@dataclass
class Team:
    id: str
    name: str
    members: dict[str, TeamMember] = field(default_factory=dict)


@dataclass
class App:
    id: str
    name: str
    owner_id: str
    team_id: str | None
    region: str
    created_at: str
    updated_at: str
    collaborators: dict[str, Collaborator] = field(default_factory=dict)


@dataclass
class Addon:
    id: str
    name: str
    app_id: str
    plan: str  # "service:plan", as the schema's plan.name
    state: str
    created_at: str
    updated_at: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorldEvent:
    """A change Heroku announces to webhook subscribers (``include`` such as ``api:app``)."""

    include: str
    action: str  # create, update, destroy
    data: dict[str, Any]
    previous_data: dict[str, Any]
    app_id: str
    addon_id: str | None  # set for add-on and add-on attachment events
    actor: dict[str, str]


class World:
    """Everything the simulator knows; callers hold ``lock`` around reads and changes."""

    def __init__(self, clock: Clock, addon_service: str = "authz") -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.addon_service = addon_service
        self.users: dict[str, User] = {}
        self.teams: dict[str, Team] = {}
        self.apps: dict[str, App] = {}
        self.addons: dict[str, Addon] = {}
        self.listeners: list[Callable[[WorldEvent], None]] = []

    def now(self) -> str:
        return timestamp(self.clock())

    # -- lookups (accept ids, handles and names) -------------------------------------------

    def user(self, ref: Any) -> User:
        if isinstance(ref, str):
            if ref in self.users:
                return self.users[ref]
            for user in self.users.values():
                if ref == user.handle:
                    return user
        raise LookupError(f"unknown user {ref!r}")

    def team(self, ref: Any) -> Team:
        if isinstance(ref, str):
            if ref in self.teams:
                return self.teams[ref]
            for team in self.teams.values():
                if ref == team.name:
                    return team
        raise LookupError(f"unknown team {ref!r}")

    def app(self, ref: Any) -> App:
        if isinstance(ref, str):
            if ref in self.apps:
                return self.apps[ref]
            for app in self.apps.values():
                if ref == app.name:
                    return app
        raise LookupError(f"unknown app {ref!r}")

    def addon(self, ref: Any) -> Addon:
        if isinstance(ref, str):
            if ref in self.addons:
                return self.addons[ref]
            for addon in self.addons.values():
                if ref == addon.name:
                    return addon
        raise LookupError(f"unknown add-on {ref!r}")

    # -- changes ---------------------------------------------------------------------------

    def add_user(self, user: User) -> None:
        if user.id in self.users:
            raise ValueError(f"user {user.id} exists")
        self.users[user.id] = user

    def put_collaborator(
        self, app: App, user: User, role: Any, permissions: Any, *, announce: bool = True
    ) -> Collaborator:
        role = check_role(role, COLLABORATOR_ROLES, "collaborator")
        if permissions is None:
            perms = ["view"] if app.team_id else []
        else:
            perms = sorted(set(permissions))
        unknown = [p for p in perms if p not in PERMISSION_DESCRIPTIONS]
        if unknown:
            raise ValueError(
                f"unknown app permissions {unknown}; use view, deploy, operate, manage"
            )
        now = self.now()
        existing = app.collaborators.get(user.id)
        collab = Collaborator(
            id=existing.id if existing else derived_id("collaborator", app.id, user.id),
            user_id=user.id,
            role=role,
            permissions=perms,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        app.collaborators[user.id] = collab
        if announce:
            previous = {"role": existing.role} if existing and existing.role != role else {}
            action = "update" if existing else "create"
            self._collaborator_event(app, collab, action, previous)
        return collab

    def remove_collaborator(self, app: App, user: User) -> None:
        collab = app.collaborators.pop(user.id, None)
        if collab is None:
            raise LookupError(f"{user.id} is not a collaborator of {app.name}")
        self._collaborator_event(app, collab, "destroy", {})

    def put_team_member(
        self, team: Team, user: User, role: Any, identity_provider: Any = None
    ) -> TeamMember:
        # Team membership changes are announced to nobody: Heroku offers add-on partners no
        # team webhook (see webhooks.py), so the access-list TTL is the only bound there.
        role = check_role(role, TEAM_ROLES, "team")
        if identity_provider is not None and not isinstance(identity_provider, dict):
            raise ValueError("identity_provider must be an object such as {name: acme} or null")
        now = self.now()
        existing = team.members.get(user.id)
        member = TeamMember(
            id=existing.id if existing else derived_id("team-member", team.id, user.id),
            user_id=user.id,
            role=role,
            identity_provider=identity_provider,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        team.members[user.id] = member
        return member

    def update_app(self, app: App, *, name: str | None = None, owner: User | None = None) -> None:
        """Rename or transfer an app (announced as ``api:app`` update)."""
        previous: dict[str, Any] = {}
        if name is not None and name != app.name:
            if not _APP_NAME.match(name):
                raise ValueError("an app name is 2-30 lowercase letters, digits and dashes")
            if any(a.name == name for a in self.apps.values()):
                raise ValueError(f"the app name {name!r} is taken")
            previous["name"] = app.name
            app.name = name
        if owner is not None and owner.id != app.owner_id:
            previous["owner"] = self._owner_json(app)
            app.owner_id = owner.id
        if previous:
            app.updated_at = self.now()
            self.emit("api:app", "update", self.app_json(app), previous, app.id, None)

    def set_plan(self, addon: Addon, plan: str) -> None:
        """Change an add-on's plan (``service:plan``), announced as ``api:addon`` update."""
        full = self.plan_name(plan)
        if full == addon.plan:
            return
        previous = {"plan": self.plan_json(addon.plan)}
        addon.plan = full
        addon.updated_at = self.now()
        self.emit("api:addon", "update", self.addon_json(addon), previous, addon.app_id, addon.id)

    def set_state(self, addon: Addon, state: str) -> None:
        if state not in ADDON_STATES:
            raise ValueError(f"an add-on state is one of {', '.join(ADDON_STATES)}")
        if state == addon.state:
            return
        previous = {"state": addon.state}
        addon.state = state
        addon.updated_at = self.now()
        if state == "deprovisioned":
            attachment = self.attachment_json(addon)
            self.emit("api:addon-attachment", "destroy", attachment, {}, addon.app_id, addon.id)
            self.emit(
                "api:addon", "destroy", self.addon_json(addon), previous, addon.app_id, addon.id
            )
        elif state == "provisioned":
            self.emit(
                "api:addon", "update", self.addon_json(addon), previous, addon.app_id, addon.id
            )

    def plan_name(self, plan: str) -> str:
        """``basic`` or ``authz:basic`` -> ``authz:basic``; another service's plan is refused."""
        service, sep, slug = plan.partition(":")
        if not sep:
            service, slug = self.addon_service, plan
        if service != self.addon_service or not slug or not _ROLE_WORD.match(slug):
            raise ValueError(f"a plan is '{self.addon_service}:<plan>' or '<plan>', got {plan!r}")
        return f"{service}:{slug}"

    # -- events ----------------------------------------------------------------------------

    def emit(
        self,
        include: str,
        action: str,
        data: dict[str, Any],
        previous: dict[str, Any],
        app_id: str,
        addon_id: str | None,
    ) -> None:
        event = WorldEvent(include, action, data, previous, app_id, addon_id, self.actor())
        for listener in list(self.listeners):
            listener(event)

    def actor(self) -> dict[str, str]:
        """Who made a change: the simulated Heroku user ``heroku-sim`` (choice: one actor)."""
        return {"email": "heroku-sim@heroku.example", "id": derived_id("actor", "heroku-sim")}

    def _collaborator_event(
        self, app: App, collab: Collaborator, action: str, previous: dict[str, Any]
    ) -> None:
        self.emit(
            "api:collaborator",
            action,
            self.collaborator_json(app, collab),
            previous,
            app.id,
            None,
        )

    # -- JSON shapes (schema.json definitions) --------------------------------------------

    def plan_json(self, plan: str) -> dict[str, str]:
        return {"id": derived_id("plan", plan), "name": plan}

    def addon_json(self, addon: Addon) -> dict[str, Any]:
        app = self.apps[addon.app_id]
        return {
            "actions": [],
            "addon_service": {
                "id": derived_id("service", self.addon_service),
                "name": self.addon_service,
            },
            "app": {"id": app.id, "name": app.name},
            "billing_entity": {"id": app.id, "name": app.name, "type": "app"},
            "config_vars": [f"{self.addon_service.upper().replace('-', '_')}_URL"],
            "created_at": addon.created_at,
            "id": addon.id,
            "name": addon.name,
            "plan": self.plan_json(addon.plan),
            "provider_id": addon.id,
            "state": addon.state,
            "updated_at": addon.updated_at,
            "web_url": f"https://addons-sso.heroku.com/apps/{app.id}/addons/{addon.id}",
        }

    def attachment_json(self, addon: Addon) -> dict[str, Any]:
        """The add-on's one attachment to its app (the simulator models no other)."""
        app = self.apps[addon.app_id]
        return {
            "addon": {"id": addon.id, "name": addon.name, "app": {"id": app.id, "name": app.name}},
            "app": {"id": app.id, "name": app.name},
            "id": derived_id("attachment", addon.id),
            "name": self.addon_service.upper().replace("-", "_"),
            "created_at": addon.created_at,
            "updated_at": addon.updated_at,
            "web_url": None,
        }

    def _owner_json(self, app: App) -> dict[str, str]:
        owner = self.users[app.owner_id]
        return {"email": owner.email, "id": owner.id}

    def app_json(self, app: App) -> dict[str, Any]:
        team = self.teams.get(app.team_id) if app.team_id else None
        team_json = {"id": team.id, "name": team.name} if team else None
        region_id = REGION_IDS.get(app.region) or derived_id("region", app.region)
        stack = {"id": derived_id("stack", "heroku-24"), "name": "heroku-24"}
        return {
            "acm": False,
            "archived_at": None,
            "buildpack_provided_description": None,
            "build_stack": stack,
            "created_at": app.created_at,
            "git_url": f"https://git.heroku.com/{app.name}.git",
            "id": app.id,
            "maintenance": False,
            "name": app.name,
            "owner": self._owner_json(app),
            "organization": team_json,  # the older name of the same field
            "team": team_json,
            "region": {"id": region_id, "name": app.region},
            "released_at": app.updated_at,
            "repo_size": None,
            "slug_size": None,
            "space": None,
            "stack": stack,
            "updated_at": app.updated_at,
            "web_url": f"https://{app.name}.herokuapp.com/",
        }

    def collaborator_json(self, app: App, c: Collaborator) -> dict[str, Any]:
        user = self.users[c.user_id]
        return {
            "app": {"id": app.id, "name": app.name},
            "created_at": c.created_at,
            "id": c.id,
            "permissions": [
                {"name": p, "description": PERMISSION_DESCRIPTIONS[p]} for p in c.permissions
            ],
            "role": c.role,
            "updated_at": c.updated_at,
            "user": {"email": user.email, "federated": user.federated, "id": user.id},
        }

    def member_json(self, m: TeamMember) -> dict[str, Any]:
        user = self.users[m.user_id]
        return {
            "created_at": m.created_at,
            "email": user.email,
            "federated": user.federated,
            "id": m.id,
            "identity_provider": m.identity_provider,
            "role": m.role,
            "two_factor_authentication": user.two_factor,
            "updated_at": m.updated_at,
            "user": {"email": user.email, "id": user.id, "name": user.name},
        }
