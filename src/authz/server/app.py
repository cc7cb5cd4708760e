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

from authz.config import Settings
from authz.decide import Decider, Facts
from authz.policies_runtime import PolicyHolder
from authz.server.authorization import AuthorizationServicer
from authz.v1 import authorization_pb2, authorization_pb2_grpc

log = logging.getLogger("authz.server")

SERVICE_NAMES = (authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,)


@dataclass
class Service:
    settings: Settings
    server: grpc.aio.Server
    port: int
    policies: PolicyHolder
    decider: Decider
    health: health.aio.HealthServicer
    closers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let in-flight ones finish, then close facts and the audit log."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for close in reversed(self.closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def start_service(settings: Settings, *, policies: PolicyHolder | None = None) -> Service:
    policies = policies or PolicyHolder.load(settings.policy_dir)
    facts = Facts(deadline=settings.facts_deadline)
    decider = Decider(policies, facts=facts)
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
    service = Service(settings, server, port, policies, decider, health_servicer)
    log.info(
        "authz listening on %s, policy revision %s (%d rules)",
        service.address,
        policies.current.revision,
        policies.current.rule_count,
    )
    return service


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight calls and exit."""
    service = await start_service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"authz serving on {service.address} (policy revision {service.policies.current.revision})",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down: finishing in-flight calls")
    await service.stop()
