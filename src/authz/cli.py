"""The `authz` command: a thin shell over the library."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

EXIT_ALLOW, EXIT_ERROR, EXIT_USAGE, EXIT_DENY = 0, 1, 2, 3


_SERVE_ENV = {
    "tls_cert": "AUTHZ_TLS_CERT",
    "tls_key": "AUTHZ_TLS_KEY",
    "client_ca": "AUTHZ_CLIENT_CA",
    "caller_tokens": "AUTHZ_CALLER_TOKENS",
    "admins": "AUTHZ_ADMINS",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from authz.config import ConfigError, Settings
    from authz.logs import configure_logging
    from authz.server.app import serve

    # Flags mirror the environment variables and win over them.
    env = dict(os.environ)
    for attr, name in _SERVE_ENV.items():
        value = getattr(args, attr, None)
        if value is not None:
            env[name] = value
    overrides: dict[str, Any] = {"insecure": bool(args.insecure)}
    if args.listen:
        overrides["listen"] = args.listen
    if args.http_listen:
        overrides["http_listen"] = args.http_listen
    if args.policies:
        overrides["policy_dir"] = Path(args.policies)
    if args.data_dir:
        overrides["data_dir"] = Path(args.data_dir)
    try:
        settings = replace(Settings.from_env(env), **overrides)
        configure_logging(settings.log_level, settings.log_format)
        asyncio.run(serve(settings))
    except (ConfigError, OSError) as exc:
        print(f"authz serve: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR
    return 0


def _key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"authz: {flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _type_id(value: str, flag: str) -> tuple[str, str]:
    kind, sep, ident = value.partition(":")
    if not sep or not kind or not ident:
        raise SystemExit(f"authz: {flag} takes TYPE:ID, e.g. heroku_user:1234, got {value!r}")
    return kind, ident


def cmd_check(args: argparse.Namespace) -> int:
    import grpc

    from authz.server.convert import dict_to_struct
    from authz.v1 import authorization_pb2 as pb
    from authz.v1 import authorization_pb2_grpc as pb_grpc

    r_type, r_id = _type_id(args.resource, "--resource")
    request = pb.CheckRequest(
        action=args.action,
        resource=pb.Resource(
            type=r_type,
            id=r_id,
            attributes=dict_to_struct(_key_values(args.resource_attr, "--resource-attr")),
        ),
        context=dict_to_struct(_key_values(args.context, "--context")),
        request_id=args.request_id or "",
    )
    if args.session:
        request.session_token = args.session
    elif args.principal:
        p_type, p_id = _type_id(args.principal, "--principal")
        request.principal.CopyFrom(
            pb.Principal(
                type=p_type, id=p_id, attributes=dict_to_struct(_key_values(args.attr, "--attr"))
            )
        )
    else:
        raise SystemExit("authz: name the subject with --principal TYPE:ID or --session TOKEN")
    with grpc.insecure_channel(args.server) as channel:
        try:
            response = pb_grpc.AuthorizationServiceStub(channel).Check(
                request, timeout=args.timeout, metadata=_credentials(args)
            )
        except grpc.RpcError as exc:
            print(f"authz: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response), indent=2))
    else:
        print(format_decision(response))
    return EXIT_ALLOW if response.allowed else EXIT_DENY


def format_decision(response: Any) -> str:
    from authz.v1 import authorization_pb2 as pb

    lines = [
        f"{'ALLOW' if response.allowed else 'DENY'}  decision {response.decision_id}"
        f"  policy revision {response.policy_revision}"
    ]
    for rule in response.matched_rules:
        lines.append(
            f"  matched {pb.Effect.Name(rule.effect)[7:].lower():5} "
            f"{rule.policy}/{rule.rule_id}: {rule.reason}"
        )
    for reason in response.reasons:
        lines.append(f"  reason: {reason}")
    for error in response.errors:
        lines.append(f"  error: {error}")
    return "\n".join(lines)


def cmd_policy_status(args: argparse.Namespace) -> int:
    import grpc

    from authz.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(args.server) as channel:
        try:
            status = admin_pb2_grpc.AdminServiceStub(channel).GetPolicyStatus(
                admin_pb2.GetPolicyStatusRequest(),
                timeout=args.timeout,
                metadata=_credentials(args),
            )
        except grpc.RpcError as exc:
            print(f"authz: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    loaded = status.loaded_at.ToDatetime().isoformat(timespec="seconds")
    print(
        f"serving revision {status.policy_revision} from {status.policy_dir} "
        f"({status.policy_count} policies, {status.rule_count} rules), loaded {loaded}Z"
    )
    if status.HasField("last_refused_at"):
        refused = status.last_refused_at.ToDatetime().isoformat(timespec="seconds")
        print(f"last refused change at {refused}Z:")
        for error in status.last_refused_errors:
            print(f"  {error}")
    else:
        print("no change refused since start")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from authz.audit.errors import AuditError
    from authz.audit.schema import audit_target, migrate_audit
    from authz.config import ConfigError, Settings
    from authz.store import StoreError, migrate, open_store

    try:
        settings = Settings.from_env()
        target = args.database_url or settings.database_url or settings.data_dir / "state.db"
        with open_store(target) as db:
            applied = migrate(db)
            where = db.location
        url = args.database_url or settings.database_url
        audit_applied = migrate_audit(audit_target(settings.data_dir, url))
    except (ConfigError, StoreError, AuditError) as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{where}: applied schema versions {applied}" if applied else f"{where}: up to date")
    print(
        f"audit log: applied schema versions {audit_applied}"
        if audit_applied
        else "audit log: up to date"
    )
    return 0


def cmd_heroku_sim(args: argparse.Namespace) -> int:
    from authz.devtools.heroku_sim import serve_forever

    serve_forever(args.host, args.port, args.fixture)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from authz.demo import main as demo_main

    return demo_main(Path(args.policies))


def _add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("AUTHZ_CALLER_TOKEN"),
        help="this caller's bearer token (default AUTHZ_CALLER_TOKEN), when the server needs one",
    )


def _credentials(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the decision service (gRPC, and HTTP if asked)")
    serve.add_argument("--listen", help="gRPC host:port (default AUTHZ_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--http-listen",
        help="HTTP listener host:port (default AUTHZ_HTTP_LISTEN, or 0.0.0.0:$PORT; "
        "off when neither is set)",
    )
    serve.add_argument(
        "--policies", help="policy directory (default AUTHZ_POLICY_DIR or ./policies)"
    )
    serve.add_argument(
        "--data-dir", help="embedded store directory (default AUTHZ_DATA_DIR or ./data)"
    )
    serve.add_argument("--tls-cert", help="server certificate chain, PEM (AUTHZ_TLS_CERT)")
    serve.add_argument("--tls-key", help="server private key, PEM (AUTHZ_TLS_KEY)")
    serve.add_argument(
        "--client-ca", help="CA of client certificates; turns on mutual TLS (AUTHZ_CLIENT_CA)"
    )
    serve.add_argument(
        "--caller-tokens",
        help="file of 'name sha256-hex-of-token' lines for bearer tokens (AUTHZ_CALLER_TOKENS)",
    )
    serve.add_argument(
        "--admins", help="comma-separated caller identities allowed on AdminService (AUTHZ_ADMINS)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address (or PORT) without caller authentication",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="ask a running server for one decision")
    check.add_argument("--server", default=os.environ.get("AUTHZ_SERVER", "127.0.0.1:50051"))
    check.add_argument("--principal", help="TYPE:ID")
    check.add_argument("--session", help="a session token from an SSO exchange")
    check.add_argument("--action", required=True)
    check.add_argument("--resource", required=True, help="TYPE:ID")
    check.add_argument("--attr", action="append", default=[], help="principal attribute KEY=VALUE")
    check.add_argument(
        "--resource-attr", action="append", default=[], help="resource attribute KEY=VALUE"
    )
    check.add_argument("--context", action="append", default=[], help="context KEY=VALUE")
    check.add_argument("--request-id")
    check.add_argument("--timeout", type=float, default=5.0)
    _add_token_argument(check)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    policy = sub.add_parser("policy", help="work on policy files").add_subparsers(
        dest="policy_command", required=True
    )
    from authz.policy.commands import add_policy_commands, add_validate_arguments, cmd_validate

    validate = policy.add_parser("validate", help="load, type-check and lint a policy directory")
    add_validate_arguments(validate)
    validate.set_defaults(func=cmd_validate)
    add_policy_commands(policy)
    status = policy.add_parser("status", help="ask a running server which policy revision serves")
    status.add_argument("--server", default=os.environ.get("AUTHZ_SERVER", "127.0.0.1:50051"))
    status.add_argument("--timeout", type=float, default=5.0)
    _add_token_argument(status)
    status.set_defaults(func=cmd_policy_status)

    from authz.audit.commands import add_audit_commands

    add_audit_commands(sub)

    db = sub.add_parser("db", help="the shared store").add_subparsers(
        dest="db_command", required=True
    )
    migrate = db.add_parser("migrate", help="apply schema migrations (the server also does)")
    migrate.add_argument("--database-url", help="default AUTHZ_DATABASE_URL / DATABASE_URL")
    migrate.set_defaults(func=cmd_db_migrate)
    from authz.dbcopy import add_copy_command

    add_copy_command(db)

    dev = sub.add_parser("dev", help="development tools").add_subparsers(
        dest="dev_command", required=True
    )
    sim = dev.add_parser("heroku-sim", help="run the Heroku Platform API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=5800)
    sim.add_argument("--fixture", help="YAML world (default: the bundled demo fixture)")
    sim.set_defaults(func=cmd_heroku_sim)

    demo = sub.add_parser("demo", help="run a server and a scripted partner client against it")
    demo.add_argument("--policies", default="policies")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
