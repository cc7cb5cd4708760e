"""authz.client against real servers: typed results and errors, fail-closed `allowed`, bearer
tokens and mutual TLS, deadlines, and retries only where they are safe.

The retry test puts a fault-injecting gRPC proxy between the client and a real server: the
proxy answers the first call of chosen methods UNAVAILABLE (as a server that could not record a
decision does) and forwards everything else unchanged, so every answer the client gets is the
real server's."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import pytest

from authz.audit.query import get_entry
from authz.client import (
    RETRIED_READS,
    AsyncAuthzClient,
    AuthzClient,
    AuthzInvalid,
    AuthzRefused,
    AuthzUnauthenticated,
    AuthzUnavailable,
    CheckItem,
    Principal,
    Resource,
    Tls,
    format_decision,
)
from authz.config import CallerToken, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import provisioning_fields
from tests.conftest import Pki, RunningService
from tests.heroku_world import World, world_settings

ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"
CHECK = "/authz.v1.AuthorizationService/Check"
EXCHANGE = "/authz.v1.SessionService/ExchangeSso"
REGISTER = "/authz.v1.AdminService/RegisterAddon"


@pytest.fixture
def world(start: Callable[..., RunningService], base_settings: Settings) -> Iterator[World]:
    with HerokuSimulator(load_fixture()) as sim:
        yield World(sim, start(world_settings(base_settings, sim)))


def test_typed_results_for_every_partner_call(world: World) -> None:
    with AuthzClient(world.svc.address) as authz:
        registration = authz.register_addon(**provisioning_fields(world.sim, ACME))
        addon = registration.addon
        assert registration.changed and addon.state == "provisioned" and addon.has_oauth_tokens
        assert addon.app_name == "acme-billing" and addon.created_at is not None

        session = authz.exchange_sso(world.form(addon.resource_id, "carol"))
        assert session.principal == f"heroku_user:{world.user('carol')['id']}"
        assert session.resource_id == addon.resource_id and session.expires_at is not None
        assert session.session_token not in repr(session)  # never in logs by accident

        resource = Resource("addon", addon.resource_id)
        decision = authz.check("dashboard.view", resource, session=session.session_token)
        assert decision.allowed and decision.effect == "ALLOW"
        assert decision.policy_revision == world.svc.service.policies.current.revision
        assert decision.matched_rules[0].rule_id == "app-members-use-addon"
        assert format_decision(decision).startswith(f"ALLOW  decision {decision.decision_id}")
        assert authz.allowed("dashboard.view", resource, session=session.session_token)
        assert not authz.allowed("account.change_password", resource, session=session.session_token)

        batch = authz.check_batch(
            [CheckItem("dashboard.view", resource), CheckItem("account.add_user", resource)],
            session=session.session_token,
            request_id="batch-1",
        )
        assert [d.effect for d in batch] == ["ALLOW", "DENY"]
        direct = authz.check(
            "account.login_password",
            "account:1",
            principal=Principal("service", "billing", {"team": "payments"}),
        )
        assert direct.effect == "DENY" and not direct.allowed and direct.reasons

        recorded = list(authz.query_decisions(effect="DENY", action="account.*", limit=10))
        assert {r.decision_id for r in recorded} >= {batch[1].decision_id, direct.decision_id}
        assert all(r.effect == "DENY" and r.record["decision_id"] for r in recorded)

        status = authz.policy_status()
        assert status.policy_revision == decision.policy_revision and status.rule_count > 0
        assert authz.reload_policies().policy_revision == status.policy_revision
        assert authz.invalidate_access(addon.app_id) in (True, False)
        assert authz.revoke_session(session.session_token) is True
        after = authz.check("dashboard.view", resource, session=session.session_token)
        assert not after.allowed and any("SESSION_UNKNOWN" in r for r in after.reasons)
        ended = authz.deprovision_addon(addon.resource_id)
        assert ended.addon.state == "deprovisioned"


def test_refusals_are_typed_with_their_reason_and_decision(world: World) -> None:
    with AuthzClient(world.svc.address) as authz:
        addon = authz.register_addon(**provisioning_fields(world.sim, ACME)).addon
        form = world.form(addon.resource_id, "bob")
        authz.exchange_sso(form)
        with pytest.raises(AuthzRefused) as replayed:
            authz.exchange_sso(form)
        refusal = replayed.value
        assert refusal.status == grpc.StatusCode.PERMISSION_DENIED
        assert refusal.code == "SSO_REPLAYED" and refusal.decision_id
        assert f"(decision {refusal.decision_id})" in str(refusal)
        entry = get_entry(world.svc.service.audit.path, refusal.decision_id)
        assert entry is not None and entry.record["effect"] == "DENY"

        with pytest.raises(AuthzInvalid) as invalid:
            authz.check("", Resource("addon", addon.resource_id), principal="service:web")
        assert invalid.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert "action" in invalid.value.message
        with pytest.raises(ValueError, match="name the subject"):
            authz.check("dashboard.view", "addon:x")


def test_allowed_fails_closed_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="authz.client")
    with AuthzClient("127.0.0.1:1", timeout=2) as authz:
        assert authz.allowed("dashboard.view", "addon:r1", principal="service:web") is False
        with pytest.raises(AuthzUnavailable):
            authz.check("dashboard.view", "addon:r1", principal="service:web")
        # A caller mistake is not an ALLOW either.
        assert authz.allowed("dashboard.view", "addon:r1") is False
    lines = [r.getMessage() for r in caplog.records]
    assert any("dashboard.view on addon:r1 not allowed" in m and "UNAVAILABLE" in m for m in lines)
    assert any("fail closed" in m and "name the subject" in m for m in lines)


def test_bearer_tokens_and_admins(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(
        replace(
            base_settings,
            caller_tokens=(CallerToken.of("web", "web-token"), CallerToken.of("ops", "ops-token")),
            admins=frozenset({"ops"}),
        )
    )
    with AuthzClient(svc.address) as anonymous, pytest.raises(AuthzUnauthenticated) as caught:
        anonymous.check("dashboard.view", "addon:r", principal="service:web")
    assert caught.value.code == "CALLER_UNAUTHENTICATED"
    with AuthzClient(svc.address, token="web-token") as web:
        assert web.check("dashboard.view", "addon:r", principal="service:web").effect == "DENY"
        with pytest.raises(AuthzRefused) as not_admin:
            web.policy_status()
        assert not_admin.value.code == "CALLER_NOT_ADMIN"
    with AuthzClient(svc.address, token="ops-token") as ops:
        assert ops.policy_status().policy_revision


def test_mutual_tls(
    start: Callable[..., RunningService], base_settings: Settings, pki: Pki
) -> None:
    cert, key = pki.server_files()
    svc = start(
        replace(base_settings, tls_cert=cert, tls_key=key, client_ca=pki.ca_path, admins={"ops"})
    )
    client_key, client_cert = pki.issue("ops")
    tls = Tls(ca=pki.ca_pem, cert=client_cert, key=client_key)
    with AuthzClient(svc.address, tls=tls) as ops:
        assert ops.policy_status().policy_revision == svc.service.policies.current.revision
    without_certificate = AuthzClient(svc.address, tls=Tls(ca=pki.ca_pem), timeout=3)
    with without_certificate, pytest.raises(AuthzUnavailable):
        without_certificate.policy_status()  # refused in the handshake
    with pytest.raises(ValueError, match="go together"):
        Tls(ca=pki.ca_pem, cert=client_cert)


def test_a_server_off_this_machine_needs_tls_or_an_explicit_plaintext() -> None:
    with pytest.raises(ValueError, match="not on this machine"):
        AuthzClient("10.20.30.40:50051", token="t")
    AuthzClient("10.20.30.40:50051", plaintext=True).close()  # nothing is sent until a call
    AuthzClient("localhost:50051").close()
    AuthzClient("[::1]:50051").close()
    with pytest.raises(ValueError, match="printable ASCII"):
        AuthzClient("127.0.0.1:50051", token="bad token\n")


class FaultyProxy(grpc.GenericRpcHandler):
    """A gRPC proxy that answers the first call of each of `fail_first` UNAVAILABLE and
    forwards every other call, bytes unchanged, to `upstream`."""

    def __init__(self, upstream: str, fail_first: set[str]) -> None:
        self.upstream = grpc.insecure_channel(upstream)
        self.fail_first = fail_first
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((self,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method  # type: ignore[attr-defined]

        def handle(request: bytes, context: grpc.ServicerContext) -> Any:
            with self.lock:
                self.calls[method] += 1
                fail = method in self.fail_first and self.calls[method] == 1
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: try again")
            return self.upstream.unary_unary(method)(request, timeout=10)

        return grpc.unary_unary_rpc_method_handler(handle)

    def close(self) -> None:
        self.server.stop(0)
        self.upstream.close()


def test_reads_are_retried_on_unavailable_and_single_use_calls_never(world: World) -> None:
    assert ("authz.v1.SessionService", "ExchangeSso") not in RETRIED_READS
    proxy = FaultyProxy(world.svc.address, {CHECK, EXCHANGE, REGISTER})
    try:
        with AuthzClient(proxy.address) as authz:
            decision = authz.check("account.login_password", "account:1", principal="svc:x")
            assert decision.effect == "DENY" and decision.decision_id  # the server's answer
            assert proxy.calls[CHECK] == 2  # the first attempt failed, the retry got through

            fields = provisioning_fields(world.sim, ACME)
            with pytest.raises(AuthzUnavailable):
                authz.register_addon(**fields)
            assert proxy.calls[REGISTER] == 1
            resource_id = authz.register_addon(**fields).addon.resource_id  # grant unspent

            form = world.form(resource_id, "alice")
            with pytest.raises(AuthzUnavailable) as caught:
                authz.exchange_sso(form)
            assert caught.value.code == "UNAVAILABLE" and "injected" in caught.value.message
            assert proxy.calls[EXCHANGE] == 1
            # The form never reached the server, so it is still good: nothing was spent.
            assert authz.exchange_sso(form).session_token.startswith("azs_")
    finally:
        proxy.close()


def test_every_call_has_a_deadline() -> None:
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = silent.getsockname()[1]
        with AuthzClient(f"127.0.0.1:{port}", timeout=0.5) as authz:
            with pytest.raises(AuthzUnavailable) as caught:
                authz.check("dashboard.view", "addon:r", principal="service:web")
            assert caught.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(AuthzUnavailable):
                authz.policy_status(timeout=0.2)
    finally:
        silent.close()


def test_the_asyncio_client(world: World) -> None:
    async def partner() -> None:
        async with AsyncAuthzClient(world.svc.address) as authz:
            addon = (await authz.register_addon(**provisioning_fields(world.sim, GLOBEX))).addon
            session = await authz.exchange_sso(world.form(addon.resource_id, "erin"))
            resource = Resource("addon", addon.resource_id)
            token = session.session_token
            decision = await authz.check("addon.change_plan", resource, session=token)
            assert decision.allowed and decision.matched_rules
            assert await authz.allowed("dashboard.view", resource, session=token)
            assert not await authz.allowed("billing.update", resource, session=token)
            batch = await authz.check_batch(
                [CheckItem("dashboard.view", resource), CheckItem("billing.update", resource)],
                session=token,
            )
            assert [d.allowed for d in batch] == [True, False]
            recorded = [r async for r in authz.query_decisions(principal=session.principal)]
            assert decision.decision_id in {r.decision_id for r in recorded}
            assert (await authz.policy_status()).policy_revision == decision.policy_revision
            assert (await authz.reload_policies()).reloaded in (True, False)
            await authz.invalidate_access(addon.app_id)
            assert await authz.revoke_session(token)
            assert (await authz.deprovision_addon(addon.resource_id)).addon.state == (
                "deprovisioned"
            )
            with pytest.raises(AuthzRefused) as refused:
                await authz.exchange_sso(world.form(addon.resource_id, "erin"))
            assert refused.value.code == "ADDON_DEPROVISIONED"

    asyncio.run(partner())
