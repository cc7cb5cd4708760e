"""A whole world for end-to-end tests: the Heroku simulator and an authz server wired to it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import grpc

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator
from authz.devtools.provisioning import register_addon_request
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.errors import error_info
from authz.v1 import admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService

SALT = "test-sso-salt-0123456789"
TOKEN_KEY = "test-token-key-0123456789abcdef0123456789"


def world_settings(base: Settings, sim: HerokuSimulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sso_salts": (SALT,),
        "heroku_api_url": sim.base_url,
        "heroku_id_url": sim.base_url,
        "heroku_client_secret": sim.client_secret,
        "token_key": TOKEN_KEY,
    }
    return replace(base, **{**values, **overrides})


@dataclass
class World:
    sim: HerokuSimulator
    svc: RunningService

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.svc.channel)

    @property
    def sessions(self) -> session_pb2_grpc.SessionServiceStub:
        return session_pb2_grpc.SessionServiceStub(self.svc.channel)

    @property
    def authz(self) -> pb_grpc.AuthorizationServiceStub:
        return pb_grpc.AuthorizationServiceStub(self.svc.channel)

    def user(self, handle: str) -> dict[str, Any]:
        return self.sim.user(handle)

    def provision(self, addon: str, *, grant: bool = True) -> str:
        """Register an add-on as Heroku's provisioning call would; returns its resource id."""
        reply = self.admin.RegisterAddon(register_addon_request(self.sim, addon, grant=grant))
        return reply.addon.resource_id

    def form(self, resource_id: str, handle: str, **kwargs: Any) -> dict[str, str]:
        user = self.user(handle)
        return heroku_sso_form(resource_id, user["id"], user["email"], SALT, **kwargs)

    def exchange(self, form: dict[str, str]) -> session_pb2.ExchangeSsoResponse:
        return self.sessions.ExchangeSso(session_pb2.ExchangeSsoRequest(form=form))

    def refusal(self, form: dict[str, str]) -> tuple[grpc.StatusCode, str, str]:
        """The status code, ErrorInfo reason and message of a refused exchange."""
        try:
            self.exchange(form)
        except grpc.RpcError as exc:
            info = error_info(exc)
            return exc.code(), info.reason if info else "", exc.details() or ""
        raise AssertionError("the SSO exchange was accepted")

    def login(self, resource_id: str, handle: str) -> str:
        return self.exchange(self.form(resource_id, handle)).session_token

    def check(self, token: str, action: str, resource_id: str) -> pb.CheckResponse:
        return self.authz.Check(
            pb.CheckRequest(
                session_token=token,
                action=action,
                resource=pb.Resource(type="addon", id=resource_id),
            )
        )
