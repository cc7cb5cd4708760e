"""`authz policy ...`: validate, test, lint and replay (argparse still in authz.policy.commands,
wrapped here until it moves into this package) and `policy status` of a running server."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import (
    ExitCode,
    add_client_arguments,
    add_command,
    add_json_flag,
    connect,
    print_json,
    set_example,
    subcommands,
    when,
)
from authz.client import as_json

# The examples the --help of the wrapped commands ends with.
EXAMPLES = {
    "validate": "authz policy validate policies --strict",
    "test": "authz policy test policies --min-coverage 100 --junit policy-tests.xml",
    "lint": "authz policy lint policies --json",
    "replay": "authz policy replay --candidate ./policies-next --since 7d",
}


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as authz:
        status = authz.policy_status()
    if args.json:
        print_json(as_json(status))
        return ExitCode.OK
    print(
        f"serving revision {status.policy_revision} from {status.policy_dir} "
        f"({status.policy_count} policies, {status.rule_count} rules), "
        f"loaded {when(status.loaded_at)}"
    )
    if status.last_refused_at is not None:
        print(f"last refused change at {when(status.last_refused_at)}:")
        for error in status.last_refused_errors:
            print(f"  {error}")
    else:
        print("no change refused since start")
    return ExitCode.OK


def register(commands: Any) -> None:
    from authz.policy.commands import add_policy_commands, add_validate_arguments, cmd_validate

    policy = add_command(
        commands,
        "policy",
        help="work on policy files",
        example="authz policy test policies",
    )
    group = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    validate = group.add_parser("validate", help="load, type-check and lint a policy directory")
    add_validate_arguments(validate)
    validate.set_defaults(func=cmd_validate)
    add_policy_commands(group)
    for name, parser in subcommands(policy).items():
        if name in EXAMPLES:
            set_example(parser, EXAMPLES[name])
    status = add_command(
        group,
        "status",
        help="ask a running server which policy revision serves",
        example="authz policy status --server 127.0.0.1:50051",
        func=cmd_status,
    )
    add_client_arguments(status)
    add_json_flag(status, "the status")
