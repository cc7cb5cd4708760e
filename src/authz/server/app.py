"""Build the service from Settings, serve it, and stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz.audit.log import AuditLog, NopAuditLog, open_audit_log
from authz.clock import Clock, system_clock
from authz.config import SHA1_LEGACY_ADDONS, Settings, resolve_public_url
from authz.decide import Decider, FactSources
from authz.facts.access import AccessCache, PlatformAccessFetcher
from authz.facts.addons import AddonRegistry
from authz.facts.heroku import PlatformClient
from authz.facts.invalidation import AccessInvalidations
from authz.facts.oauth_tokens import OAuthTokenStore, TokenManager
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from authz.facts.webhooks import WebhookSubscriptions
from authz.login import SsoLogins
from authz.policy import engine
from authz.policy.holder import PolicyHolder, watch_policies
from authz.provisioning import Provisioning, renaming
from authz.server import convert
from authz.server.admin import AdminServicer
from authz.server.authorization import AuthorizationServicer
from authz.server.eventloop import running_loop_name
from authz.server.grpc_endpoints import endpoints_in_use
from authz.server.observe import Observability
from authz.server.registration import Services, enable_reflection
from authz.server.session_service import SessionServicer
from authz.server.transport import (
    Transport,
    connection_age_options,
    log_transport,
    plan_transport,
)
from authz.store import Database, migrate, open_store
from authz.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from authz.web.app import ROUTE_GROUPS
from authz.web.auth import HttpCallers
from authz.web.routing import HttpLimits, RouteGroup, WebParts
from authz.web.server import HttpListener, start_http_listener

log = logging.getLogger("authz.server")

# Limits that keep one slow, stuck or hostile client from exhausting the server. grpc.aio has no
# worker pool to run out of: every call is a coroutine, so what is bounded is calls in flight
# (two budgets, for callers and for calls without credentials, kept by authz.server.guard;
# beyond them calls get RESOURCE_EXHAUSTED at once rather than queue), how long a call may take to
# send its request (Settings.request_timeout, also in the guard), how long an open stream may
# idle, message and metadata sizes, and how long connections may sit idle or in their handshake.
# There is deliberately no per-connection stream limit: gRPC clients that burst past it when a
# connection opens get REFUSED_STREAM (UNAVAILABLE) instead of waiting. Batch size, attribute
# depth and string lengths are checked in authz.server.convert.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    ("grpc.max_metadata_size", 16 << 10),
    # A TCP connection that never finishes its HTTP/2 (or TLS) handshake is dropped after 10 s.
    ("grpc.server_handshake_timeout_ms", 10_000),
    # Idle connections are closed after 5 minutes (clients reconnect transparently).
    ("grpc.max_connection_idle_ms", 5 * 60_000),
    # Ping quiet connections every minute and drop peers that stopped answering within 20 s.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Clients may keep connections alive with pings, but not more often than every 10 s.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)

SESSION_PURGE_INTERVAL = 600.0
"""Seconds between deletions of expired sessions (and closed SSO replay windows). An expired
session is refused the moment it expires; the purge only keeps the table from growing."""

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
    audit: AuditLog | NopAuditLog
    facts: FactSources
    provisioning: Provisioning
    state: Database
    # What start_service opened, closed in reverse order by stop().
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    http: HttpListener | None = None  # AUTHZ_HTTP_LISTEN (authz.web)

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls on both listeners, let in-flight ones finish, then close what
        start_service opened, newest first: the background tasks and accepted webhook events
        before the facts, stores and audit log they use."""
        await self.health.enter_graceful_shutdown()
        listeners = [self.server.stop(grace)]
        if self.http is not None:
            listeners.append(self.http.stop(grace))
        await asyncio.gather(*listeners)
        await self.resources.aclose()


