"""The add-on lifecycle's parts (issue 13, issue 18 items 4-5): the webhook store and receiver on
both backends, one error table, AUTHZ_PUBLIC_URL, and store calls kept off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from authz.audit.errors import AuditLogNotFound, AuditUnavailable
from authz.config import ConfigError, Settings, parse_public_url, resolve_public_url
from authz.errors import KINDS, AuthzError, Refusal
from authz.facts.access import AccessUnavailable
from authz.facts.addons import AddonRegistry, RegistryError
from authz.facts.heroku import PlatformError
from authz.facts.oauth_tokens import OAuthTokenStore, TokenStoreError
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from authz.facts.webhooks import WebhookSubscriptions, signature
from authz.login import LoginRefused
from authz.provisioning import Provisioning, ProvisioningRequest, WebhookUnverified
from authz.server.convert import BadRequest
from authz.server.errors import status_for
from authz.store import Database, open_store
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from tests.clock import FakeClock
from tests.conftest import RunningService
from tests.pg import Backend

KEY = "test-token-key-0123456789abcdef0123456789"
RID = "01234567-89ab-cdef-0123-456789abcdef"
APP = "6f0d4bb2-9c1e-4a40-8f4e-0a1b2c3d4e5f"
SECRET = "the-webhook-secret-of-this-add-on-0123456789"


def lifecycle(db: Database, clock: FakeClock) -> Provisioning:
    """One replica's Provisioning over `db`, without the Platform API."""
    return Provisioning(
        registry=AddonRegistry(db, clock),
        sessions=SessionStore(db, clock),
        token_store=OAuthTokenStore(db, KEY, clock=clock),
        subscriptions=WebhookSubscriptions(db, KEY, clock=clock),
        replay=ReplayGuard(db, clock),
        clock=clock,
    )


def event(event_id: str, **fields: object) -> bytes:
    body = {
        "id": event_id,
        "resource": "addon",
        "action": "update",
        "data": {"id": RID, "plan": {"name": "authz:pro"}},
        "webhook_metadata": {"attempt": {"id": f"attempt-{time.monotonic()}"}},
        **fields,
    }
    return json.dumps(body).encode()


# -- the webhook store and receiver -----------------------------------------------------------


def test_the_secret_is_sealed_and_verifies_in_constant_shape(backend: Backend) -> None:
    db = backend.open()
    subscriptions = WebhookSubscriptions(db, KEY)
    subscriptions.put(RID, "hook-1", "https://authz.example/heroku/webhooks/" + RID, SECRET)
    [(ciphertext, nonce)] = db.execute("SELECT ciphertext, nonce FROM heroku_webhooks").rows
    assert SECRET.encode() not in bytes(ciphertext) and len(bytes(nonce)) == 12
    body = b'{"id": "e"}'
    assert subscriptions.verify(RID, body, signature(SECRET, body))
    for header in (
        None,
        "",
        "garbage!",
        signature("another secret", body),
        signature(SECRET, b"x"),
    ):
        assert not subscriptions.verify(RID, body, header)
    assert not subscriptions.verify(
        "fedcba98-7654-3210-fedc-ba9876543210", body, signature("", body)
    )
    # Another key cannot read it: no delivery verifies (and nothing raises).
    assert not WebhookSubscriptions(db, "another-key-0123456789abcdef").verify(
        RID, body, signature(SECRET, body)
    )
    assert subscriptions.get(RID).webhook_id == "hook-1"  # type: ignore[union-attr]
    assert subscriptions.delete(RID) and subscriptions.get(RID) is None
    assert not subscriptions.verify(RID, body, signature(SECRET, body))


def test_an_event_is_acted_on_once_across_replicas(backend: Backend) -> None:
    """Heroku retries a delivery, and replicas share the receiver: the event id decides."""
    clock = FakeClock(1_700_000_000.0)
    replicas = [lifecycle(backend.open(), clock) for _ in range(2)]
    replicas[0].registry.register(RID, APP, "shop", "basic", "us")
    replicas[0].subscriptions.put(RID, "hook-1", "https://x/heroku/webhooks/" + RID, SECRET)

    async def scenario() -> list[bool]:
        results = []
        for replica in (*replicas, replicas[0]):
            body = event("event-1")  # a new attempt id each time, the same event id
            results.append(await replica.receive(RID, body, signature(SECRET, body)))
        for replica in replicas:
            await replica.aclose()  # the accepted event has been applied
        return results

    assert asyncio.run(scenario()) == [True, False, False]
    assert replicas[1].registry.get(RID).plan == "pro"  # type: ignore[union-attr]


