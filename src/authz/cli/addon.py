"""`authz addon register | deprovision | show`: the add-on registry."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.cli.common import (
    ExitCode,
    add_client_arguments,
    add_command,
    add_json_flag,
    connect,
    fail,
    print_json,
    when,
)
from authz.client import Addon, as_json
from authz.config import Settings


def describe(addon: Addon) -> str:
    app = f"{addon.app_name} ({addon.app_id})" if addon.app_name else addon.app_id or "-"
    tokens = "stored, encrypted" if addon.has_oauth_tokens else "none stored"
    return "\n".join(
        [
            f"addon:{addon.resource_id}  {addon.state}",
            f"  app:          {app}",
            f"  plan:         {addon.plan or '-'}, region {addon.region or '-'}",
            f"  OAuth tokens: {tokens}",
            f"  created:      {when(addon.created_at)}, updated {when(addon.updated_at)}",
        ]
    )


def cmd_register(args: argparse.Namespace) -> int:
    with connect(args) as authz:
        registration = authz.register_addon(
            args.resource_id,
            app_id=args.app_id or "",
            app_name=args.app_name or "",
            plan=args.plan or "",
            region=args.region or "",
            oauth_grant_code=args.grant_code or "",
            name=args.name or "",
        )
    if args.json:
        print_json(as_json(registration))
    else:
        print(describe(registration.addon))
        if not registration.changed:
            print("(already registered like this: nothing changed)")
    return ExitCode.OK


def cmd_deprovision(args: argparse.Namespace) -> int:
    with connect(args) as authz:
        result = authz.deprovision_addon(args.resource_id)
    if args.json:
        print_json(as_json(result))
    else:
        print(describe(result.addon))
        print(f"{result.sessions_revoked} session(s) ended")
    return ExitCode.OK


def read_addon(settings: Settings, resource_id: str) -> Addon | None:
    """The registry's record, read from the state store the settings name (no server needed)."""
    from authz.clock import system_clock
    from authz.facts.addons import AddonRegistry
    from authz.facts.oauth_tokens import OAuthTokenStore
    from authz.store import open_store

    with open_store(settings.state_target) as db:
        found = AddonRegistry(db, system_clock).get(resource_id)
        if found is None:
            return None
        has_tokens = OAuthTokenStore(db, "").has(found.resource_id)

    def time(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    return Addon(
        resource_id=found.resource_id,
        app_id=found.app_id,
        app_name=found.app_name,
        plan=found.plan,
        region=found.region,
        state=found.state,
        created_at=time(found.created_at),
        updated_at=time(found.updated_at),
        has_oauth_tokens=has_tokens,
    )


def cmd_show(args: argparse.Namespace) -> int:
    from authz.store import StoreError, is_postgres_url, redact_url

    settings = Settings.from_env()
    if args.data_dir:
        settings = replace(settings, data_dir=Path(args.data_dir), database_url=None)
    target = settings.state_target
    if not is_postgres_url(target) and not Path(target).is_file():
        return fail(
            args,
            f"no state store at {target}: point AUTHZ_DATA_DIR (or --data-dir) at the server's "
            "data directory, or set DATABASE_URL to its PostgreSQL database",
            ExitCode.ERROR,
        )
    try:
        addon = read_addon(settings, args.resource_id)
    except StoreError as exc:
        return fail(args, str(exc), ExitCode.ERROR)
    if addon is None:
        where = redact_url(target) if isinstance(target, str) else target
        return fail(
            args, f"no add-on {args.resource_id} in the registry at {where}", ExitCode.NOT_FOUND
        )
    if args.json:
        print_json(as_json(addon))
    else:
        print(describe(addon))
    return ExitCode.OK


def register(commands: Any) -> None:
    addon = add_command(
        commands,
        "addon",
        help="the add-on registry: register, deprovision, show",
        example="authz addon show ce9b8461-8f28-4524-bffc-bd6d349c4ef0",
    )
    group = addon.add_subparsers(dest="addon_command", metavar="COMMAND", required=True)

    reg = add_command(
        group,
        "register",
        help="record a provisioned add-on, as Heroku's provisioning call does (admins only)",
        description="Record a provisioned add-on (RegisterAddon; idempotent), from what Heroku's "
        "provisioning call carries: its uuid, plan, region, name and OAuth grant. The server "
        "exchanges the grant for Platform API tokens at once (a grant works once and expires "
        "minutes after provisioning) and learns the add-on's app from Heroku; --app-id and "
        "--app-name are then only checked against Heroku's answer (without a grant they say "
        "which app the add-on belongs to).",
        example="""
            authz addon register ce9b8461-8f28-4524-bffc-bd6d349c4ef0 --plan basic \\
                --region amazon-web-services::us-east-1 --grant-code "$GRANT_CODE"
        """,
        func=cmd_register,
    )
    reg.add_argument("resource_id", metavar="RESOURCE_ID", help="the add-on's uuid (Heroku's)")
    reg.add_argument("--app-id", help="the Heroku app's id (optional: the grant tells the server)")
    reg.add_argument("--app-name", help="the Heroku app's name (optional, as --app-id)")
    reg.add_argument("--plan", help="the plan's slug, e.g. basic")
    reg.add_argument("--region", help="Heroku's region, e.g. amazon-web-services::us-east-1")
    reg.add_argument("--name", help="Heroku's name of the add-on, e.g. acme-billing-db")
    reg.add_argument("--grant-code", metavar="CODE", help="provisioning's oauth_grant.code")
    add_client_arguments(reg)
    add_json_flag(reg, "the stored record")

    dep = add_command(
        group,
        "deprovision",
        help="end an add-on: its sessions stop working, logins are refused (admins only)",
        example="authz addon deprovision ce9b8461-8f28-4524-bffc-bd6d349c4ef0",
        func=cmd_deprovision,
    )
    dep.add_argument("resource_id", metavar="RESOURCE_ID")
    add_client_arguments(dep)
    add_json_flag(dep, "the record and the sessions ended")

    show = add_command(
        group,
        "show",
        help="print an add-on's registry record (read from the state store, no server needed)",
        description="Print an add-on's registry record, read from the state store: "
        "AUTHZ_DATA_DIR/state.db (or --data-dir), or DATABASE_URL's PostgreSQL database.",
        example="AUTHZ_DATA_DIR=data/dev authz addon show ce9b8461-8f28-4524-bffc-bd6d349c4ef0",
        func=cmd_show,
    )
    show.add_argument("resource_id", metavar="RESOURCE_ID")
    show.add_argument(
        "--data-dir", help="the server's data directory (default AUTHZ_DATA_DIR or ./data)"
    )
    add_json_flag(show, "the record")
