"""A server for the end-to-end parts, run in its own process: authz itself, or a no-op baseline.

``python -m authz.bench.serve --kind authz|noop [...]`` prints one JSON line ``{"port": N, ...}``
once it serves, and stops (gracefully, printing a last JSON line with its audit counters) on
SIGTERM/SIGINT, when its standard input closes (the parent went away), or after ``--max-seconds``
whatever happens, so nothing is ever left running.

The no-op server is built exactly like authz's (``grpc.aio.server`` with the same options, the
same generated ``AuthorizationService`` servicer base, health and reflection registered), but its
``Check`` returns one constant response: it measures what the gRPC layer alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz.server.grpc_endpoints import prefer_posix_endpoints

prefer_posix_endpoints()  # as the `authz` command does, before grpc is imported

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

from authz.config import CPU_AFFINITIES, EVENT_LOOPS, RECALL_MODES, Settings  # noqa: E402
from authz.server import app, eventloop, transport  # noqa: E402
from authz.server.app import SERVICE_NAMES, start_service  # noqa: E402
from authz.server.registration import EdgeLayer, Services, enable_reflection  # noqa: E402
from authz.v1 import authorization_pb2 as pb  # noqa: E402
from authz.v1 import authorization_pb2_grpc as pb_grpc  # noqa: E402

# Built exactly as start_service builds authz's server (authz/server/app.py): same options, same
# limit on calls in flight; these defaults apply only if app.py no longer names them.
_DEFAULT_OPTIONS = (
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    ("grpc.so_reuseport", 0),
)
SERVER_OPTIONS: list[tuple[str, Any]] = list(getattr(app, "SERVER_OPTIONS", _DEFAULT_OPTIONS))


def _server_kwargs() -> dict[str, Any]:
    defaults = Settings()
    ageing = getattr(transport, "connection_age_options", None)
    age = ageing(defaults.max_connection_age) if ageing is not None else ()
    kwargs: dict[str, Any] = {"options": [*SERVER_OPTIONS, *age]}
    limit = getattr(defaults, "max_concurrent_rpcs", None)
    if limit:
        kwargs["maximum_concurrent_rpcs"] = limit
    return kwargs


def authz_admission(request_timeout: float = Settings.request_timeout) -> list[EdgeLayer]:
    """The caller admission of authz's gRPC edge in development mode (loopback, no caller
    credentials): caller identity, budgets and the guarded request read; ``request_timeout`` 0
    is AUTHZ_REQUEST_TIMEOUT=0 (grpc reads unary requests, without the read guard)."""
    from authz.server.transport import plan_transport

    settings = Settings(listen="127.0.0.1:0", request_timeout=request_timeout)
    return [plan_transport(settings).admission.handler_for]


# A response of the size and shape of a real ALLOW.
CONSTANT_RESPONSE = pb.CheckResponse(
    effect=pb.EFFECT_ALLOW,
    allowed=True,
    decision_id="0192f1c4-7e3a-7b2d-8c4e-5f6a7b8c9d0e",
    policy_revision="68f41ee94b93c567",
    matched_rules=[
        pb.MatchedRule(
            policy="app-ownership",
            rule_id="app-members-use-addon",
            effect=pb.EFFECT_ALLOW,
            reason="The user currently holds a role on the Heroku app that owns this add-on",
        )
    ],
    reasons=["The user currently holds a role on the Heroku app that owns this add-on"],
)


class NoopAuthorization(pb_grpc.AuthorizationServiceServicer):
    async def Check(  # noqa: N802 (gRPC method name)
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        return CONSTANT_RESPONSE

    async def CheckBatch(  # noqa: N802
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        return pb.CheckBatchResponse(results=[CONSTANT_RESPONSE] * len(request.items))


async def start_noop(
    listen: str, *, intercepted: bool = False, request_timeout: float = Settings.request_timeout
) -> tuple[grpc.aio.Server, int]:
    edge = authz_admission(request_timeout) if intercepted else []
    server = grpc.aio.server(**_server_kwargs())
    services = Services(server, edge)  # as authz's own server adds its services
    pb_grpc.add_AuthorizationServiceServicer_to_server(NoopAuthorization(), services)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), services)
    port = server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        # Readable stdin means EOF here (the parent never writes): it closed the pipe or died.
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(stdin_fd, 4096)
        if not data:
            loop.remove_reader(stdin_fd)
            stop.set()

    stdin_fd = sys.stdin.fileno()
    loop.add_reader(stdin_fd, on_stdin)
    loop.call_later(args.max_seconds, stop.set)

    profiler = cProfile.Profile() if args.cprofile else None
    final: dict[str, Any] = {"stopped": True}

    def serving() -> None:
        if profiler:
            profiler.enable()

    if args.kind == "noop":
        server, port = await start_noop(
            args.listen, intercepted=args.intercepted, request_timeout=args.request_timeout
        )
        print(json.dumps({"port": port, "pid": os.getpid(), "kind": "noop"}), flush=True)
        serving()
        await stop.wait()
        if profiler:
            profiler.disable()
        await server.stop(1)
    else:
        settings = authz_settings(args)
        service = await start_service(settings, watch_interval=None)
        print(
            json.dumps(
                {
                    "port": service.port,
                    "pid": os.getpid(),
                    "kind": "authz",
                    "audit": args.audit,
                    "revision": service.policies.current.revision,
                    "http_port": service.http.port if service.http else None,
                }
            ),
            flush=True,
        )
        serving()
        await stop.wait()
        if profiler:
            profiler.disable()
        await service.stop(grace=2)
        final["audit"] = service.audit.counters()
    if profiler and args.cprofile:
        profiler.dump_stats(args.cprofile)
    print(json.dumps(final), flush=True)


def authz_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        listen=args.listen,
        policy_dir=Path(args.policies),
        data_dir=Path(args.data_dir),
        sso_salts=(args.sso_salt,),
        heroku_api_url=args.heroku_url,
        heroku_id_url=args.heroku_url,
        heroku_client_secret=os.environ.get("AUTHZ_BENCH_CLIENT_SECRET", ""),
        token_key=os.environ.get("AUTHZ_BENCH_TOKEN_KEY", ""),
        audit_mode=args.audit,
        http_listen=args.listen if args.http else None,
        event_loop=args.event_loop,
        cpu_affinity=args.cpu_affinity,
        recall=args.recall,
    )


def run_workers(args: argparse.Namespace) -> None:
    """authz as `authz serve --workers N` runs it (authz.server.workers): this process is the
    supervisor, so the server's CPU is this process and its workers. The workers poll the policy
    directory every second as `authz serve` does (the single-process server here does not)."""
    from authz.audit import verify
    from authz.server.workers import Supervisor

    settings = authz_settings(args)

    def announce(address: str, url: str | None, revision: str) -> None:
        info = {
            "port": int(address.rsplit(":", 1)[1]),
            "pid": os.getpid(),
            "kind": "authz",
            "audit": args.audit,
            "revision": revision,
            "http_port": int(url.rsplit(":", 1)[1]) if url else None,
            "workers": args.workers,
        }
        print(json.dumps(info), flush=True)

    def stop() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor drains its workers

    def stop_when_stdin_closes() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        stop()

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    deadline = threading.Timer(args.max_seconds, stop)
    deadline.daemon = True
    deadline.start()
    code = Supervisor(settings, args.workers, announce=announce).run()
    final: dict[str, Any] = {"stopped": code == 0, "workers": args.workers}
    if args.audit != "off":
        # Every worker's records are in the one log: count them there, and check the chain.
        report = verify(settings.audit_target)
        final["audit"] = {"records_written": report.checked, "chain_ok": report.ok}
    print(json.dumps(final), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authz.bench.serve")
    parser.add_argument("--kind", choices=("authz", "noop"), required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--policies", default="policies")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--audit", choices=("durable", "async", "off"), default="off")
    parser.add_argument("--heroku-url", default="http://127.0.0.1:9")
    parser.add_argument("--sso-salt", default="bench-sso-salt-0123456789")  # 16+ characters
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=Settings.event_loop,
        help="the event loop both kinds of server run on (AUTHZ_EVENT_LOOP)",
    )
    parser.add_argument(
        "--cpu-affinity",
        choices=CPU_AFFINITIES,
        default=Settings.cpu_affinity,
        help="authz --workers N: a core of its own per worker, or not (AUTHZ_CPU_AFFINITY)",
    )
    parser.add_argument(
        "--recall",
        choices=RECALL_MODES,
        default=os.environ.get("AUTHZ_RECALL") or Settings.recall,
        help="authz: reuse what earlier requests converted and evaluated, or not (default: "
        "AUTHZ_RECALL, as `authz serve`; so `python -m authz.bench.ab src:AUTHZ_RECALL=off`)",
    )
    parser.add_argument("--cprofile", default="", help="write cProfile stats here at exit")
    parser.add_argument(
        "--http",
        action="store_true",
        help="authz: also serve HTTP (the AuthZEN API) on --listen's host",
    )
    parser.add_argument(
        "--intercepted",
        action="store_true",
        help="no-op server behind authz's caller admission (caller identity, budgets)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=Settings.request_timeout,
        help="noop --intercepted: AUTHZ_REQUEST_TIMEOUT of the admission (0: no read guard)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="authz: worker processes, as `authz serve --workers N` (default 1: in process)",
    )
    args = parser.parse_args(argv)
    if not args.listen.startswith(("127.", "localhost", "[::1]")):
        parser.error("the benchmark server listens on loopback only")
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.workers > 1:
        if args.kind != "authz" or args.cprofile:
            parser.error("--workers is for --kind authz, without --cprofile")
        run_workers(args)
        return
    eventloop.run(args.event_loop, lambda: run(args))


if __name__ == "__main__":
    main()
