"""Build the service from Settings, serve it, and stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz.audit.log import AuditLog
from authz.audit.schema import audit_db_path
from authz.clock import Clock, system_clock
from authz.config import Settings
from authz.decide import Decider, Facts
from authz.facts.access import AccessCache, PlatformAccessFetcher
from authz.facts.addons import AddonRegistry
from authz.facts.heroku import PlatformClient
from authz.facts.oauth_tokens import OAuthTokenStore, TokenManager
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from authz.login import SsoLogins
from authz.policies_runtime import PolicyHolder, watch_policies
from authz.server.admin import AdminServicer
from authz.server.authorization import AuthorizationServicer
from authz.server.sessions import SessionServicer
from authz.store import open_database
from authz.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

log = logging.getLogger("authz.server")

SERVICE_NAMES = (
    authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
    session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass
class Service:
    settings: Settings
    server: grpc.aio.Server
    port: int
    policies: PolicyHolder
    decider: Decider
    health: health.aio.HealthServicer
    audit: AuditLog
    facts: Facts
    closers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let in-flight ones finish, then close facts and the audit log."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def start_service(
    settings: Settings,
    *,
    policies: PolicyHolder | None = None,
    clock: Clock = system_clock,
    watch_interval: float | None = 1.0,
) -> Service:
    """Open the stores, start the audit writer and the gRPC server; `Service.stop` undoes it."""
    policies = policies or PolicyHolder.load(settings.policy_dir)
    closers: list[Any] = []
    state = open_database(settings.data_dir / "state.db")
    closers.append(state.conn.close)
    audit = AuditLog(audit_db_path(settings.data_dir), mode=settings.audit_mode).start()
    closers.append(audit.aclose)
    facts = Facts(
        sessions=SessionStore(state, clock, settings.session_ttl),
        addons=AddonRegistry(state, clock),
        deadline=settings.facts_deadline,
    )
    tokens, token_store = _platform_facts(settings, state, facts, clock, closers)
    decider = Decider(policies, facts=facts, audit=audit, clock=clock)
    logins = SsoLogins(
        decider,
        settings,
        registry=facts.addons,
        replay=ReplayGuard(state, clock),
        sessions=facts.sessions,
        clock=clock,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.max_send_message_length", 4 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(
        AuthorizationServicer(decider), server
    )
    session_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(logins), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            policies=policies,
            registry=facts.addons,
            sessions=facts.sessions,
            access=facts.access,
            tokens=tokens,
            token_store=token_store,
            audit_path=audit.path,
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if watch_interval:
        watcher = asyncio.get_running_loop().create_task(watch_policies(policies, watch_interval))
        closers.insert(0, watcher.cancel)
    service = Service(
        settings, server, port, policies, decider, health_servicer, audit, facts, closers
    )
    log.info(
        "authz listening on %s, policy revision %s (%d rules), audit %s",
        service.address,
        policies.current.revision,
        policies.current.rule_count,
        settings.audit_mode,
    )
    return service


def _platform_facts(
    settings: Settings, state: Any, facts: Facts, clock: Clock, closers: list[Any]
) -> tuple[TokenManager | None, OAuthTokenStore | None]:
    """The Platform API client, OAuth tokens and access cache, when credentials are configured.

    Without them no access list can be had, so every ownership decision denies with that reason.
    """
    if not (settings.heroku_client_secret and settings.token_key):
        log.warning(
            "no Platform API credentials (AUTHZ_HEROKU_CLIENT_SECRET, AUTHZ_TOKEN_KEY): "
            "app access lists are unavailable and add-on access is denied"
        )
        return None, None
    client = PlatformClient(
        settings.heroku_api_url, settings.heroku_id_url, settings.heroku_client_secret, clock=clock
    )
    closers.append(client.aclose)
    store = OAuthTokenStore(state, settings.token_key, clock=clock)
    tokens = TokenManager(store, client, clock)
    facts.access = AccessCache(
        PlatformAccessFetcher(client, tokens), ttl=settings.access_ttl, clock=clock
    )
    closers.insert(0, facts.access.aclose)
    return tokens, store


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight calls and exit."""
    service = await start_service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: loop.run_in_executor(None, service.policies.reload)
    )
    print(
        f"authz serving on {service.address} (policy revision {service.policies.current.revision})",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down: finishing in-flight calls")
    await service.stop()
