"""What every `authz` command shares: the exit codes, the client flags, errors and output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from authz.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, AuthzCallError, AuthzClient, Entity, Tls


class ExitCode(IntEnum):
    """How every `authz` command exits; the README's "Exit codes" table lists the same."""

    OK = 0
    """Done; `check`: ALLOW."""
    ERROR = 1
    """No answer: the server is unreachable, too slow or failed, the caller is not authenticated,
    a file or database cannot be read. (policy validate/test: problems found; audit: see the
    README's table.)"""
    USAGE = 2
    """Bad arguments or settings, or a request the server calls invalid: the message says what
    to fix."""
    DENY = 3
    """The answer is no: `check` got a DENY, or the server refused (an SSO login, a caller that
    is not an admin, a deprovisioned add-on)."""
    FLIPS = 4
    """`policy replay`: recorded decisions would flip under the candidate set."""
    NOT_FOUND = 5
    """What the command names does not exist (an add-on, a rule, an audit log, a decision)."""
    POLICY_REFUSED = 6
    """`policy validate/test/eval/explain/replay`: the policy set does not load (a YAML, type or
    schema error, or a lint error; with --strict, any warning)."""
    TESTS_FAILED = 7
    """`policy test`: the set loads but a test failed."""
    COVERAGE_LOW = 8
    """`policy test --min-coverage N`: every test passed but rule coverage is below N %."""
    TAMPERED = 9
    """`audit verify`, `checkpoint`, `prune`: the audit log's hash chain does not verify."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (the shell's 128 + SIGINT); `dev up` and `serve` exit 0 instead."""


class UsageError(Exception):
    """A command was called wrongly; main() prints the message and exits USAGE."""


Handler = Callable[[argparse.Namespace], int]


def add_command(
    group: Any,  # argparse._SubParsersAction
    name: str,
    *,
    help: str,
    example: str,
    func: Handler | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with an example (one or more lines)."""
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    set_example(parser, example)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def set_example(parser: argparse.ArgumentParser, example: str) -> None:
    parser.epilog = "example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  ")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def fail(args: argparse.Namespace, message: str, code: ExitCode) -> ExitCode:
    print(f"{getattr(args, 'prog', 'authz')}: {message}", file=sys.stderr)
    return code


def exit_code_for(error: AuthzCallError) -> ExitCode:
    """One mapping from a failed call to an exit code, for every command that calls a server."""
    from authz.client import AuthzInvalid, AuthzNotFound, AuthzRefused

    if isinstance(error, AuthzInvalid):
        return ExitCode.USAGE
    if isinstance(error, AuthzRefused):
        return ExitCode.DENY
    if isinstance(error, AuthzNotFound):
        return ExitCode.NOT_FOUND
    return ExitCode.ERROR


# -- calling a server ----------------------------------------------------------------------------


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """--server, credentials and --timeout, for every command that calls a running server."""
    parser.add_argument(
        "--server",
        default=os.environ.get("AUTHZ_SERVER") or DEFAULT_TARGET,
        help=f"the server's gRPC address (default AUTHZ_SERVER or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("AUTHZ_CALLER_TOKEN") or None,
        help="this caller's bearer token, when the server needs one (default AUTHZ_CALLER_TOKEN; "
        "prefer it: a token on the command line shows in the process list)",
    )
    parser.add_argument("--tls", action="store_true", help="TLS, verified with the system's CAs")
    parser.add_argument("--tls-ca", metavar="PEM", help="TLS, verified with this CA")
    parser.add_argument(
        "--tls-cert", metavar="PEM", help="this client's certificate chain (mutual TLS)"
    )
    parser.add_argument("--tls-key", metavar="PEM", help="this client's private key (mutual TLS)")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="the name the server's certificate must carry"
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="allow a server that is not on this machine without TLS (a private network only)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"deadline of the call (default {DEFAULT_TIMEOUT:g})",
    )


def connect(args: argparse.Namespace) -> AuthzClient:
    """The client the flags describe; UsageError naming the flag that is wrong."""
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        try:
            tls = Tls.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"--tls-cert and --tls-key: {exc}") from None
    try:
        return AuthzClient(
            args.server,
            token=args.token,
            tls=tls,
            plaintext=args.plaintext,
            timeout=args.timeout,
        )
    except ValueError as exc:
        raise UsageError(f"--server: {exc}") from None


# -- parsing values ------------------------------------------------------------------------------


def key_values(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that is JSON (a number, true, a list...) is taken as such."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def entity(text: str, flag: str, attributes: dict[str, Any] | None = None) -> Entity:
    try:
        return Entity.parse(text, attributes)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of `parser` by name ({} when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def when(value: datetime | None) -> str:
    """A time as RFC 3339 UTC to the second, or "-"."""
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