def test_refused_deliveries_change_nothing(backend: Backend) -> None:
    clock = FakeClock(1_700_000_000.0)
    provisioning = lifecycle(backend.open(), clock)
    provisioning.registry.register(RID, APP, "shop", "basic", "us")
    provisioning.subscriptions.put(RID, "hook-1", "https://x/heroku/webhooks/" + RID, SECRET)

    async def scenario() -> None:
        body = event("event-1", action="destroy", data={"id": RID, "state": "deprovisioned"})
        for rid, header in (
            (RID, None),
            (RID, signature("wrong", body)),
            (RID.upper().replace("-", ""), signature(SECRET, body)),
        ):
            with pytest.raises(WebhookUnverified):
                await provisioning.receive(rid, body, header)
        # Signed, but not an event: refused as malformed, also changing nothing.
        for junk in (b"[]", b"not json", json.dumps({"id": "x", "action": "update"}).encode()):
            with pytest.raises(Refusal) as refused:
                await provisioning.receive(RID, junk, signature(SECRET, junk))
            assert refused.value.code == "WEBHOOK_MALFORMED" and refused.value.kind == "invalid"
        await provisioning.aclose()
        # The genuine delivery is not taken for a repeat of the refused ones.
        assert await provisioning.receive(RID, body, signature(SECRET, body))
        await provisioning.aclose()

    asyncio.run(scenario())
    assert provisioning.registry.get(RID).state == "deprovisioned"  # type: ignore[union-attr]
    assert provisioning.subscriptions.get(RID) is None  # the secret went with the add-on


def test_the_provisioning_body_is_taken_as_heroku_sends_it() -> None:
    body = {
        "callback_url": "https://api.heroku.com/addons/" + RID,
        "name": "authz-curved-12345",
        "oauth_grant": {
            "code": "grant-code",
            "expires_at": "2026-11-01T12:05:00Z",
            "type": "authorization_code",
        },
        "options": {"color": "blue"},
        "plan": "basic",
        "region": "amazon-web-services::us-east-1",
        "uuid": RID,
        "log_input_url": "https://token:t.x@1.us.logplex.example/logs",
        "log_drain_token": "d.x",
        "a_field_heroku_adds_later": True,
    }
    request = ProvisioningRequest.from_heroku(body)
    assert (request.resource_id, request.plan, request.oauth_grant_code) == (
        RID,
        "basic",
        "grant-code",
    )
    assert (request.app_id, request.region) == ("", "amazon-web-services::us-east-1")
    with pytest.raises(Refusal, match="authorization_code"):
        ProvisioningRequest.from_heroku({**body, "oauth_grant": {"code": "c", "type": "implicit"}})


# -- one error table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "grpc_code", "http", "reason"),
    [
        (BadRequest("principal is required"), grpc.StatusCode.INVALID_ARGUMENT, 400, ""),
        (
            Refusal("X_MALFORMED", "m", invalid_argument=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
            "X_MALFORMED",
        ),
        (
            RegistryError("ADDON_DEPROVISIONED", "m"),
            grpc.StatusCode.FAILED_PRECONDITION,
            409,
            "ADDON_DEPROVISIONED",
        ),
        (
            RegistryError("ADDON_UNKNOWN", "m", kind="not_found"),
            grpc.StatusCode.NOT_FOUND,
            404,
            "ADDON_UNKNOWN",
        ),
        (
            LoginRefused("SSO_REPLAYED", "m", "d-1"),
            grpc.StatusCode.PERMISSION_DENIED,
            403,
            "SSO_REPLAYED",
        ),
        (
            LoginRefused("SSO_MISSING_FIELD", "m", "d-2", True),
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
            "SSO_MISSING_FIELD",
        ),
        (
            PlatformError("rate_limited", "m"),
            grpc.StatusCode.UNAVAILABLE,
            503,
            "HEROKU_RATE_LIMITED",
        ),
        (
            PlatformError("forbidden", "m"),
            grpc.StatusCode.FAILED_PRECONDITION,
            409,
            "HEROKU_FORBIDDEN",
        ),
        (PlatformError("not_found", "m"), grpc.StatusCode.NOT_FOUND, 404, "HEROKU_NOT_FOUND"),
        (AccessUnavailable("slow"), grpc.StatusCode.UNAVAILABLE, 503, "UNAVAILABLE"),
        (TokenStoreError("m"), grpc.StatusCode.UNAVAILABLE, 503, "TOKEN_STORE_ERROR"),
        (AuditUnavailable("disk full"), grpc.StatusCode.UNAVAILABLE, 503, "AUDIT_UNAVAILABLE"),
        (AuditLogNotFound("none"), grpc.StatusCode.FAILED_PRECONDITION, 409, "AUDIT_LOG_MISSING"),
        (WebhookUnverified(), grpc.StatusCode.UNAUTHENTICATED, 401, "WEBHOOK_SIGNATURE_INVALID"),
    ],
)
def test_one_table_answers_every_domain_error(
    error: AuthzError, grpc_code: grpc.StatusCode, http: int, reason: str
) -> None:
    status = status_for(error)
    assert (status.grpc, status.http, status.reason) == (grpc_code, http, reason)
    assert error.kind in KINDS and status.message


