"""`authz serve`: run the decision service."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from authz.cli.common import ExitCode, add_command, fail
from authz.logs import configure_logging

# Flags that mirror an environment variable, and win over it.
_SERVE_ENV = {
    "tls_cert": "AUTHZ_TLS_CERT",
    "tls_key": "AUTHZ_TLS_KEY",
    "client_ca": "AUTHZ_CLIENT_CA",
    "caller_tokens": "AUTHZ_CALLER_TOKENS",
    "admins": "AUTHZ_ADMINS",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from authz.config import ConfigError, Settings
    from authz.policy.model import PolicyError
    from authz.server import eventloop
    from authz.server.app import serve
    from authz.server.workers import Supervisor, worker_count

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
        workers = worker_count(args.workers, env)
        configure_logging(settings.log_level, settings.log_format)
        if workers > 1:
            return Supervisor(settings, workers).run()
        eventloop.run(settings.event_loop, lambda: serve(settings))
    except ConfigError as exc:
        return fail(args, str(exc), ExitCode.USAGE)
    except (OSError, PolicyError) as exc:  # PolicyError: the policies cannot be served
        return fail(args, str(exc), ExitCode.ERROR)
    return ExitCode.OK


def register(commands: Any) -> None:
    serve = add_command(
        commands,
        "serve",
        help="run the decision service (gRPC, and HTTP if asked)",
        description="Run the decision service until SIGTERM or SIGINT (then exit 0). Settings "
        "come from the environment (see the README's Configuration); flags win over it. State "
        "and the audit log live under AUTHZ_DATA_DIR, or in DATABASE_URL's PostgreSQL.",
        example="authz serve --listen 127.0.0.1:50051 --http-listen 127.0.0.1:8080",
        func=cmd_serve,
    )
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
        "--workers",
        metavar="N",
        help="worker processes sharing the ports (default WEB_CONCURRENCY, else one per core; "
        "1: a single process)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address (or PORT) without caller authentication",
    )