async def start_service(
    settings: Settings,
    *,
    policies: PolicyHolder | None = None,
    clock: Clock = system_clock,
    watch_interval: float | None = 1.0,
    purge_interval: float | None = SESSION_PURGE_INTERVAL,
    http_routes: Sequence[Callable[[WebParts], RouteGroup]] = ROUTE_GROUPS,
) -> Service:
    """Open the stores, start the audit writer, the gRPC server and, with
    Settings.http_listen, the HTTP listener serving `http_routes`; `Service.stop` undoes it.

    ``watch_interval`` is how often the policy directory is polled, ``purge_interval`` how often
    expired sessions are deleted (None: never, for tools that start a server briefly).

    Raises ConfigError before anything is opened when the listen address and the caller
    credentials do not go together (see authz.server.transport.plan_transport).
    """
    transport = plan_transport(settings)
    apply_recall(settings)
    if ephemeral := settings.check_storage():
        log.warning(ephemeral)
    policies = policies or PolicyHolder.load(settings.policy_dir, strict=settings.policy_strict)
    resources = contextlib.AsyncExitStack()
    try:
        observability = Observability.start(settings, policies)
        resources.push_async_callback(observability.aclose)
        service = await _assemble(settings, transport, policies, clock, resources, observability)
    except BaseException:
        await resources.aclose()  # what was opened before the failure, newest first
        raise
    loop = asyncio.get_running_loop()
    if watch_interval:
        watcher = loop.create_task(watch_policies(policies, watch_interval))
        resources.callback(watcher.cancel)
    if purge_interval:
        replay = service.provisioning.replay
        purger = loop.create_task(purge_expired(service.facts, replay, purge_interval))
        resources.callback(purger.cancel)
    if settings.http_listen is not None:
        web = WebParts(
            settings,
            HttpCallers(transport.admission),
            policies,
            service.decider,
            service.audit,
            service.state,
            HttpLimits.from_settings(settings),
            observability,
            provisioning=service.provisioning,
        )
        try:
            service.http = await start_http_listener(web, http_routes)
        except BaseException:
            await service.stop(grace=0)
            raise
        if settings.public_url is not None:
            public_url = resolve_public_url(settings.public_url, service.http.port)
            service.provisioning.public_url = public_url
    log.info(
        "authz listening on %s, policy revision %s (%d rules), audit %s, recall %s, "
        "event loop %s, grpc endpoints %s",
        service.address,
        policies.current.revision,
        policies.current.rule_count,
        settings.audit_mode,
        settings.recall,
        running_loop_name(),
        endpoints_in_use(),
    )
    log_transport(settings, transport, service.address, service.http and service.http.address)
    _log_sso_settings(settings)
    _log_webhook_settings(settings, service.provisioning)
    return service


def apply_recall(settings: Settings) -> None:
    """AUTHZ_RECALL, for the whole process (one server per process, or per worker): on, a
    request's principal and resource messages seen before are not converted again and a
    question asked before is not evaluated again (authz.server.convert.entity,
    authz.policy.engine); off, each is done for every request."""
    on = settings.recall == "on"
    engine.recall(on)
    convert.keep_entities(on)


async def _assemble(
    settings: Settings,
    transport: Transport,
    policies: PolicyHolder,
    clock: Clock,
    resources: contextlib.AsyncExitStack,
    observability: Observability,
) -> Service:
    """Open the stores and the audit log, wire the use cases and start the gRPC server; every
    resource opened is pushed on ``resources``."""
    state = open_store(settings.state_target)
    resources.callback(state.close)
    applied = migrate(state)
    if applied:
        log.info("store %s migrated to schema versions %s", state.location, applied)
    audit = open_audit_log(settings.audit_target, mode=settings.audit_mode).start()
    resources.push_async_callback(audit.aclose)
    facts = FactSources(
        sessions=SessionStore(state, clock, settings.session_ttl),
        addons=AddonRegistry(state, clock),
        deadline=settings.facts_deadline,
        offload=state.dialect == "postgresql",
    )
    # Without Platform API credentials tokens are neither stored nor read, but the store can
    # still delete those an earlier configuration kept (deprovisioning).
    token_store = OAuthTokenStore(state, settings.token_key, clock=clock)
    client, tokens = _platform_facts(settings, token_store, facts, clock, resources)
    observability.watch(audit=audit, access=facts.access, platform=client)
    # Through the store, so every worker and replica hears it (PostgreSQL or SQLite).
    invalidations = AccessInvalidations(facts.access, settings.state_target, policies=policies)
    await invalidations.start()
    resources.push_async_callback(invalidations.aclose)
    # Every decision is recorded before it is answered; with audit off (a NopAuditLog, the
    # benchmark baseline) no record is built at all.
    sink = observability.audit_sink(audit)
    decider = Decider(policies, facts=facts, audit=sink, clock=clock)
    replay = ReplayGuard(state, clock)
    logins = SsoLogins(
        decider,
        settings,
        registry=facts.addons,
        replay=replay,
        sessions=facts.sessions,
        clock=clock,
    )
    provisioning = Provisioning(
        registry=facts.addons,
        sessions=facts.sessions,
        token_store=token_store,
        subscriptions=WebhookSubscriptions(state, settings.token_key, clock=clock),
        replay=replay,
        invalidations=invalidations,
        client=client,
        tokens=tokens,
        clock=clock,
    )
    resources.push_async_callback(provisioning.aclose)
    # Worker processes (authz.server.workers) share the gRPC port as they share the HTTP one.
    reuse_port = ("grpc.so_reuseport", int(settings.http_reuse_port))
    server = grpc.aio.server(
        options=[*SERVER_OPTIONS, reuse_port, *connection_age_options(settings.max_connection_age)],
        maximum_concurrent_rpcs=transport.maximum_concurrent_rpcs,
    )
    # The edge: the caller's admission and budget, inside the call's observation.
    edge = (transport.admission.handler_for, observability.rpc_observer.handler_for)
    services = Services(server, edge)  # authz.server.registration
    authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(
        AuthorizationServicer(decider), services
    )
    session_pb2_grpc.add_SessionServiceServicer_to_server(
        SessionServicer(observability.logins(logins)), services
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            policies=policies, provisioning=provisioning, audit_path=settings.audit_target
        ),
        services,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    enable_reflection(names, services)
    port = _bind(server, settings.listen, transport)
    await server.start()
    resources.push_async_callback(server.stop, 0)  # a start that fails later leaves no listener
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Service(
        settings,
        server,
        port,
        policies,
        decider,
        health_servicer,
        audit,
        facts,
        provisioning,
        state,
        resources,
    )