def test_login_and_audit_refusals_keep_their_words() -> None:
    refused = status_for(LoginRefused("LOGIN_DENIED", "no role", "decision-7"))
    assert refused.message == "SSO login refused: no role"
    assert refused.metadata == {"decision_id": "decision-7"}
    unrecorded = status_for(AuditUnavailable("disk full"))
    assert unrecorded.message.startswith("decision not answered because the audit log could not")


# -- AUTHZ_PUBLIC_URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://authz.example.com", "https"),
        ("authz.example.com", "absolute https"),
        ("https://authz.example.com?x=1", "query"),
        ("https://authz.example.com:0", "port 0"),
        ("https://authz.example.com:99999", "port"),
    ],
)
def test_public_url_is_refused_unless_https_or_loopback(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="AUTHZ_PUBLIC_URL") as refused:
        Settings.from_env({"AUTHZ_PUBLIC_URL": value, "PORT": "8080"})
    assert says in str(refused.value)


def test_public_url_never_echoes_credentials() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_public_url("https://user:hunter2-secret@authz.example.com")
    assert "hunter2" not in str(refused.value) and "credentials" in str(refused.value)


def test_public_url_needs_the_http_listener_and_resolves_port_0() -> None:
    settings = Settings.from_env({"AUTHZ_PUBLIC_URL": "https://authz.example.com/x/", "PORT": "80"})
    assert settings.public_url == "https://authz.example.com/x"
    with pytest.raises(ConfigError, match="HTTP listener"):
        Settings.from_env({"AUTHZ_PUBLIC_URL": "https://authz.example.com"})
    assert resolve_public_url("http://127.0.0.1:0", 5123) == "http://127.0.0.1:5123"
    assert resolve_public_url("http://[::1]:0/p", 7) == "http://[::1]:7/p"
    assert resolve_public_url("https://authz.example.com", 7) == "https://authz.example.com"


# -- no blocking store call on the event loop ----------------------------------------------------


@pytest.fixture
def svc(start: Callable[..., RunningService], any_backend_settings: Settings) -> RunningService:
    return start(any_backend_settings)


@pytest.fixture
def held(svc: RunningService) -> Iterator[Callable[[str], None]]:
    """held(table): a transaction of another connection to the service's store holds `table`
    (SQLite: the whole database) against writers until the test ends."""
    settings = svc.service.settings
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hold(table: str) -> None:
        taken = threading.Event()

        def run() -> None:
            db = open_store(settings.database_url or settings.data_dir / "state.db")
            with db, db.transaction():
                if db.dialect == "postgresql":
                    db.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                else:
                    db.execute(f"DELETE FROM {table} WHERE 0")  # BEGIN IMMEDIATE holds it
                taken.set()
                release.wait(30)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        assert taken.wait(10)

    yield hold
    release.set()
    for thread in threads:
        thread.join(10)


@pytest.mark.parametrize(
    ("table", "call"),
    [
        (
            "sessions",
            lambda ch: session_pb2_grpc.SessionServiceStub(ch).RevokeSession.future(
                session_pb2.RevokeSessionRequest(session_token="azs_" + "x" * 43), timeout=30
            ),
        ),
        (
            "addons",
            lambda ch: admin_pb2_grpc.AdminServiceStub(ch).DeprovisionAddon.future(
                admin_pb2.DeprovisionAddonRequest(resource_id=RID), timeout=30
            ),
        ),
    ],
    ids=["RevokeSession", "DeprovisionAddon"],
)
def test_a_waiting_store_call_does_not_stall_other_calls(
    svc: RunningService, held: Callable[[str], None], table: str, call: Callable
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    admin.RegisterAddon(
        admin_pb2.RegisterAddonRequest(resource_id=RID, app_id=APP, app_name="shop", plan="basic")
    )
    held(table)
    waiting = call(svc.channel)
    time.sleep(0.3)  # it has reached the store and waits there
    assert not waiting.done()
    started = time.monotonic()
    admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), timeout=10)
    assert time.monotonic() - started < 2.0, "the event loop was blocked by a store call"
    assert not waiting.done()
