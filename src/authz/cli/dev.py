"""`authz dev up | sso-form | heroku-sim` and `authz demo`: development tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from authz.cli.common import ExitCode, UsageError, add_command, add_json_flag, fail


def invoked_as() -> str:
    """How the user called authz, for commands printed to paste: the same script, or the same
    interpreter with -m authz.cli."""
    program = sys.argv[0]
    if program.endswith("__main__.py") or not program:
        return f"{shlex.quote(sys.executable)} -m authz.cli"
    return shlex.quote(program)


def cmd_up(args: argparse.Namespace) -> int:
    from authz.config import Settings
    from authz.devtools.dev_world import DevUp, DevWorldError, dev_up
    from authz.server import eventloop

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = DevUp(
        data_dir=Path(args.data),
        policy_dir=Path(args.policies),
        listen=args.listen,
        http_listen=args.http_listen,
        heroku_listen=args.heroku_listen,
        program=invoked_as(),
        dashboard=args.dashboard,
        dashboard_listen=args.dashboard_listen,
        dashboard_dir=Path(args.dashboard_dir),
    )
    try:
        eventloop.run(Settings.event_loop, lambda: dev_up(options))
    except DevWorldError as exc:
        return fail(args, str(exc), ExitCode.ERROR)
    return ExitCode.OK


def cmd_sso_form(args: argparse.Namespace) -> int:
    from authz.config import ConfigError, Settings
    from authz.devtools.dev_world import DevWorldError, dev_salt, fixture_sso_form

    configured = [n for n in ("AUTHZ_SSO_SALT", "AUTHZ_SSO_SALT_FILE") if os.environ.get(n)]
    if configured and not args.for_testing:
        # A form signed with a deployment's salt logs in as whoever it names wherever that salt
        # is accepted: sign with it only when told this is a test.
        raise UsageError(
            f"{configured[0]} is set, and a form signed with its salt logs in as whoever it "
            "names wherever that salt is accepted (production too, if it is production's). "
            "This command is for testing only: add --for-testing to sign with it, or unset "
            f"{configured[0]} to sign with the development salt of `authz dev up`"
        )
    try:
        salt = Settings.from_env().sso_salts[0] if configured else dev_salt()
        form = fixture_sso_form(
            args.addon,
            args.user,
            salt,
            email=args.email,
            timestamp=args.timestamp,
            token=args.token,
        )
    except (ConfigError, DevWorldError) as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(form, indent=2) if args.json else urlencode(form))
    return ExitCode.OK


def cmd_heroku_sim(args: argparse.Namespace) -> int:
    from authz.devtools.heroku_sim import serve_forever

    serve_forever(args.host, args.port, args.fixture)
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from authz.demo import main as demo_main

    return demo_main(Path(args.policies))


def register(commands: Any) -> None:
    dev = add_command(
        commands,
        "dev",
        help="development tools: a local world, signed SSO forms, the Heroku simulator",
        example="authz dev up",
    )
    group = dev.add_subparsers(dest="dev_command", metavar="COMMAND", required=True)

    up = add_command(
        group,
        "up",
        help="run the Heroku simulator and an authz server wired to it, until Ctrl-C",
        description="Run the Heroku simulator and an authz server wired to it (loopback, "
        "development mode, gRPC and HTTP), provision two add-ons (a personal app's and a team "
        "app's), log two users in, and print commands to paste that get an ALLOW and a DENY. "
        "Data stays in --data, so `authz audit ...` works on it afterwards; running it again "
        "on the same folder goes on with the same data. With --dashboard, the example partner "
        "dashboard (examples/heroku-dashboard) runs beside them, opened as any Heroku user from "
        "the simulator's /__sim/dashboard page. Ctrl-C (or SIGTERM) stops everything and exits 0.",
        example="authz dev up --data data/dev",
        func=cmd_up,
    )
    up.add_argument(
        "--data", default="data/dev", metavar="DIR", help="the world's data folder (data/dev)"
    )
    up.add_argument(
        "--policies",
        default=os.environ.get("AUTHZ_POLICY_DIR") or "policies",
        metavar="DIR",
        help="policy directory (default AUTHZ_POLICY_DIR or ./policies)",
    )
    up.add_argument(
        "--listen",
        default=os.environ.get("AUTHZ_LISTEN") or "127.0.0.1:50051",
        help="gRPC host:port, loopback (default AUTHZ_LISTEN or 127.0.0.1:50051)",
    )
    up.add_argument(
        "--http-listen",
        default=os.environ.get("AUTHZ_HTTP_LISTEN") or "127.0.0.1:8080",
        help="HTTP host:port, loopback (default AUTHZ_HTTP_LISTEN or 127.0.0.1:8080)",
    )
    up.add_argument(
        "--heroku-listen",
        default="127.0.0.1:0",
        help="the simulator's host:port (default: a free port on 127.0.0.1)",
    )
    up.add_argument(
        "--dashboard",
        action="store_true",
        help="also serve the example partner dashboard (needs authz[dashboard]) and subscribe "
        "add-ons to the simulator's webhooks",
    )
    up.add_argument(
        "--dashboard-listen",
        default="127.0.0.1:8090",
        help="the example dashboard's host:port (default 127.0.0.1:8090)",
    )
    up.add_argument(
        "--dashboard-dir",
        default="examples/heroku-dashboard",
        metavar="DIR",
        help="where the example dashboard is (default examples/heroku-dashboard)",
    )

    form = add_command(
        group,
        "sso-form",
        help="sign a Heroku SSO form, for testing only",
        description="Print the SSO form Heroku's dashboard would POST for a user opening an "
        "add-on, urlencoded (or --json), signed with the development salt of `authz dev up`. "
        "When AUTHZ_SSO_SALT is set it refuses to run unless --for-testing says this is a "
        "test: a form signed with a deployment's salt logs that user in.",
        example="authz dev sso-form --addon authz-curved-12345 --user carol "
        "| authz session exchange --form -",
        func=cmd_sso_form,
    )
    form.add_argument(
        "--addon",
        required=True,
        metavar="NAME_OR_ID",
        help="an add-on of the simulator's fixture (authz-curved-12345), or a resource id",
    )
    form.add_argument(
        "--user",
        required=True,
        metavar="HANDLE_OR_ID",
        help="a user of the simulator's fixture (alice, carol, erin...), or a user id with --email",
    )
    form.add_argument("--email", help="the user's email (default: the fixture's)")
    form.add_argument("--timestamp", type=int, help="seconds since the epoch (default: now)")
    form.add_argument(
        "--token",
        choices=("sha256", "sha1", "both"),
        default="both",
        help="which signatures to include (default both, as Heroku sends)",
    )
    form.add_argument(
        "--for-testing",
        action="store_true",
        help="sign with AUTHZ_SSO_SALT: this is a test, and the form may log its user in",
    )
    add_json_flag(form, "the form")

    sim = add_command(
        group,
        "heroku-sim",
        help="run the Heroku Platform API simulator",
        example="authz dev heroku-sim --port 5800",
        func=cmd_heroku_sim,
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=5800)
    sim.add_argument("--fixture", help="YAML world (default: the bundled demo fixture)")

    demo = add_command(
        commands,
        "demo",
        help="run a server and a scripted partner client against it (make demo)",
        description="Run the Heroku simulator, a server wired to it, and a scripted partner "
        "that provisions add-ons, logs users in and asks for decisions; ends by itself.",
        example="authz demo --policies policies",
        func=cmd_demo,
    )
    demo.add_argument("--policies", default="policies")
