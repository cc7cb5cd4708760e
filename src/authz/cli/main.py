"""The `authz` command: one parser over the library; each command parses its flags and makes
one library call. Exit codes: `ExitCode` (authz.cli.common), the README's "Exit codes" table."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from authz.cli import addon, audit, check, db, dev, policy, serve, session
from authz.cli.common import ExitCode, UsageError, exit_code_for, fail
from authz.client import AuthzCallError

__all__ = ["ExitCode", "build_parser", "main"]

COMMAND_GROUPS = (serve, check, session, addon, policy, audit, db, dev)


def _version() -> str:
    try:
        return version("authz")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from authz import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authz",
        description="authz: the authorization service of a Heroku add-on partner.",
        epilog="example:\n  authz dev up        # a local world to try everything on\n\n"
        "exit codes: 0 ok/ALLOW, 1 error, 2 usage, 3 DENY or refused, 4 replay flips, "
        "5 not found, 6 audit log tampered, 130 interrupted (README: Exit codes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"authz {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Each command knows its full name (`authz addon show`), for its messages."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(prog=sub.prog)
                _name_commands(sub)


def main(argv: list[str] | None = None) -> int:
    from authz.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        return fail(args, str(exc), ExitCode.USAGE)
    except ConfigError as exc:
        return fail(args, str(exc), ExitCode.USAGE)
    except AuthzCallError as exc:
        return fail(args, str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
