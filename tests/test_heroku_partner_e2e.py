"""Issue 13 end to end: Heroku provisions through the partner, authz learns the app, subscribes
to the add-on's webhooks, and a signed event takes a removed collaborator's access in seconds.

Real parts only: the Heroku simulator sends its verbatim v3 provisioning, plan-change and
deprovision calls to a partner endpoint on loopback, which forwards them to authz's HTTP listener
as the README shows (`forward_to_authz`); the simulator delivers signed webhooks to authz's
receiver; SSO and checks go over gRPC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from authz.config import CallerToken, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import provisioning_body, register_addon_request
from authz.facts.webhooks import INCLUDES
from authz.server.errors import error_info
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService, with_bearer
from tests.heroku_world import world_settings
from tests.pg import Backend
from tests.test_heroku_sim_partner import Received, Receiver

ACME_APP = "acme-billing"  # personal app: alice owner, bob and carol collaborators
TOKENS = {"partner": secrets.token_urlsafe(24), "web": secrets.token_urlsafe(24)}
RESOURCES = "/heroku/resources"


def forward_to_authz(
    authz_url: str, token: str, method: str, path: str, body: bytes
) -> httpx.Response:
    """The README's example: the partner's handler of Heroku's call to {base_url}{path}
    (after it checked Heroku's Basic credentials) forwards the body, as it came, to authz."""
    return httpx.request(
        method,
        authz_url + path,
        content=body or None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=20,
    )


@dataclass
class Partner:
    """The simulator, authz, and the partner's provisioning endpoint between them."""

    sim: HerokuSimulator
    svc: RunningService
    endpoint: Receiver
    forwarded: list[httpx.Response]

    @property
    def http_url(self) -> str:
        assert self.svc.service.http is not None
        return self.svc.service.http.url

    @property
    def authz(self) -> pb_grpc.AuthorizationServiceStub:
        return pb_grpc.AuthorizationServiceStub(self.svc.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.svc.channel)

    def state(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.svc.service.state.execute(sql, params).rows

    def login(self, resource_id: str, handle: str) -> str:
        form = self.sim.sso_form(resource_id, handle)
        sessions = session_pb2_grpc.SessionServiceStub(self.svc.channel)
        reply = sessions.ExchangeSso(session_pb2.ExchangeSsoRequest(form=form), timeout=10)
        return reply.session_token

    def check(
        self, token: str, resource_id: str, action: str = "dashboard.view"
    ) -> pb.CheckResponse:
        request = pb.CheckRequest(
            session_token=token, action=action, resource=pb.Resource(type="addon", id=resource_id)
        )
        return self.authz.Check(request, timeout=10)

    def role_in_last_decision(self, token: str, resource_id: str) -> str:
        """The access role a check for this session was decided with (from its audit record)."""
        decision_id = self.check(token, resource_id).decision_id
        query = admin_pb2.QueryDecisionsRequest(resource=f"addon:{resource_id}", limit=20)
        for reply in self.admin.QueryDecisions(query):
            if reply.decision_id == decision_id:
                return str(reply.record["input"]["access"]["role"])
        raise AssertionError(f"decision {decision_id} is not in the audit log")

    def provision(self, app: str = ACME_APP, plan: str = "basic") -> str:
        result = self.sim.provision(app, plan)
        assert result["state"] == "provisioned", result
        return str(result["resource_id"])

    def receiver(self, resource_id: str) -> str:
        return f"{self.http_url}/heroku/webhooks/{resource_id}"


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(
        load_fixture(), webhook_retry_base=0.05, webhook_retry_cap=0.2, webhook_timeout=5
    ) as simulator:
        yield simulator


def partner_settings(base: Settings, sim: HerokuSimulator, **overrides: Any) -> Settings:
    return world_settings(
        base,
        sim,
        sso_salts=(sim.sso_salt,),
        http_listen="127.0.0.1:0",
        public_url="http://127.0.0.1:0",  # port 0: the HTTP listener's own, once bound
        access_ttl=300.0,  # the bound: only the webhook can make this fast
        caller_tokens=tuple(CallerToken.of(name, token) for name, token in TOKENS.items()),
        admins=frozenset({"partner"}),
        **overrides,
    )


@pytest.fixture
def make_partner(
    sim: HerokuSimulator, start: Callable[..., RunningService], any_backend_settings: Settings
) -> Iterator[Callable[..., Partner]]:
    endpoints: list[Receiver] = []

    def make(**overrides: Any) -> Partner:
        svc = start(partner_settings(any_backend_settings, sim, **overrides))
        svc.channel = with_bearer(svc.channel, TOKENS["partner"])
        forwarded: list[httpx.Response] = []
        endpoint = Receiver()
        endpoints.append(endpoint)
        partner = Partner(sim, svc, endpoint, forwarded)

        def answer(request: Received) -> tuple[int, Any]:
            # A real partner checks Heroku's Basic credentials (the manifest's id and API
            # password) and provisions its own service here first.
            assert request.headers["Authorization"].startswith("Basic ")
            reply = forward_to_authz(
                partner.http_url, TOKENS["partner"], request.method, request.path, request.body
            )
            forwarded.append(reply)
            if not reply.is_success:
                return 503, {"message": "authz refused: " + reply.text}
            if request.method == "POST":
                return 200, {"id": json.loads(request.body)["uuid"], "message": "ready"}
            return 200, {"message": "done"}

        endpoint.answer = answer
        sim.set_manifest(base_url=endpoint.start() + RESOURCES)
        return partner

    yield make
    for endpoint in endpoints:
        endpoint.stop()


@pytest.fixture
def partner(make_partner: Callable[..., Partner]) -> Partner:
    return make_partner()


def signed(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def until(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


# -- the "done when" ----------------------------------------------------------------------


def test_a_removed_collaborator_is_denied_within_2s_of_the_signed_event(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    # Heroku's verbatim v3 body went through the partner: it names no app.
    body = sim.provisioning_request(rid)
    assert "app" not in json.dumps(sorted(body)) and body["uuid"] == rid
    assert partner.forwarded[0].status_code == 201
    reply = partner.forwarded[0].json()
    acme = sim.app(ACME_APP)
    assert reply["app"] == {"id": acme["id"], "name": ACME_APP}
    assert (reply["plan"], reply["region"]) == ("basic", "amazon-web-services::us-east-1")
    assert reply["has_oauth_tokens"] and reply["webhook_subscribed"] and reply["changed"]
    # One subscription, with the add-on's own token, at authz's receiver for this add-on.
    [hook] = sim.webhook_state()["subscriptions"]
    assert hook["addon"]["id"] == rid and hook["url"] == partner.receiver(rid)
    assert sorted(hook["include"]) == sorted(INCLUDES) and hook["level"] == "sync"

    carol = partner.login(rid, "carol")
    assert partner.check(carol, rid).allowed  # the access list is cached now, for 300 s

    removed_at = time.monotonic()
    sim.remove_collaborator(ACME_APP, "carol")
    elapsed = until(lambda: not partner.check(carol, rid).allowed, 2.0, "carol denied")
    denied = partner.check(carol, rid)
    assert "no owner, admin or collaborator role" in denied.reasons[0]
    print(f"carol denied {time.monotonic() - removed_at:.3f} s after her removal ({elapsed:.3f})")
    assert sim.wait_for_deliveries()
    deliveries = sim.webhook_state()["deliveries"]
    [removal] = [d for d in deliveries if d["event"]["include"] == "api:collaborator"]
    assert all(d["status"] == "succeeded" for d in deliveries)
    assert removal["last_attempt"]["code"] == 204
    # Others keep their access (and it comes from Heroku's new list).
    assert partner.check(partner.login(rid, "alice"), rid).allowed


def test_a_badly_signed_event_changes_nothing(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    alice = partner.login(rid, "alice")
    assert partner.check(alice, rid).allowed
    sim.reset_counters()
    app_id = sim.app(ACME_APP)["id"]
    forged = [
        {"resource": "collaborator", "action": "destroy", "data": {"app": {"id": app_id}}},
        {"resource": "addon", "action": "destroy", "data": {"id": rid, "state": "deprovisioned"}},
        {"resource": "addon", "action": "update", "data": {"id": rid, "plan": {"name": "x:big"}}},
    ]
    with httpx.Client(timeout=5) as http:
        for number, event in enumerate(forged):
            body = json.dumps({**event, "id": f"forged-{number}"}).encode()
            for headers in (
                {},
                {"Heroku-Webhook-Hmac-SHA256": signed(secrets.token_hex(16), body)},
                {"Heroku-Webhook-Hmac-SHA256": "not base64 at all!"},
                {"Heroku-Webhook-Hmac-SHA256": ""},
            ):
                reply = http.post(partner.receiver(rid), content=body, headers=headers)
                assert reply.status_code == 401, reply.text
                assert reply.json()["error"]["reason"] == "WEBHOOK_SIGNATURE_INVALID"
                assert reply.headers["WWW-Authenticate"].startswith("Heroku-Webhook-Hmac-SHA256")
        # Not an add-on uuid, or one with no subscription: the same 401, no hint which.
        for path in ("not-a-uuid", "01234567-89ab-cdef-0123-456789abcdef"):
            reply = http.post(
                f"{partner.http_url}/heroku/webhooks/{path}",
                content=b"{}",
                headers={"Heroku-Webhook-Hmac-SHA256": signed("x", b"{}")},
            )
            assert reply.status_code == 401
    # Nothing changed: the add-on, its plan, its sessions, and the cached access list.
    [(state, plan)] = partner.state("SELECT state, plan FROM addons WHERE resource_id = ?", rid)
    assert (state, plan) == ("provisioned", "basic")
    assert partner.check(alice, rid).allowed
    assert sim.count("GET", f"/addons/{rid}") == 0, "the cached access list was dropped"


def test_deprovisioning_ends_sessions_tokens_and_the_subscription(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    alice = partner.login(rid, "alice")
    [hook] = sim.webhook_state()["subscriptions"]
    assert partner.state("SELECT COUNT(*) FROM heroku_oauth_tokens") == [(1,)]
    assert partner.state("SELECT webhook_id FROM heroku_webhooks") == [(hook["id"],)]

    gone = sim.deprovision(rid)
    assert gone["state"] == "deprovisioned" and gone["response"]["status"] == 200
    reply = partner.forwarded[-1].json()
    assert reply["state"] == "deprovisioned" and reply["sessions_revoked"] == 1
    assert not reply["has_oauth_tokens"] and not reply["webhook_subscribed"]
    denied = partner.check(alice, rid)
    assert not denied.allowed and "SESSION_UNKNOWN" in denied.reasons[0]
    assert partner.state("SELECT COUNT(*) FROM heroku_oauth_tokens") == [(0,)]
    assert partner.state("SELECT COUNT(*) FROM heroku_webhooks") == [(0,)]
    # authz unsubscribed itself, with the add-on's token, before it deleted the token.
    assert sim.count("DELETE", f"/addons/{rid}/webhooks/{hook['id']}") == 1
    assert sim.webhook_state()["subscriptions"] == []
    # Heroku may send the DELETE again: it succeeds and changes nothing.
    again = forward_to_authz(
        partner.http_url, TOKENS["partner"], "DELETE", f"{RESOURCES}/{rid}", b""
    )
    assert again.status_code == 200 and again.json()["sessions_revoked"] == 0


def test_plan_changes_reach_policies_as_resource_addon_plan(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    alice = partner.login(rid, "alice")
    changed = sim.change_plan(rid, "pro")
    assert changed["plan"] == "authz:pro" and changed["response"]["status"] == 200
    assert partner.forwarded[-1].json()["plan"] == "pro"
    partner.check(alice, rid)
    [record] = list(
        partner.admin.QueryDecisions(
            admin_pb2.QueryDecisionsRequest(resource=f"addon:{rid}", limit=1)
        )
    )
    assert record.record["input"]["resource"]["addon"]["plan"] == "pro"
    # Heroku's api:addon update event says the same; the gRPC call does it too.
    assert sim.wait_for_deliveries()
    reply = partner.admin.ChangePlan(admin_pb2.ChangePlanRequest(resource_id=rid, plan="authz:max"))
    assert reply.addon.plan == "max" and reply.addon.webhook_subscribed


def test_app_renames_and_transfers_arrive_by_webhook(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    alice = partner.login(rid, "alice")
    assert partner.check(alice, rid).allowed
    sim.update_app(ACME_APP, name="acme-invoices")
    until(
        lambda: (
            partner.state("SELECT app_name FROM addons WHERE resource_id = ?", rid)
            == [("acme-invoices",)]
        ),
        2.0,
        "the rename recorded",
    )
    # A transfer to bob: his cached role (collaborator) gives way to owner at once.
    bob = partner.login(rid, "bob")
    assert partner.role_in_last_decision(bob, rid) == "collaborator"
    sim.update_app("acme-invoices", owner="bob")
    until(lambda: partner.role_in_last_decision(bob, rid) == "owner", 2.0, "bob the owner")


# -- provisioning: retries, grants, claims ---------------------------------------------------------


def test_a_redelivered_provisioning_call_spends_nothing(partner: Partner) -> None:
    sim = partner.sim
    rid = partner.provision()
    exchanges = sim.count("POST", "/oauth/token")
    again = sim.resend_provisioning(rid)
    assert again["state"] == "provisioned" and again["response"]["status"] == 200
    reply = partner.forwarded[-1]
    assert reply.status_code == 200 and reply.json()["changed"] is False
    assert sim.count("POST", "/oauth/token") == exchanges  # the grant was not spent again
    assert len(sim.webhook_state()["subscriptions"]) == 1  # nor subscribed twice


def test_a_new_grant_replaces_the_tokens_and_another_addons_grant_is_refused(
    partner: Partner,
) -> None:
    sim = partner.sim
    rid = partner.provision()
    alice = partner.login(rid, "alice")
    [(first,)] = partner.state("SELECT ciphertext FROM heroku_oauth_tokens")
    request = register_addon_request(sim, rid)  # a grant Heroku made for this add-on
    assert partner.admin.RegisterAddon(request).changed
    [(second,)] = partner.state("SELECT ciphertext FROM heroku_oauth_tokens")
    assert bytes(first) != bytes(second)

    other = sim.addon("authz-spherical-67890")["id"]  # globex's add-on, on another app
    stolen = register_addon_request(sim, rid, grant_code=sim.create_grant(other))
    with pytest.raises(grpc.RpcError) as refused:
        partner.admin.RegisterAddon(stolen)
    info = error_info(refused.value)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info is not None and info.reason == "ADDON_GRANT_MISMATCH"
    assert partner.state("SELECT ciphertext FROM heroku_oauth_tokens") == [(second,)]
    partner.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=sim.app(ACME_APP)["id"])
    )
    assert partner.check(alice, rid).allowed  # the add-on's own tokens still serve


def test_app_claims_are_checked_and_a_corrected_retry_completes(partner: Partner) -> None:
    sim = partner.sim
    rid = sim.addon("authz-curved-12345")["id"]
    code = sim.create_grant(rid)
    wrong = register_addon_request(sim, rid, grant_code=code)
    wrong.app_id = sim.app("globex-api")["id"]
    with pytest.raises(grpc.RpcError) as refused:
        partner.admin.RegisterAddon(wrong)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "ADDON_APP_MISMATCH"  # type: ignore[union-attr]
    assert "Heroku says" in (refused.value.details() or "")
    assert partner.state("SELECT COUNT(*) FROM addons") == [(0,)]
    # The same grant again, as Heroku sent it (no app): registered, the grant not spent twice.
    exchanges = sim.count("POST", "/oauth/token")
    right = register_addon_request(sim, rid, grant_code=code)
    assert partner.admin.RegisterAddon(right).addon.app_name == ACME_APP
    assert sim.count("POST", "/oauth/token") == exchanges


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not JSON"),
        (b"[]", "provisioning JSON object"),
        (json.dumps({"plan": "basic"}).encode(), "'uuid'"),
        (json.dumps({"uuid": "x", "plan": "basic"}).encode(), "uuid"),
        (json.dumps({"uuid": "01234567-89ab-cdef-0123-456789abcdef"}).encode(), "'plan'"),
        (
            json.dumps(
                {"uuid": "01234567-89ab-cdef-0123-456789abcdef", "plan": "basic", "oauth_grant": 1}
            ).encode(),
            "oauth_grant",
        ),
    ],
)
def test_malformed_provisioning_bodies_are_400(partner: Partner, body: bytes, says: str) -> None:
    reply = forward_to_authz(partner.http_url, TOKENS["partner"], "POST", RESOURCES, body)
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]["message"]
    assert partner.state("SELECT COUNT(*) FROM addons") == [(0,)]


def test_provisioning_routes_are_for_admins_only(partner: Partner) -> None:
    body = json.dumps(provisioning_body(partner.sim, "authz-curved-12345")).encode()
    for token, status in ((TOKENS["web"], 403), ("wrong", 401)):
        reply = forward_to_authz(partner.http_url, token, "POST", RESOURCES, body)
        assert reply.status_code == status
    assert partner.state("SELECT COUNT(*) FROM addons") == [(0,)]


def test_without_a_grant_the_app_must_be_named(partner: Partner) -> None:
    request = register_addon_request(partner.sim, "authz-curved-12345", grant=False)
    request.app_id = ""
    with pytest.raises(grpc.RpcError) as refused:
        partner.admin.RegisterAddon(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "ADDON_APP_UNKNOWN"  # type: ignore[union-attr]


def test_an_event_received_by_one_replica_reaches_the_others(
    make_partner: Callable[..., Partner],
    start: Callable[..., RunningService],
    any_backend_settings: Settings,
    backend: Backend,
) -> None:
    if backend.name != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    partner = make_partner()  # replica A: Heroku's webhooks are delivered to it
    sim = partner.sim
    rid = partner.provision()
    other = start(partner_settings(any_backend_settings, sim))  # replica B
    other.channel = with_bearer(other.channel, TOKENS["partner"])
    on_b = Partner(sim, other, partner.endpoint, [])
    carol = on_b.login(rid, "carol")
    assert on_b.check(carol, rid).allowed  # B has cached the app's list, for 300 s
    sim.remove_collaborator(ACME_APP, "carol")
    until(lambda: not on_b.check(carol, rid).allowed, 2.0, "carol denied on replica B")


def test_a_failed_subscription_does_not_fail_provisioning_and_a_retry_subscribes(
    partner: Partner,
) -> None:
    sim = partner.sim
    rid = "0badc0de-0000-4000-8000-000000000001"
    sim.add_fault("error", path_prefix=f"/addons/{rid}/webhooks", status=503)
    result = sim.provision(ACME_APP, "basic", resource_id=rid)
    assert result["state"] == "provisioned"  # Heroku sees a provisioned add-on
    assert partner.forwarded[-1].json()["webhook_subscribed"] is False
    assert sim.webhook_state()["subscriptions"] == []
    sim.clear_faults()
    sim.resend_provisioning(rid)  # Heroku's (or an admin's) next delivery subscribes
    assert partner.forwarded[-1].json()["webhook_subscribed"] is True
    assert len(sim.webhook_state()["subscriptions"]) == 1


def test_a_subscription_whose_secret_was_lost_is_taken_over(partner: Partner) -> None:
    """authz subscribed, then lost the secret before keeping it (a crash in between): the next
    registration finds its subscription at Heroku by URL and gives it a new secret."""
    sim = partner.sim
    rid = partner.provision()
    [hook] = sim.webhook_state()["subscriptions"]
    partner.svc.service.state.execute("DELETE FROM heroku_webhooks")
    sim.resend_provisioning(rid)
    assert partner.forwarded[-1].json()["webhook_subscribed"] is True
    assert sim.count("PATCH", f"/addons/{rid}/webhooks/{hook['id']}") == 1
    assert [h["id"] for h in sim.webhook_state()["subscriptions"]] == [hook["id"]]
    carol = partner.login(rid, "carol")
    assert partner.check(carol, rid).allowed
    sim.remove_collaborator(ACME_APP, "carol")  # signed with the new secret
    until(lambda: not partner.check(carol, rid).allowed, 2.0, "carol denied")


def test_a_secret_sealed_under_an_old_key_is_renewed_by_registering_again(
    make_partner: Callable[..., Partner],
) -> None:
    partner = make_partner()
    sim = partner.sim
    rid = partner.provision()
    [hook] = sim.webhook_state()["subscriptions"]
    # As if AUTHZ_TOKEN_KEY had changed: the sealed secret no longer opens.
    partner.svc.service.state.execute("UPDATE heroku_webhooks SET key_id = 'old-key'")
    carol = partner.login(rid, "carol")
    assert partner.check(carol, rid).allowed
    sim.set_collaborator_role(ACME_APP, "bob", "collaborator", ["view"])  # a delivery, refused
    assert not sim.wait_for_deliveries(timeout=0.5)  # sync: Heroku keeps retrying
    partner.admin.RegisterAddon(register_addon_request(sim, rid))  # a new grant, say
    assert sim.count("PATCH", f"/addons/{rid}/webhooks/{hook['id']}") == 1
    assert sim.wait_for_deliveries()  # the retried delivery now verifies
    sim.remove_collaborator(ACME_APP, "carol")
    until(lambda: not partner.check(carol, rid).allowed, 2.0, "carol denied")
