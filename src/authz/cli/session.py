"""`authz session exchange | revoke`: Heroku SSO sessions, as the partner's web tier uses them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from authz.cli.common import (
    ExitCode,
    UsageError,
    add_client_arguments,
    add_command,
    add_json_flag,
    connect,
    print_json,
    when,
)
from authz.client import as_json


def parse_form(text: str, source: str) -> dict[str, str]:
    """Heroku's SSO form as the web tier received it: a urlencoded body
    (``resource_id=...&timestamp=...``) or a JSON object of fields."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}: not valid JSON ({exc})") from None
        bad = sorted(
            k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, str | int)
        )
        if bad:
            raise UsageError(
                f"{source}: form fields are strings (the timestamp may be a number); "
                f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not"
            )
        return {k: str(v) for k, v in data.items()}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError as exc:
        raise UsageError(
            f"{source}: neither a JSON object nor a urlencoded form (field=value&...): {exc}"
        ) from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise UsageError(f"{source}: the field {key!r} is given twice")
        form[key] = value
    return form


def read_form(args: argparse.Namespace) -> dict[str, str]:
    form: dict[str, str] = {}
    if args.form == "-":
        form = parse_form(sys.stdin.read(), "stdin")
    elif args.form:
        try:
            text = Path(args.form).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--form: cannot read {args.form}: {exc}") from None
        form = parse_form(text, args.form)
    for pair in args.field:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--field takes NAME=VALUE, got {pair!r}")
        form[key] = value
    if not form:
        raise UsageError("no form: give --form FILE (or - for stdin) and/or --field NAME=VALUE")
    return form


def cmd_exchange(args: argparse.Namespace) -> int:
    form = read_form(args)
    with connect(args) as authz:
        session = authz.exchange_sso(form, request_id=args.request_id or "")
    if args.token_only:
        print(session.session_token)
    elif args.json:
        print_json(as_json(session))
    else:
        print(session.session_token)
        print(
            f"  session for {session.principal} on addon:{session.resource_id}, "
            f"until {when(session.expires_at)} (decision {session.decision_id})"
        )
    return ExitCode.OK


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as authz:
        revoked = authz.revoke_session(args.session_token)
    if args.json:
        print_json({"revoked": revoked})
    else:
        print("session revoked" if revoked else "no such session (already ended or unknown)")
    return ExitCode.OK


def register(commands: Any) -> None:
    session = add_command(
        commands,
        "session",
        help="Heroku SSO sessions: exchange a form, revoke a session",
        example="authz dev sso-form --addon authz-curved-12345 --user carol | "
        "authz session exchange --form -",
    )
    group = session.add_subparsers(dest="session_command", metavar="COMMAND", required=True)
    exchange = add_command(
        group,
        "exchange",
        help="exchange a Heroku SSO form for a session token (SessionService.ExchangeSso)",
        description="Exchange the fields of Heroku's SSO form POST, unchanged, for a session "
        "token. A refused login exits 3 and names its reason (SSO_REPLAYED, LOGIN_DENIED, ...) "
        "and the decision that recorded it.",
        example="""
            authz session exchange --form sso-post.txt            # resource_id=...&timestamp=...
            SESSION=$(authz dev sso-form --addon authz-curved-12345 --user carol \\
                | authz session exchange --form - --token-only)
        """,
        func=cmd_exchange,
    )
    exchange.add_argument(
        "--form",
        metavar="FILE",
        help="the form: a urlencoded body or a JSON object; - reads stdin",
    )
    exchange.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a form field (repeatable; overrides the same field of --form)",
    )
    exchange.add_argument("--request-id", help="your request id, recorded with the decision")
    exchange.add_argument(
        "--token-only", action="store_true", help="print only the session token (for scripts)"
    )
    add_client_arguments(exchange)
    add_json_flag(exchange, "the session")

    revoke = add_command(
        group,
        "revoke",
        help="end a session (log out)",
        example='authz session revoke "$SESSION"',
        func=cmd_revoke,
    )
    revoke.add_argument("session_token", metavar="TOKEN")
    add_client_arguments(revoke)
    add_json_flag(revoke)
