"""`authz demo`: a real server on loopback and a scripted partner client asking it questions."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from authz.cli import format_decision
from authz.config import Settings
from authz.server.app import start_service
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc


def _struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def run_demo(policy_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-demo-") as data_dir:
        settings = replace(
            Settings.from_env({}),
            listen="127.0.0.1:0",
            policy_dir=policy_dir,
            data_dir=Path(data_dir),
        )
        service = await start_service(settings)
        print(
            f"authz demo server on 127.0.0.1:{service.port}, "
            f"policy revision {service.policies.current.revision}\n"
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = pb_grpc.AuthorizationServiceStub(channel)
                addon = pb.Resource(type="addon", id="01234567-89ab-cdef-0123-456789abcdef")
                checks = [
                    (
                        "A partner service asks whether a password login is allowed",
                        pb.CheckRequest(
                            principal=pb.Principal(type="service", id="web"),
                            action="account.login_password",
                            resource=pb.Resource(type="account", id="acct-1"),
                        ),
                    ),
                    (
                        "A Heroku user named directly (no SSO session) opens the dashboard",
                        pb.CheckRequest(
                            principal=pb.Principal(
                                type="heroku_user",
                                id="u-1",
                                attributes=_struct(email="a@example.com"),
                            ),
                            action="dashboard.view",
                            resource=addon,
                        ),
                    ),
                    (
                        "An unknown action is asked about",
                        pb.CheckRequest(
                            principal=pb.Principal(type="service", id="web"),
                            action="reports.export",
                            resource=addon,
                        ),
                    ),
                ]
                for title, request in checks:
                    response = await stub.Check(request)
                    print(f"• {title}\n{format_decision(response)}\n")
        finally:
            await service.stop()


def main(policy_dir: Path) -> int:
    asyncio.run(run_demo(policy_dir))
    return 0
