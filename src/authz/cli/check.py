"""`authz check`: ask a running server for one decision."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import (
    ExitCode,
    UsageError,
    add_client_arguments,
    add_command,
    add_json_flag,
    connect,
    entity,
    key_values,
    print_json,
)
from authz.client import as_json, format_decision


def cmd_check(args: argparse.Namespace) -> int:
    if (args.session is None) == (args.principal is None):
        raise UsageError("name the subject with --principal TYPE:ID or --session TOKEN (one)")
    principal = None
    if args.principal is not None:
        principal = entity(args.principal, "--principal", key_values(args.attr, "--attr"))
    elif args.attr:
        raise UsageError("--attr describes a --principal; a session's principal is the server's")
    resource = entity(
        args.resource, "--resource", key_values(args.resource_attr, "--resource-attr")
    )
    with connect(args) as authz:
        decision = authz.check(
            args.action,
            resource,
            session=args.session,
            principal=principal,
            context=key_values(args.context, "--context"),
            request_id=args.request_id or "",
        )
    if args.json:
        print_json(as_json(decision))
    else:
        print(format_decision(decision))
    return ExitCode.OK if decision.allowed else ExitCode.DENY


def register(commands: Any) -> None:
    check = add_command(
        commands,
        "check",
        help="ask a running server for one decision",
        description="Ask a running server for one decision; exit 0 on ALLOW, 3 on DENY.",
        example="""
            authz check --session "$SESSION" --action dashboard.view --resource addon:RESOURCE_ID
            authz check --principal service:billing --action account.login_password \\
                --resource account:1 --attr team=payments
        """,
        func=cmd_check,
    )
    check.add_argument("--principal", metavar="TYPE:ID", help="who asks, named by the caller")
    check.add_argument(
        "--session", metavar="TOKEN", help="a session token from `authz session exchange`"
    )
    check.add_argument("--action", required=True)
    check.add_argument("--resource", required=True, metavar="TYPE:ID")
    check.add_argument(
        "--attr", action="append", default=[], metavar="KEY=VALUE", help="principal attribute"
    )
    check.add_argument(
        "--resource-attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="resource attribute",
    )
    check.add_argument(
        "--context", action="append", default=[], metavar="KEY=VALUE", help="request context"
    )
    check.add_argument("--request-id", help="your request id, recorded with the decision")
    add_client_arguments(check)
    add_json_flag(check, "the decision")
