"""Issue 8, callers: bearer tokens, admin separation, caller.id in policies, safe defaults.

Every test runs a real server on 127.0.0.1 and calls it over gRPC; the audit database is read
back with authz.audit.query. Mutual TLS is in test_tls.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz.audit.query import query
from authz.config import CallerToken, ConfigError, Settings, parse_caller_tokens
from authz.server.app import start_service
from authz.server.errors import error_info
from authz.server.identity import CallerAdmission
from authz.server.transport import is_loopback, plan_transport
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ROOT, LoopThread, RunningService

BILLING_POLICY = """
name: billing-callers
description: Billing questions come from the billing service only.
rules:
  - id: billing-service-asks-about-billing
    effect: allow
    actions: ["billing.*"]
    when: caller.id == "billing"
    reason: The billing service owns billing questions
  - id: only-billing-asks-about-billing
    effect: deny
    actions: ["billing.*"]
    when: caller.id != "billing"
    reason: Only the billing service may ask about billing actions
"""

CALLERS = ("billing", "web", "ops")


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def tokens() -> dict[str, str]:
    return {name: secrets.token_urlsafe(32) for name in CALLERS}


@pytest.fixture
def tokens_file(tmp_path: Path, tokens: dict[str, str]) -> Path:
    path = tmp_path / "callers.txt"
    lines = ["# partner services allowed to ask authz", ""]
    lines += [f"{name}  {sha256_hex(token)}  # issued for tests" for name, token in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(params=[10.0, 0.0], ids=["request-guard", "no-request-guard"])
def token_settings(
    request: pytest.FixtureRequest, base_settings: Settings, tokens_file: Path
) -> Settings:
    """Token callers, with the request-timeout guard on (default) and off (AUTHZ_REQUEST_TIMEOUT=0):
    authentication and admin separation must not depend on it."""
    env = {"AUTHZ_CALLER_TOKENS": str(tokens_file), "AUTHZ_ADMINS": "ops, deploy-bot"}
    from_env = Settings.from_env(env)
    return replace(
        base_settings,
        caller_tokens=from_env.caller_tokens,
        admins=from_env.admins,
        request_timeout=request.param,
    )


@pytest.fixture
def svc(start: Callable[..., RunningService], token_settings: Settings) -> RunningService:
    return start(token_settings)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def check_request(action: str = "dashboard.view", principal: str = "svc") -> pb.CheckRequest:
    return pb.CheckRequest(
        principal=pb.Principal(type="service", id=principal),
        action=action,
        resource=pb.Resource(type="addon", id="res-1"),
    )


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def audit_rows(svc: RunningService) -> list[dict]:
    return query(svc.service.audit.path, limit=None)


# -- the tokens file -----------------------------------------------------------------------------


def test_tokens_file_is_read_with_comments_and_rotation(tmp_path: Path) -> None:
    text = (
        "# who may call\n"
        "\n"
        f"billing {sha256_hex('one')}\n"
        f"   billing\t{sha256_hex('two').upper()}   # rotated in, same caller\n"
        f"web {sha256_hex('three')}\n"
    )
    entries = parse_caller_tokens(text, "callers.txt")
    assert [e.name for e in entries] == ["billing", "billing", "web"]
    assert entries[1].digest == hashlib.sha256(b"two").digest()
    assert entries[1].source == "callers.txt:4"
    assert "digest" not in repr(entries[0]) and sha256_hex("one") not in repr(entries[0])


def test_malformed_tokens_file_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "callers.txt"
    path.write_text(
        "# header\n"
        f"billing {sha256_hex('a')}\n"
        "web\n"  # line 3: one field
        "ops s3cr3t-plain-token\n"  # line 4: a token instead of its hash
        f"cron {sha256_hex('b')} extra\n"  # line 5: three fields
        f"again {sha256_hex('a')}\n"  # line 6: the same hash as line 2
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AUTHZ_CALLER_TOKENS": str(path)})
    message = str(caught.value)
    for line in (3, 4, 5, 6):
        assert f"{path}:{line}:" in message
    assert f"{path}:2" in message  # the duplicate names where the hash was first listed
    assert "s3cr3t-plain-token" not in message  # a misplaced secret is never echoed
    assert "sha256" in message.lower()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "no tokens"), ("# only a comment\n\n", "no tokens")],
)
def test_empty_tokens_file_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "callers.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        Settings.from_env({"AUTHZ_CALLER_TOKENS": str(path)})


def test_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTHZ_CALLER_TOKENS: cannot read"):
        Settings.from_env({"AUTHZ_CALLER_TOKENS": str(tmp_path / "absent.txt")})


def test_token_match_compares_every_entry() -> None:
    admission = CallerAdmission(
        tokens=[CallerToken.of("a", "token-a"), CallerToken.of("b", "token-b")]
    )
    assert admission.match_token("token-a") == "a"
    assert admission.match_token("token-b") == "b"
    assert admission.match_token("token-c") == ""
    assert admission.match_token("") == ""


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-credentials"),
        pytest.param(bearer("not-a-token-anyone-was-given"), id="wrong-token"),
        pytest.param((("authorization", "Basic dXNlcjpwYXNz"),), id="basic-scheme"),
        pytest.param((("authorization", "Bearer"),), id="bearer-without-token"),
        pytest.param((("authorization", "Bearer    "),), id="bearer-blank"),
        pytest.param((("authorization", "Bearer a b"),), id="token-with-space"),
        pytest.param((("authorization", "Token abc"),), id="other-scheme"),
        pytest.param((("authorization", "Bearer " + "x" * 5000),), id="oversized"),
        pytest.param(
            (("authorization", "Bearer a"), ("authorization", "Bearer b")), id="two-headers"
        ),
    ],
)
def test_callers_without_valid_credentials_are_unauthenticated(
    svc: RunningService, tokens: dict[str, str], metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    for call in (
        lambda: stub.Check(check_request(), metadata=metadata, timeout=5),
        lambda: stub.CheckBatch(
            pb.CheckBatchRequest(
                principal=pb.Principal(type="service", id="x"),
                items=[pb.CheckItem(action="a", resource=pb.Resource(type="t", id="1"))],
            ),
            metadata=metadata,
            timeout=5,
        ),
        lambda: session_pb2_grpc.SessionServiceStub(svc.channel).ExchangeSso(
            session_pb2.ExchangeSsoRequest(form={"resource_id": "x"}), metadata=metadata, timeout=5
        ),
        lambda: admin_pb2_grpc.AdminServiceStub(svc.channel).GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(), metadata=metadata, timeout=5
        ),
    ):
        error = refusal(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert "authorization: Bearer <token>" in (error.details() or "")
        info = error_info(error)
        assert info is not None and info.reason == "CALLER_UNAUTHENTICATED"
        for _, value in metadata:
            token = value.partition(" ")[2]
            if len(token) > 3:
                assert token not in (error.details() or "")
    assert audit_rows(svc) == []  # nothing was decided for a caller nobody knows


def test_good_tokens_are_accepted_and_the_caller_recorded(
    svc: RunningService, tokens: dict[str, str]
) -> None:
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    ids = {}
    for name in ("billing", "web"):
        response = stub.Check(check_request(), metadata=bearer(tokens[name]), timeout=5)
        assert not response.allowed
        ids[response.decision_id] = name
    # Scheme names are case-insensitive (RFC 6750 §2.1).
    lower = stub.Check(
        check_request(), metadata=(("authorization", f"bearer {tokens['web']}"),), timeout=5
    )
    ids[lower.decision_id] = "web"
    batch = stub.CheckBatch(
        pb.CheckBatchRequest(
            principal=pb.Principal(type="service", id="x"),
            items=[
                pb.CheckItem(action="a", resource=pb.Resource(type="t", id=str(i))) for i in (1, 2)
            ],
        ),
        metadata=bearer(tokens["billing"]),
        timeout=5,
    )
    ids.update({r.decision_id: "billing" for r in batch.results})
    sessions = session_pb2_grpc.SessionServiceStub(svc.channel)
    error = refusal(
        lambda: sessions.ExchangeSso(
            session_pb2.ExchangeSsoRequest(form={"resource_id": "r"}),
            metadata=bearer(tokens["web"]),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # the form, not the caller
    info = error_info(error)
    assert info is not None
    ids[info.metadata["decision_id"]] = "web"
    recorded = {row["decision_id"]: row["caller"] for row in audit_rows(svc)}
    assert recorded == ids


def test_concurrent_callers_never_see_each_others_identity(
    svc: RunningService, tokens: dict[str, str], loop_thread: LoopThread
) -> None:
    async def run() -> dict[str, str]:
        async with grpc.aio.insecure_channel(svc.address) as channel:
            stub = pb_grpc.AuthorizationServiceStub(channel)

            async def one(i: int) -> tuple[str, str]:
                name = CALLERS[i % 2]
                response = await stub.Check(
                    check_request(principal=f"p{i}"), metadata=bearer(tokens[name]), timeout=10
                )
                return response.decision_id, name

            return dict(await asyncio.gather(*(one(i) for i in range(120))))

    sent = loop_thread.run(run())
    recorded = {row["decision_id"]: row["caller"] for row in audit_rows(svc)}
    assert recorded == sent


def test_only_the_billing_service_may_ask_about_billing(
    start: Callable[..., RunningService],
    token_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
    tokens: dict[str, str],
) -> None:
    svc = start(token_settings, policy_dir=policy_dir({"billing.yaml": BILLING_POLICY}))
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    request = check_request(action="billing.update")
    allowed = stub.Check(request, metadata=bearer(tokens["billing"]), timeout=5)
    assert allowed.allowed
    assert [m.rule_id for m in allowed.matched_rules] == ["billing-service-asks-about-billing"]
    denied = stub.Check(request, metadata=bearer(tokens["web"]), timeout=5)
    assert not denied.allowed
    assert "only-billing-asks-about-billing" in {m.rule_id for m in denied.matched_rules}
    assert "Only the billing service may ask about billing actions" in denied.reasons
    # Sending "caller" in the request changes nothing: the identity comes from the credentials.
    spoof = pb.CheckRequest()
    spoof.CopyFrom(request)
    spoof.context.update({"caller": {"id": "billing"}})
    spoof.principal.attributes.update({"caller": "billing"})
    assert not stub.Check(spoof, metadata=bearer(tokens["web"]), timeout=5).allowed
    rows = {row["decision_id"]: row for row in audit_rows(svc)}
    assert rows[allowed.decision_id]["caller"] == "billing"
    assert rows[allowed.decision_id]["input"]["caller"] == {"id": "billing"}
    assert rows[denied.decision_id]["caller"] == "web"
    assert rows[denied.decision_id]["effect"] == "DENY"


# -- AdminService ---------------------------------------------------------------------------------


def test_admin_service_is_only_for_admins(svc: RunningService, tokens: dict[str, str]) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    calls = {
        "GetPolicyStatus": lambda md: admin.GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(), metadata=md, timeout=5
        ),
        "ReloadPolicies": lambda md: admin.ReloadPolicies(
            admin_pb2.ReloadPoliciesRequest(), metadata=md, timeout=5
        ),
        "RegisterAddon": lambda md: admin.RegisterAddon(
            admin_pb2.RegisterAddonRequest(
                resource_id="01234567-89ab-cdef-0123-456789abcdef",
                app_id="11111111-2222-3333-4444-555555555555",
                app_name="acme",
                plan="authz:basic",
                region="us",
            ),
            metadata=md,
            timeout=5,
        ),
        "InvalidateAccess": lambda md: admin.InvalidateAccess(
            admin_pb2.InvalidateAccessRequest(app_id="x"), metadata=md, timeout=5
        ),
        "QueryDecisions": lambda md: list(
            admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=5), metadata=md, timeout=5)
        ),
    }
    for name, call in calls.items():
        for who in ("billing", "web"):
            error = refusal(lambda call=call, who=who: call(bearer(tokens[who])))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (name, who)
            assert "AUTHZ_ADMINS" in (error.details() or "")
            info = error_info(error)
            assert info is not None and info.reason == "CALLER_NOT_ADMIN"
        unauthenticated = refusal(lambda call=call: call(()))
        assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED, name
    assert svc.service.facts.addons.get("01234567-89ab-cdef-0123-456789abcdef") is None
    # The admin can do all of it.
    ops = bearer(tokens["ops"])
    assert calls["GetPolicyStatus"](ops).policy_revision
    assert calls["ReloadPolicies"](ops).reloaded
    assert calls["RegisterAddon"](ops).addon.app_name == "acme"
    calls["InvalidateAccess"](ops)
    pb_grpc.AuthorizationServiceStub(svc.channel).Check(check_request(), metadata=ops, timeout=5)
    assert len(calls["QueryDecisions"](ops)) == 1


def test_health_is_open_to_everyone_and_reflection_to_callers(
    svc: RunningService, tokens: dict[str, str]
) -> None:
    health = health_pb2_grpc.HealthStub(svc.channel)
    for service in ("", "authz.v1.AuthorizationService", "authz.v1.AdminService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(iter(watch)).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    reflect = reflection_pb2_grpc.ServerReflectionStub(svc.channel)

    def list_services(metadata: tuple[tuple[str, str], ...]) -> set[str]:
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata,
            timeout=5,
        )
        return {s.name for s in next(iter(replies)).list_services_response.service}

    error = refusal(lambda: list_services(()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    names = list_services(bearer(tokens["web"]))  # any caller, not only admins
    assert {"authz.v1.AuthorizationService", "grpc.health.v1.Health"} <= names


# -- safe defaults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/authz.sock", True),
        ("0.0.0.0:5000", False),
        ("[::]:5000", False),
        (":5000", False),
        ("10.0.0.5:5000", False),
        ("authz.internal:5000", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_insecure_bind_is_refused_before_anything_starts(
    base_settings: Settings, loop_thread: LoopThread, tokens_file: Path
) -> None:
    for listen in ("0.0.0.0:0", "[::]:0"):
        settings = replace(base_settings, listen=listen)
        with pytest.raises(ConfigError) as caught:
            loop_thread.run(start_service(settings))
        message = str(caught.value)
        assert f"refusing to listen on {listen} without caller authentication" in message
        assert "AUTHZ_CALLER_TOKENS" in message and "--insecure" in message
    assert not base_settings.data_dir.exists()  # refused before any store was opened
    # Heroku's PORT binds every interface (for the HTTP listener): the same rule applies.
    heroku = Settings.from_env({"PORT": "0"})
    assert heroku.http_listen == "0.0.0.0:0"
    with pytest.raises(ConfigError, match="note that PORT binds 0.0.0.0"):
        plan_transport(heroku)
    # What makes it acceptable (checked without binding anything but loopback in tests):
    assert plan_transport(replace(heroku, insecure=True)).admission.authenticates is False
    with_tokens = Settings.from_env({"PORT": "0", "AUTHZ_CALLER_TOKENS": str(tokens_file)})
    assert plan_transport(with_tokens).admission.authenticates


def test_development_mode_is_loud_and_anonymous(
    start: Callable[..., RunningService], base_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        svc = start(base_settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("DEVELOPMENT MODE" in m and "loopback only" in m for m in warnings), warnings
    response = pb_grpc.AuthorizationServiceStub(svc.channel).Check(check_request(), timeout=5)
    # Development mode: no credentials needed, AdminService open, and the caller is "anonymous".
    admin_pb2_grpc.AdminServiceStub(svc.channel).GetPolicyStatus(
        admin_pb2.GetPolicyStatusRequest(), timeout=5
    )
    [row] = audit_rows(svc)
    assert row["decision_id"] == response.decision_id
    assert row["caller"] == "anonymous"


def test_admins_missing_is_warned_about(
    start: Callable[..., RunningService],
    token_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        start(replace(token_settings, admins=frozenset()))
    assert any("AdminService refuses every caller" in r.getMessage() for r in caplog.records)


def authz_serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_") and k != "PORT"}
    return subprocess.run(
        [sys.executable, "-m", "authz.cli", "serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
        timeout=60,
    )


def test_cli_refuses_insecure_binds_and_bad_token_files(tmp_path: Path) -> None:
    data = {"AUTHZ_DATA_DIR": str(tmp_path / "data")}
    exposed = authz_serve("--listen", "0.0.0.0:0", env=data)
    assert exposed.returncode == 2, exposed.stderr
    assert "refusing to listen on 0.0.0.0:0 without caller authentication" in exposed.stderr
    heroku = authz_serve(env={**data, "PORT": "0"})
    assert heroku.returncode == 2, heroku.stderr
    assert "refusing to listen on 0.0.0.0:0" in heroku.stderr
    bad = tmp_path / "callers.txt"
    bad.write_text("web not-a-hash\n")
    malformed = authz_serve("--caller-tokens", str(bad), env=data)
    assert malformed.returncode == 2
    assert f"{bad}:1:" in malformed.stderr
    assert not (tmp_path / "data").exists()
