"""The simulator's half of Heroku <-> partner traffic, over real sockets: add-on webhooks (signed,
retried, ordered deliveries), Heroku's v3 provisioning / plan change / deprovision calls to a
partner, and the dashboard's "open add-on" SSO page."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from authz.devtools.heroku_sim import PARTNER_INCLUDES, HerokuSimulator, load_fixture
from authz.facts.sso import resource_token, user_scoped_resource_token

ACCEPT = "application/vnd.heroku+json; version=3"
ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A partner endpoint on loopback that records requests; `answer` decides each reply."""

    answer: Callable[[Received], tuple[int, Any]] = lambda r: (204, None)
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(
                    self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
                )
                receiver.requests.append(got)
                status, doc = receiver.answer(got)
                body = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
                receiver.ready.set()

            do_POST = do_PUT = do_DELETE = do_GET = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(
        load_fixture(), webhook_retry_base=0.05, webhook_retry_cap=0.2, webhook_timeout=2
    ) as s:
        yield s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def token_for(sim: HerokuSimulator, http: httpx.Client, addon: str) -> str:
    code = sim.create_grant(sim.addon(addon)["id"])
    form = {"grant_type": "authorization_code", "code": code, "client_secret": sim.client_secret}
    reply = http.post(f"{sim.base_url}/oauth/token", data=form)
    assert reply.status_code == 200
    return str(reply.json()["access_token"])


def call(
    sim: HerokuSimulator, http: httpx.Client, method: str, path: str, token: str, **kw: Any
) -> httpx.Response:
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}"}
    return http.request(method, f"{sim.base_url}{path}", headers=headers, **kw)


def subscribe(
    sim: HerokuSimulator, http: httpx.Client, addon: str, url: str, **fields: Any
) -> tuple[str, str, dict[str, Any]]:
    """Returns (token, webhook id, creation reply)."""
    token = token_for(sim, http, addon)
    rid = sim.addon(addon)["id"]
    body = {"include": ["api:collaborator", "api:app", "api:addon"], "level": "sync", "url": url}
    reply = call(sim, http, "POST", f"/addons/{rid}/webhooks", token, json={**body, **fields})
    assert reply.status_code == 201, reply.text
    return token, reply.json()["id"], {"headers": dict(reply.headers), "json": reply.json()}


def signed(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- webhooks -------------------------------------------------------------------------------


def test_webhook_subscription_crud_and_shapes(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    url = receiver.start() + "/webhooks"
    token, hook_id, created = subscribe(sim, http, ACME, url, secret="s3cret")
    rid = sim.addon(ACME)["id"]
    doc = created["json"]
    assert set(doc) == {"addon", "created_at", "id", "include", "level", "updated_at", "url"}
    assert doc["addon"] == {"id": rid, "name": ACME} and doc["level"] == "sync"
    assert "Heroku-Webhook-Secret" not in created["headers"]  # the partner chose its secret
    listed = call(sim, http, "GET", f"/addons/{rid}/webhooks", token).json()
    assert [w["id"] for w in listed] == [hook_id]
    assert call(sim, http, "GET", f"/addons/{rid}/webhooks/{hook_id}", token).json() == doc
    patched = call(
        sim, http, "PATCH", f"/addons/{rid}/webhooks/{hook_id}", token, json={"level": "notify"}
    )
    assert patched.status_code == 200 and patched.json()["level"] == "notify"
    deleted = call(sim, http, "DELETE", f"/addons/{rid}/webhooks/{hook_id}", token)
    assert deleted.status_code == 200 and deleted.json()["id"] == hook_id
    assert call(sim, http, "GET", f"/addons/{rid}/webhooks", token).json() == []
    gone = call(sim, http, "GET", f"/addons/{rid}/webhooks/{hook_id}", token)
    assert gone.status_code == 404 and gone.json()["id"] == "not_found"

    # Without a secret Heroku generates one and shows it once, in a header.
    _, _, generated = subscribe(sim, http, ACME, url)
    assert re.fullmatch(r"[0-9a-f]{60}", generated["headers"]["heroku-webhook-secret"])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"include": ["api:team-member"], "level": "sync", "url": "http://x"}, "api:collaborator"),
        ({"include": ["api:app"], "level": "eventually", "url": "http://x"}, "notify or sync"),
        ({"include": ["api:app"], "level": "sync"}, "url"),
        ({"include": ["api:app"], "level": "sync", "url": "ftp://x"}, "http(s)"),
        ({"include": ["api:app"], "level": "sync", "url": "http://x", "app": "y"}, "app"),
    ],
)
def test_webhook_subscription_refusals(
    sim: HerokuSimulator, http: httpx.Client, body: dict[str, Any], says: str
) -> None:
    token = token_for(sim, http, ACME)
    reply = call(sim, http, "POST", f"/addons/{sim.addon(ACME)['id']}/webhooks", token, json=body)
    assert reply.status_code == 422 and reply.json()["id"] == "invalid_params"
    assert says in reply.json()["message"]