async def purge_expired(facts: FactSources, replay: ReplayGuard, interval: float) -> None:
    """Delete expired sessions and closed replay windows now and every ``interval`` seconds.

    Every replica runs it; the deletes are idempotent. A failure (the database away) is logged
    and retried at the next round: it never ends the task.
    """
    while True:
        try:
            sessions = await facts.call(facts.sessions.purge_expired)
            keys = await facts.call(replay.purge_expired)
        except Exception as exc:
            log.warning(
                "purging expired sessions failed (retrying in %g s): %s: %s",
                interval,
                type(exc).__name__,
                exc,
            )
        else:
            if sessions or keys:
                log.info("purged %d expired session(s) and %d SSO replay key(s)", sessions, keys)
        await asyncio.sleep(interval)


def _log_sso_settings(settings: Settings) -> None:
    if settings.sso_allow_sha1 == SHA1_LEGACY_ADDONS:
        log.warning(
            "AUTHZ_SSO_ALLOW_SHA1=legacy-addons: Heroku SSO forms carrying only the SHA-1 "
            "resource_token are accepted for add-ons that have never sent the SHA-256 token. That "
            "token does not cover the user, so any member of such an add-on's app can log in as "
            "any other member (e.g. its owner); such sessions carry principal.auth.token_kind "
            "'sha1'. Set AUTHZ_SSO_ALLOW_SHA1=never once Heroku sends user_scoped_resource_token"
        )
    if any("," in salt for salt in settings.sso_salts):
        log.warning(
            "AUTHZ_SSO_SALT: a salt contains ','; salts are separated by whitespace, not commas, "
            "so if it was meant as a list, separate the salts with spaces or newlines"
        )


def _bind(server: grpc.aio.Server, listen: str, transport: Transport) -> int:
    try:
        if transport.credentials is not None:
            port = server.add_secure_port(listen, transport.credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return port


def _platform_facts(
    settings: Settings,
    token_store: OAuthTokenStore,
    facts: FactSources,
    clock: Clock,
    resources: contextlib.AsyncExitStack,
) -> tuple[PlatformClient | None, TokenManager | None]:
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
    resources.push_async_callback(client.aclose)
    tokens = TokenManager(token_store, client, clock)
    # Each fetch also records the app's current name (renames reach the registry every TTL).
    fetch = renaming(PlatformAccessFetcher(client, tokens), facts.addons)
    facts.access = AccessCache(fetch, ttl=settings.access_ttl, clock=clock)
    resources.push_async_callback(facts.access.aclose)
    return client, tokens


def _log_webhook_settings(settings: Settings, provisioning: Provisioning) -> None:
    if provisioning.public_url is None:
        log.warning(
            "AUTHZ_PUBLIC_URL is not set: no Heroku webhooks are subscribed, so access changes "
            "reach authz only when cached access lists expire (AUTHZ_ACCESS_TTL=%g s)",
            settings.access_ttl,
        )
    elif provisioning.client is None:
        log.warning(
            "AUTHZ_PUBLIC_URL is set, but without Platform API credentials no webhooks "
            "can be subscribed"
        )
    else:
        log.info("Heroku webhooks deliver to %s/heroku/webhooks/<add-on>", provisioning.public_url)


def print_serving(service: Service) -> None:
    """The lines tools wait for (stdout): where gRPC and HTTP are served."""
    print(
        f"authz serving on {service.address} (policy revision {service.policies.current.revision})",
        flush=True,
    )
    if service.http is not None:
        print(f"authz HTTP listener on {service.http.url}", flush=True)


async def serve(settings: Settings, *, announce: Callable[[Service], None] = print_serving) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight calls and exit. ``announce`` is called
    once serving (a worker process tells its supervisor instead of printing)."""
    service = await start_service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: loop.run_in_executor(None, service.policies.reload)
    )
    announce(service)
    await stop.wait()
    log.info("shutting down: finishing in-flight calls")
    await service.stop()
