"""Issue 8, callers over TLS: mutual TLS identities, refused certificates, TLS with tokens.

A throwaway CA (tests.conftest.Pki, made with `cryptography`) issues the server certificate
(SAN 127.0.0.1 and localhost) and the client certificates in a tmp directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.audit.query import query
from authz.config import CallerToken, ConfigError, Settings
from authz.server.errors import error_info
from authz.server.transport import plan_transport
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import Pki, RunningService


@pytest.fixture
def mtls_settings(base_settings: Settings, pki: Pki) -> Settings:
    cert, key = pki.server_files()
    return replace(
        base_settings,
        tls_cert=cert,
        tls_key=key,
        client_ca=pki.ca_path,
        admins=frozenset({"ops"}),
    )


@pytest.fixture
def mtls(start: Callable[..., RunningService], mtls_settings: Settings) -> RunningService:
    return start(mtls_settings)


def channel(
    svc: RunningService,
    pki: Pki,
    client: tuple[bytes, bytes] | None = None,
) -> grpc.Channel:
    key, cert = client if client is not None else (None, None)
    credentials = grpc.ssl_channel_credentials(pki.ca_pem, key, cert)
    return grpc.secure_channel(svc.address, credentials)


def check(chan: grpc.Channel, **kwargs: object) -> pb.CheckResponse:
    return pb_grpc.AuthorizationServiceStub(chan).Check(
        pb.CheckRequest(
            principal=pb.Principal(type="service", id="x"),
            action="dashboard.view",
            resource=pb.Resource(type="addon", id="r"),
        ),
        timeout=5,
        **kwargs,
    )


def callers_recorded(svc: RunningService) -> dict[str, str]:
    return {row["decision_id"]: row["caller"] for row in query(svc.service.audit.path, limit=None)}


def test_client_certificates_name_the_caller(mtls: RunningService, pki: Pki) -> None:
    identities = {
        "billing.partner.internal": pki.issue(
            "ignored-cn", dns=("billing.partner.internal",), uris=("spiffe://partner/x",)
        ),
        "spiffe://partner/web": pki.issue("ignored-cn", uris=("spiffe://partner/web",)),
        "ops": pki.issue("ops"),  # no SAN: the subject CN
    }
    sent = {}
    for identity, client in identities.items():
        with channel(mtls, pki, client) as chan:
            sent[check(chan).decision_id] = identity
    assert callers_recorded(mtls) == sent


def test_callers_without_a_good_certificate_never_get_a_call(
    mtls: RunningService, pki: Pki, tmp_path: Path
) -> None:
    """Refused in the TLS handshake, so the client sees UNAVAILABLE and nothing is decided."""
    other_ca = Pki.create(tmp_path / "other", "some other CA")
    attempts = {
        "no client certificate": channel(mtls, pki),
        "certificate from another CA": channel(mtls, pki, other_ca.issue("billing")),
        "plaintext": grpc.insecure_channel(mtls.address),
    }
    for what, chan in attempts.items():
        with chan:
            with pytest.raises(grpc.RpcError) as caught:
                check(chan)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, what
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
    # A client that does not trust the server's CA refuses the server, too.
    stranger = grpc.ssl_channel_credentials(other_ca.ca_pem, *pki.issue("billing"))
    with grpc.secure_channel(mtls.address, stranger) as chan, pytest.raises(grpc.RpcError):
        check(chan)
    assert callers_recorded(mtls) == {}


def test_admin_service_needs_an_admin_certificate(mtls: RunningService, pki: Pki) -> None:
    request = admin_pb2.GetPolicyStatusRequest()
    with channel(mtls, pki, pki.issue("web", dns=("web",))) as chan:
        with pytest.raises(grpc.RpcError) as caught:
            admin_pb2_grpc.AdminServiceStub(chan).GetPolicyStatus(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert info is not None and info.reason == "CALLER_NOT_ADMIN"
        assert "'web'" in (caught.value.details() or "")
        # Health is open to every connection (here: any certificate of the CA).
        status = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    with channel(mtls, pki, pki.issue("ops", dns=("ops",))) as chan:
        reply = admin_pb2_grpc.AdminServiceStub(chan).GetPolicyStatus(request, timeout=5)
        assert reply.policy_revision


def test_certificate_and_token_must_agree(
    start: Callable[..., RunningService], mtls_settings: Settings, pki: Pki
) -> None:
    settings = replace(
        mtls_settings,
        caller_tokens=(CallerToken.of("billing", "tok-billing"), CallerToken.of("web", "tok-web")),
    )
    svc = start(settings)
    billing = pki.issue("billing")
    with channel(svc, pki, billing) as chan:
        alone = check(chan)  # the certificate is enough
        both = check(chan, metadata=(("authorization", "Bearer tok-billing"),))
        for token in ("tok-web", "tok-unknown"):
            with pytest.raises(grpc.RpcError) as caught:
                check(chan, metadata=(("authorization", f"Bearer {token}"),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert token not in (caught.value.details() or "")
    assert callers_recorded(svc) == {alone.decision_id: "billing", both.decision_id: "billing"}


def test_tls_with_bearer_tokens(
    start: Callable[..., RunningService], base_settings: Settings, pki: Pki
) -> None:
    cert, key = pki.server_files()
    token = "a-long-random-token-for-the-web-tier"
    settings = replace(
        base_settings,
        tls_cert=cert,
        tls_key=key,
        caller_tokens=(CallerToken("web", hashlib.sha256(token.encode()).digest()),),
    )
    svc = start(settings)
    with channel(svc, pki) as chan:  # server-authenticated TLS, no client certificate
        with pytest.raises(grpc.RpcError) as caught:
            check(chan)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = check(chan, metadata=(("authorization", f"Bearer {token}"),))
    assert callers_recorded(svc) == {response.decision_id: "web"}


def test_tls_alone_is_not_caller_authentication(base_settings: Settings, pki: Pki) -> None:
    cert, key = pki.server_files()
    exposed = replace(base_settings, listen="0.0.0.0:0", tls_cert=cert, tls_key=key)
    with pytest.raises(ConfigError, match="TLS alone encrypts but does not say who calls"):
        plan_transport(exposed)
    assert plan_transport(replace(exposed, client_ca=pki.ca_path)).admission.authenticates


def test_tls_misconfiguration_is_refused_at_start(
    base_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.server_files()
    other_cert, _ = pki.server_files("other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = {
        "AUTHZ_TLS_CERT and AUTHZ_TLS_KEY go together": {"tls_cert": cert},
        "AUTHZ_CLIENT_CA turns on mutual TLS": {"client_ca": pki.ca_path},
        "is not the private key of the first certificate": {"tls_cert": other_cert, "tls_key": key},
        "AUTHZ_TLS_CERT: ": {"tls_cert": junk, "tls_key": key},
        "AUTHZ_TLS_KEY: ": {"tls_cert": cert, "tls_key": junk},
        "AUTHZ_CLIENT_CA: ": {"tls_cert": cert, "tls_key": key, "client_ca": junk},
        "cannot read": {"tls_cert": cert, "tls_key": tmp_path / "absent.key"},
    }
    key_text = key.read_text()
    for expected, overrides in cases.items():
        with pytest.raises(ConfigError) as caught:
            plan_transport(replace(base_settings, **overrides))
        assert expected in str(caught.value), (expected, str(caught.value))
        assert key_text.splitlines()[1] not in str(caught.value)
    env = {"AUTHZ_TLS_KEY": str(key)}
    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env(env)
    settings = Settings.from_env(
        {
            "AUTHZ_TLS_CERT": str(cert),
            "AUTHZ_TLS_KEY": str(key),
            "AUTHZ_CLIENT_CA": str(pki.ca_path),
        }
    )
    assert settings.authenticates_callers and settings.client_ca == pki.ca_path


@pytest.mark.parametrize(
    ("common_name", "names", "shown"),
    [
        pytest.param("x", {"dns": ("web-tier ",)}, "'web-tier '", id="dns-trailing-space"),
        pytest.param(" ops", {}, "' ops'", id="cn-leading-space"),
        pytest.param("x", {"dns": ("web\ttier",)}, "'web\\ttier'", id="dns-tab"),
        # grpc's own peer_uri property ends this one at the NUL, as "spiffe://partner/ops".
        pytest.param("x", {"uris": ("spiffe://partner/ops\x00",)}, "\\x00", id="uri-nul-byte"),
        pytest.param("ops\u200b", {}, "'ops\\u200b'", id="cn-zero-width-space"),
    ],
)
def test_certificate_names_are_exact(
    start: Callable[..., RunningService],
    mtls_settings: Settings,
    pki: Pki,
    common_name: str,
    names: dict[str, tuple[str, ...]],
    shown: str,
) -> None:
    """Issue 12 item 15: a certificate for "web-tier " is not one for the admin "web-tier"."""
    admins = frozenset({"web-tier", "ops", "web\ttier", "spiffe://partner/ops"})
    svc = start(replace(mtls_settings, admins=admins))
    with channel(svc, pki, pki.issue(common_name, **names)) as chan:
        for call in (
            lambda: admin_pb2_grpc.AdminServiceStub(chan).GetPolicyStatus(
                admin_pb2.GetPolicyStatusRequest(), timeout=5
            ),
            lambda: check(chan),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            details = caught.value.details() or ""
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, details
            assert "is not an exact caller name" in details and shown in details
            info = error_info(caught.value)
            assert info is not None and info.reason == "CALLER_UNAUTHENTICATED"
        # The connection is still good for what is open to every connection: probes.
        status = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert callers_recorded(svc) == {}
    # The exact name is an admin.
    with channel(svc, pki, pki.issue("x", dns=("web-tier",))) as chan:
        reply = admin_pb2_grpc.AdminServiceStub(chan).GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(), timeout=5
        )
        assert reply.policy_revision