def test_webhooks_of_another_add_on_are_forbidden(sim: HerokuSimulator, http: httpx.Client) -> None:
    token = token_for(sim, http, ACME)
    other = sim.addon(GLOBEX)["id"]
    body = {"include": ["api:app"], "level": "sync", "url": "http://127.0.0.1:9/"}
    reply = call(sim, http, "POST", f"/addons/{other}/webhooks", token, json=body)
    assert reply.status_code == 403 and reply.json()["id"] == "forbidden"
    assert call(sim, http, "GET", f"/addons/{other}/webhooks", token).status_code == 403


def test_partners_are_offered_collaborator_events_but_no_team_events() -> None:
    assert "api:collaborator" in PARTNER_INCLUDES and "api:app" in PARTNER_INCLUDES
    assert not any("team" in include for include in PARTNER_INCLUDES)


def test_collaborator_change_is_delivered_signed(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    url = receiver.start() + "/heroku/webhooks"
    subscribe(sim, http, ACME, url, secret="s3cret", authorization="Bearer shared")
    subscribe(sim, http, GLOBEX, url, secret="other")  # another app: hears nothing of acme
    sim.remove_collaborator("acme-billing", "carol")
    assert sim.wait_for_deliveries()
    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert got.method == "POST" and got.path == "/heroku/webhooks"
    assert got.headers["Heroku-Webhook-Hmac-SHA256"] == signed("s3cret", got.body)
    assert got.headers["Authorization"] == "Bearer shared"
    event = got.json()
    assert event["action"] == "destroy" and event["resource"] == "collaborator"
    assert event["data"]["user"]["id"] == sim.user("carol")["id"]
    assert event["data"]["app"] == {"id": sim.app("acme-billing")["id"], "name": "acme-billing"}
    meta = event["webhook_metadata"]
    assert meta["event"] == {"id": event["id"], "include": "api:collaborator"}
    assert got.headers["Heroku-Webhook-Id"] == meta["delivery"]["id"]
    assert event["version"] == ACCEPT

    # The delivery and the event are on the Platform API too.
    token = token_for(sim, http, ACME)
    rid = sim.addon(ACME)["id"]
    deliveries = call(sim, http, "GET", f"/addons/{rid}/webhook-deliveries", token).json()
    assert [d["status"] for d in deliveries] == ["succeeded"]
    assert deliveries[0]["last_attempt"]["code"] == 204
    one = call(sim, http, "GET", f"/addons/{rid}/webhook-events/{event['id']}", token).json()
    assert one["include"] == "api:collaborator" and one["payload"]["action"] == "destroy"


def test_app_rename_transfer_and_role_change_are_announced(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    url = receiver.start()
    subscribe(sim, http, ACME, url, secret="k")
    sim.set_collaborator_role("acme-billing", "bob", "admin")
    sim.update_app("acme-billing", name="acme-invoices")
    sim.update_app("acme-invoices", owner="bob")
    assert sim.wait_for_deliveries()
    events = [r.json() for r in receiver.requests]
    assert [(e["resource"], e["action"]) for e in events] == [
        ("collaborator", "update"),
        ("app", "update"),
        ("app", "update"),
    ]
    assert events[0]["previous_data"] == {"role": "collaborator"}
    assert events[1]["data"]["name"] == "acme-invoices"
    assert events[1]["previous_data"] == {"name": "acme-billing"}
    assert events[2]["data"]["owner"]["id"] == sim.user("bob")["id"]
    assert events[2]["previous_data"]["owner"]["id"] == sim.user("alice")["id"]


def test_sync_deliveries_retry_in_order_and_notify_tries_once(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    failures = {"left": 2}

    def flaky(r: Received) -> tuple[int, Any]:
        if failures["left"] > 0:
            failures["left"] -= 1
            return 503, None
        return 200, None

    receiver.answer = flaky
    url = receiver.start()
    subscribe(sim, http, ACME, url, secret="k")
    sim.remove_collaborator("acme-billing", "carol")
    sim.remove_collaborator("acme-billing", "bob")
    assert sim.wait_for_deliveries()
    users = [r.json()["data"]["user"]["id"] for r in receiver.requests]
    carol, bob = sim.user("carol")["id"], sim.user("bob")["id"]
    # Two failed attempts for carol's event, then carol, then bob: never bob before carol.
    assert users == [carol, carol, carol, bob]
    attempts = [r.json()["webhook_metadata"]["attempt"]["id"] for r in receiver.requests[:3]]
    assert len(set(attempts)) == 3  # each attempt is new; the event id stays
    assert len({r.json()["id"] for r in receiver.requests[:3]}) == 1
    state = sim.webhook_state()["deliveries"]
    assert sorted(d["num_attempts"] for d in state) == [1, 3]

    receiver.requests.clear()
    receiver.answer = lambda r: (500, None)
    sim.clear_faults()
    for hook in sim.webhook_state()["subscriptions"]:
        token = token_for(sim, http, ACME)
        call(
            sim,
            http,
            "PATCH",
            f"/addons/{hook['addon']['id']}/webhooks/{hook['id']}",
            token,
            json={"level": "notify"},
        )
    sim.add_collaborator("acme-billing", "mallory")
    assert sim.wait_for_deliveries()
    assert len(receiver.requests) == 1  # notify: fire and forget
    last = sim.webhook_state()["deliveries"][-1]
    assert last["status"] == "failed" and last["num_attempts"] == 1


# -- Heroku calling the partner -------------------------------------------------------------


def partner_that_discovers_its_app(
    sim: HerokuSimulator, seen: dict[str, Any]
) -> Callable[[Received], tuple[int, Any]]:
    """What a real partner does with a provisioning call: exchange the grant, ask for the app."""

    def answer(r: Received) -> tuple[int, Any]:
        if r.method != "POST":
            return 204, None
        body = r.json()
        with httpx.Client(timeout=5) as client:
            form = {
                "grant_type": "authorization_code",
                "code": body["oauth_grant"]["code"],
                "client_secret": sim.client_secret,
            }
            tokens = client.post(f"{sim.base_url}/oauth/token", data=form)
            if tokens.status_code != 200:  # a redelivery: the grant was used the first time
                seen.setdefault("refused_grants", 0)
                seen["refused_grants"] += 1
                return 200, {"id": body["uuid"]}
            headers = {
                "Accept": ACCEPT,
                "Authorization": f"Bearer {tokens.json()['access_token']}",
            }
            seen["addon"] = client.get(f"{sim.base_url}/addons/{body['uuid']}", headers=headers)
        return 200, {"id": body["uuid"], "message": "provisioned"}

    return answer


def test_provisioning_call_is_heroku_v3_verbatim(sim: HerokuSimulator, receiver: Receiver) -> None:
    seen: dict[str, Any] = {}
    receiver.answer = partner_that_discovers_its_app(sim, seen)
    base = receiver.start() + "/heroku/resources"
    sim.set_manifest(base_url=base)
    result = sim.provision("globex-api", "pro", options={"color": "blue"})
    assert result["state"] == "provisioned" and result["response"]["status"] == 200
    request = receiver.requests[0]
    assert request.method == "POST" and request.path == "/heroku/resources"
    expected_auth = base64.b64encode(b"authz:sim-manifest-password-for-local-development-only")
    assert request.headers["Authorization"] == "Basic " + expected_auth.decode()
    assert request.headers["Accept"] == "application/vnd.heroku-addons+json; version=3"
    body = request.json()
    rid = result["resource_id"]
    assert set(body) == {
        "callback_url",
        "name",
        "oauth_grant",
        "options",
        "plan",
        "region",
        "uuid",
        "log_input_url",
        "log_drain_token",
    }  # no app id: the partner learns the app from GET /addons/{uuid}
    assert body["uuid"] == rid and body["plan"] == "pro" and body["options"] == {"color": "blue"}
    assert body["region"] == "amazon-web-services::us-east-1"
    assert body["callback_url"] == f"{sim.base_url}/addons/{rid}"
    assert body["oauth_grant"]["type"] == "authorization_code"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["oauth_grant"]["expires_at"])
    # The partner exchanged the grant during the call and found the app.
    addon = seen["addon"].json()
    assert addon["app"] == {"id": sim.app("globex-api")["id"], "name": "globex-api"}
    assert addon["plan"]["name"] == "authz:pro"
    assert sim.provisioning_request(rid) == body

    # At-least-once: Heroku may send the very same body again.
    again = sim.resend_provisioning(rid)
    assert receiver.requests[-1].json() == body and again["state"] == "provisioned"
    assert seen["refused_grants"] == 1


def test_eu_app_is_provisioned_in_eu_west(sim: HerokuSimulator, receiver: Receiver) -> None:
    receiver.answer = lambda r: (202, {"message": "provisioning"})  # asynchronous provisioning
    result = sim.provision("initech-legacy", "basic", base_url=receiver.start())
    assert receiver.requests[0].json()["region"] == "amazon-web-services::eu-west-1"
    assert result["state"] == "provisioning"


def test_refused_provisioning_leaves_no_add_on(sim: HerokuSimulator, receiver: Receiver) -> None:
    receiver.answer = lambda r: (422, {"message": "no"})
    result = sim.provision("acme-billing", "basic", base_url=receiver.start())
    assert result["state"] == "failed"
    with pytest.raises(LookupError):
        sim.addon(result["resource_id"])


def test_plan_change_and_deprovision_calls(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    base = receiver.start() + "/heroku/resources"
    sim.set_manifest(base_url=base)
    rid = sim.addon(ACME)["id"]
    hooks = Receiver()
    try:
        subscribe(sim, http, ACME, hooks.start(), secret="k")
        token = token_for(sim, http, ACME)

        receiver.answer = lambda r: (422, {"message": "that plan is not for you"})
        refused = sim.change_plan(ACME, "pro")
        assert refused["plan"] == "authz:basic" and refused["response"]["status"] == 422

        receiver.answer = lambda r: (200, {"message": "ok"})
        changed = sim.change_plan(ACME, "pro")
        put = receiver.requests[-1]
        assert (put.method, put.path, put.json()) == (
            "PUT",
            f"/heroku/resources/{rid}",
            {"plan": "pro"},
        )
        assert changed["plan"] == "authz:pro"

        receiver.answer = lambda r: (204, None)
        gone = sim.deprovision(ACME)
        delete = receiver.requests[-1]
        assert (delete.method, delete.path) == ("DELETE", f"/heroku/resources/{rid}")
        assert gone["state"] == "deprovisioned"
        assert sim.wait_for_deliveries()
        events = [(r.json()["resource"], r.json()["action"]) for r in hooks.requests]
        assert events == [("addon", "update"), ("addon", "destroy")]
        assert hooks.requests[0].json()["previous_data"]["plan"]["name"] == "authz:basic"
        # Deprovisioning revokes the add-on's tokens and deletes its subscriptions.
        refused_token = call(sim, http, "GET", f"/addons/{rid}", token)
        assert refused_token.status_code == 401
        assert sim.webhook_state()["subscriptions"] == []
    finally:
        hooks.stop()


def test_admin_http_api_for_partner_calls(
    sim: HerokuSimulator, http: httpx.Client, receiver: Receiver
) -> None:
    admin = f"{sim.base_url}/__sim"
    receiver.answer = lambda r: (200, {"id": "x"})
    base = receiver.start()
    assert http.patch(f"{admin}/manifest", json={"base_url": base}).json()["base_url"] == base
    made = http.post(f"{admin}/provision", json={"app": "acme-billing", "plan": "basic"})
    assert made.status_code == 201 and made.json()["state"] == "provisioned"
    rid = made.json()["resource_id"]
    assert (
        http.put(f"{admin}/addons/{rid}/plan", json={"plan": "pro"}).json()["plan"] == "authz:pro"
    )
    assert http.post(f"{admin}/addons/{rid}/resend-provisioning").status_code == 200
    assert http.request("DELETE", f"{admin}/addons/{rid}").json()["state"] == "deprovisioned"
    bad_plan = http.put(f"{admin}/addons/{ACME}/plan", json={"plan": "other-service:big"})
    assert bad_plan.status_code == 400 and "authz:<plan>" in bad_plan.json()["message"]
    renamed = http.patch(f"{admin}/apps/acme-billing", json={"name": "acme-two"})
    assert renamed.json()["name"] == "acme-two"
    assert http.patch(f"{admin}/apps/acme-two", json={"name": "Bad Name"}).status_code == 400


# -- the "open add-on" button -----------------------------------------------------------------


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.onload = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a["action"]
            assert a["method"] == "post"
        elif tag == "input":
            self.fields[a["name"]] = a["value"]
        elif tag == "body":
            self.onload = a.get("onload", "")


def test_open_add_on_page_posts_a_freshly_signed_form(
    sim: HerokuSimulator, http: httpx.Client
) -> None:
    sim.set_manifest(sso_url="https://partner.example/heroku/sso?x=1&y=<2>")
    page = http.get(f"{sim.base_url}/__sim/sso/{ACME}/carol")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    form = _Form()
    form.feed(page.text)
    assert form.action == "https://partner.example/heroku/sso?x=1&y=<2>"  # escaped, then parsed
    assert "submit()" in form.onload
    f = form.fields
    carol, rid = sim.user("carol"), sim.addon(ACME)["id"]
    assert (f["resource_id"], f["user_id"], f["email"]) == (rid, carol["id"], carol["email"])
    assert f["app"] == f["context_app"] == "acme-billing"
    salt = sim.sso_salt
    assert f["user_scoped_resource_token"] == user_scoped_resource_token(
        rid, salt, f["timestamp"], carol["id"], carol["email"]
    )
    assert f["resource_token"] == resource_token(rid, salt, f["timestamp"])
    nav = json.loads(base64.urlsafe_b64decode(f["nav-data"] + "=" * (-len(f["nav-data"]) % 4)))
    assert nav["appname"] == "acme-billing" and nav["addons"][0]["current"] is True
    # The JSON twin, and a per-call sso_url.
    assert http.get(f"{sim.base_url}/__sim/sso/{ACME}/carol/form").json()["resource_id"] == rid
    other = http.get(f"{sim.base_url}/__sim/sso/{ACME}/carol", params={"sso_url": "http://a/b"})
    assert 'action="http://a/b"' in other.text


def test_open_add_on_page_needs_an_sso_url(sim: HerokuSimulator, http: httpx.Client) -> None:
    reply = http.get(f"{sim.base_url}/__sim/sso/{ACME}/carol")
    assert reply.status_code == 400 and "sso_url" in reply.json()["message"]
