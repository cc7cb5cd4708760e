"""The Heroku simulator itself: shapes, auth, pagination, faults, admin, over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from tests.clock import FakeClock

ACCEPT = "application/vnd.heroku+json; version=3"
SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture(), page_size=2) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def exchange(sim: HerokuSimulator, http: httpx.Client, addon: str) -> dict[str, Any]:
    code = sim.create_grant(sim.addon(addon)["id"])
    reply = http.post(
        f"{sim.base_url}/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "client_secret": sim.client_secret},
    )
    assert reply.status_code == 200, reply.text
    tokens: dict[str, Any] = reply.json()
    return tokens


def api(
    sim: HerokuSimulator, http: httpx.Client, path: str, token: str | None, **extra: str
) -> httpx.Response:
    headers = {"Accept": ACCEPT, **extra}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.get(f"{sim.base_url}{path}", headers=headers)


def get_all(sim: HerokuSimulator, http: httpx.Client, path: str, token: str) -> list[Any]:
    items: list[Any] = []
    extra: dict[str, str] = {}
    for _ in range(20):
        reply = api(sim, http, path, token, **extra)
        assert reply.status_code in (200, 206)
        items.extend(reply.json())
        if reply.status_code == 200:
            assert "Next-Range" not in reply.headers
            return items
        extra = {"Range": reply.headers["Next-Range"]}
    raise AssertionError("pagination never ended")


def test_demo_fixture_tells_the_story(sim: HerokuSimulator) -> None:
    state = sim.state()
    for kind in ("users", "apps", "teams", "addons"):
        for item in state[kind]:
            uuid.UUID(item["id"])  # realistic ids
    apps = {a["name"]: a for a in state["apps"]}
    acme, globex = apps["acme-billing"], apps["globex-api"]
    alice, bob, carol, dave = (sim.user(h)["id"] for h in ("alice", "bob", "carol", "dave"))
    assert acme["owner"]["id"] == alice and acme["team"] is None
    acme_collabs = {c["user"]["id"]: c for c in acme["collaborators"]}
    # A personal app has no Enterprise app permissions; a team app's collaborators do.
    assert acme_collabs[bob]["permissions"] == [] and acme_collabs[carol]["role"] == "collaborator"
    assert acme["region"]["name"] == "us" and apps["initech-legacy"]["region"]["name"] == "eu"
    globex_perms = {
        c["user"]["id"]: {p["name"] for p in c["permissions"]} for c in globex["collaborators"]
    }
    assert globex_perms[sim.user("ivan")["id"]] == {"view"}
    assert globex_perms[sim.user("grace")["id"]] == {"view", "deploy"}
    # The former provisioner and the unrelated user appear in no list at all.
    mallory = sim.user("mallory")["id"]
    for app in state["apps"]:
        ids = {c["user"]["id"] for c in app["collaborators"]} | {app["owner"]["id"]}
        assert dave not in ids and mallory not in ids
    team = state["teams"][0]
    roles = {m["user"]["id"]: m["role"] for m in team["members"]}
    assert roles[sim.user("erin")["id"]] == "admin"
    assert roles[sim.user("frank")["id"]] == "member"
    assert globex["team"] == {"id": team["id"], "name": "globex"}
    assert sim.user("frank")["id"] not in {c["user"]["id"] for c in globex["collaborators"]}


def test_oauth_exchange_refresh_and_refusals(sim: HerokuSimulator, http: httpx.Client) -> None:
    url = f"{sim.base_url}/oauth/token"
    rid = sim.addon("authz-curved-12345")["id"]
    code = sim.create_grant(rid)
    form = {"grant_type": "authorization_code", "code": code, "client_secret": "wrong"}
    refused = http.post(url, data=form)
    assert refused.status_code == 401 and refused.json()["id"] == "unauthorized"
    form["client_secret"] = sim.client_secret
    ok = http.post(url, data=form)
    assert ok.status_code == 200
    tokens = ok.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 28800
    assert set(tokens) >= {"access_token", "refresh_token", "expires_in", "user_id"}
    assert "RateLimit-Remaining" in ok.headers
    again = http.post(url, data=form)  # single use
    assert again.status_code == 401 and again.json()["id"] == "unauthorized"

    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_secret": sim.client_secret,
    }
    refreshed = http.post(url, data=refresh).json()
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["refresh_token"] == tokens["refresh_token"]
    assert api(sim, http, f"/addons/{rid}", refreshed["access_token"]).status_code == 200
    assert http.post(url, data={**refresh, "refresh_token": "nope"}).status_code == 401
    assert http.post(url, data={**refresh, "grant_type": "password"}).status_code == 400

    expired = sim.create_grant(rid, ttl=0)
    assert http.post(url, data={**form, "code": expired}).status_code == 401
    fixture_code = load_fixture()["grants"][0]["code"]
    assert http.post(url, data={**form, "code": fixture_code}).status_code == 200


def test_api_shapes(sim: HerokuSimulator, http: httpx.Client) -> None:
    token = exchange(sim, http, "authz-spherical-67890")["access_token"]
    rid = sim.addon("authz-spherical-67890")["id"]
    addon = api(sim, http, f"/addons/{rid}", token).json()
    assert addon["id"] == rid and addon["state"] == "provisioned"
    assert addon["app"] == {"id": sim.app("globex-api")["id"], "name": "globex-api"}
    assert addon["plan"]["name"] == "authz:pro" and set(addon["plan"]) == {"id", "name"}
    uuid.UUID(addon["plan"]["id"])
    assert addon["addon_service"]["name"] == "authz"

    app = api(sim, http, f"/apps/{addon['app']['id']}", token).json()
    assert app["owner"] == {
        "id": sim.user("globex-owner")["id"],
        "email": "globex@herokumanager.com",
    }
    assert app["team"]["name"] == "globex"
    assert app["region"] == {"id": "59accabd-516d-4f0e-83e6-6e3757701145", "name": "us"}
    assert api(sim, http, "/apps/globex-api", token).json()["id"] == app["id"]  # by name too

    collabs = get_all(sim, http, f"/apps/{app['id']}/collaborators", token)
    erin = next(c for c in collabs if c["user"]["id"] == sim.user("erin")["id"])
    assert set(erin) >= {"id", "role", "permissions", "user", "app", "created_at", "updated_at"}
    assert erin["role"] == "admin" and erin["app"] == {"id": app["id"], "name": "globex-api"}
    assert {"name", "description"} <= set(erin["permissions"][0])
    assert set(erin["user"]) == {"id", "email", "federated"}

    members = get_all(sim, http, f"/teams/{app['team']['id']}/members", token)
    assert len(members) == 3
    frank = next(m for m in members if m["user"]["id"] == sim.user("frank")["id"])
    assert frank["role"] == "member" and frank["email"] == "frank@globex.example"
    assert set(frank) >= {"id", "email", "role", "user", "two_factor_authentication", "federated"}
    assert set(frank["user"]) == {"id", "email", "name"}


def test_api_requires_accept_and_a_token_for_that_app(
    sim: HerokuSimulator, http: httpx.Client
) -> None:
    acme_rid = sim.addon("authz-curved-12345")["id"]
    globex = sim.app("globex-api")
    token = exchange(sim, http, "authz-curved-12345")["access_token"]
    path = f"/addons/{acme_rid}"
    # Platform API Reference, Errors: 406 not_acceptable without the versioned media type.
    no_accept = http.get(f"{sim.base_url}{path}", headers={"Authorization": f"Bearer {token}"})
    assert no_accept.status_code == 406 and no_accept.json()["id"] == "not_acceptable"
    assert set(no_accept.json()) == {"id", "message"}
    assert "RateLimit-Remaining" in no_accept.headers
    for accept in ("application/json", "application/vnd.heroku+json; version=2"):
        assert api(sim, http, path, token, Accept=accept).status_code == 406
    for token_header in (None, "not-a-token"):
        refused = api(sim, http, path, token_header)
        assert refused.status_code == 401 and refused.json()["id"] == "unauthorized"
        assert set(refused.json()) == {"id", "message"}
    assert api(sim, http, path, token).status_code == 200
    # Another app's add-on, app, collaborators, team: forbidden to this token.
    other_rid = sim.addon("authz-spherical-67890")["id"]
    other = api(sim, http, f"/addons/{other_rid}", token)
    assert other.status_code == 403 and other.json()["id"] == "forbidden"
    assert api(sim, http, f"/apps/{globex['id']}", token).status_code == 403
    assert api(sim, http, f"/apps/{globex['id']}/collaborators", token).status_code == 403
    forbidden = api(sim, http, f"/teams/{globex['team']['id']}/members", token)
    assert forbidden.status_code == 403 and forbidden.json()["id"] == "forbidden"
    missing = api(sim, http, f"/addons/{uuid.uuid4()}", token)
    assert missing.status_code == 404 and missing.json()["id"] == "not_found"
    # Expired tokens are refused.
    assert sim.expire_access_tokens() >= 1
    expired = api(sim, http, path, token)
    assert expired.status_code == 401 and expired.json()["id"] == "unauthorized"


def test_pagination_with_range_and_next_range(sim: HerokuSimulator, http: httpx.Client) -> None:
    token = exchange(sim, http, "authz-curved-12345")["access_token"]
    app_id = sim.app("acme-billing")["id"]
    path = f"/apps/{app_id}/collaborators"
    first = api(sim, http, path, token)
    assert first.status_code == 206 and len(first.json()) == 2
    assert first.headers["Next-Range"].startswith("id ]")
    assert first.headers["Content-Range"].startswith("id ")
    second = api(sim, http, path, token, Range=first.headers["Next-Range"])
    assert second.status_code == 200 and len(second.json()) == 1
    ids = [c["id"] for c in first.json() + second.json()]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    # A client may ask for smaller pages; the server caps at its page size.
    pages = 0
    headers = {"Range": "id ..; max=1"}
    while True:
        reply = api(sim, http, path, token, **headers)
        pages += 1
        if reply.status_code == 200:
            break
        headers = {"Range": reply.headers["Next-Range"]}
    assert pages == 3
    assert api(sim, http, path, token, Range="id ..; max=1000").status_code == 206
    garbage = api(sim, http, path, token, Range="garbage")
    assert garbage.status_code == 416
    assert garbage.json()["id"] == "requested_range_not_satisfiable"
    assert api(sim, http, path, token, Range="email ..; max=10").status_code == 416


def test_team_members_page_by_email_only(sim: HerokuSimulator, http: httpx.Client) -> None:
    """schema.json: the team-member List link declares ranges ["email"]; `id` is refused."""
    token = exchange(sim, http, "authz-spherical-67890")["access_token"]
    path = f"/teams/{sim.team('globex')['id']}/members"
    by_id = api(sim, http, path, token, Range="id ..; max=1000")
    assert by_id.status_code == 416 and by_id.json()["id"] == "requested_range_not_satisfiable"
    first = api(sim, http, path, token, Range="email ..; max=1000")
    assert first.status_code == 206 and first.headers["Accept-Ranges"] == "email"
    assert first.headers["Next-Range"] == f"email ]{first.json()[-1]['email']}..; max=2"
    emails = [m["email"] for m in get_all(sim, http, path, token)]
    assert emails == sorted(emails) and len(emails) == 3


def test_ratelimit_is_one_pool_per_account_and_refills(http: httpx.Client) -> None:
    clock = FakeClock()
    with HerokuSimulator(load_fixture(), rate_limit=3600, clock=clock) as sim:
        acme = exchange(sim, http, "authz-curved-12345")["access_token"]
        globex = exchange(sim, http, "authz-spherical-67890")["access_token"]
        acme_path = f"/addons/{sim.addon('authz-curved-12345')['id']}"
        globex_path = f"/addons/{sim.addon('authz-spherical-67890')['id']}"
        sim.reset_rate_limits()
        seen = [
            api(sim, http, acme_path, acme).headers["RateLimit-Remaining"],
            api(sim, http, globex_path, globex).headers["RateLimit-Remaining"],
            api(sim, http, acme_path, acme).headers["RateLimit-Remaining"],
        ]
        assert seen == ["3599", "3598", "3597"]  # both add-ons draw on the partner's one pool
        clock.advance(2)  # 3600 per hour: one token a second, refilled continuously
        assert api(sim, http, acme_path, acme).headers["RateLimit-Remaining"] == "3598"
        # Answers that are refused still say how much is left; unauthenticated ones cost nothing.
        assert api(sim, http, acme_path, None).headers["RateLimit-Remaining"] == "3598"
        assert api(sim, http, "/account/rate-limits", acme).json() == {"remaining": 3598}


def test_ratelimit_remaining_counts_down_then_429(http: httpx.Client) -> None:
    clock = FakeClock()
    with HerokuSimulator(load_fixture(), rate_limit=3, clock=clock) as sim:
        token = exchange(sim, http, "authz-curved-12345")["access_token"]
        path = f"/addons/{sim.addon('authz-curved-12345')['id']}"
        remaining = [api(sim, http, path, token).headers["RateLimit-Remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        limited = api(sim, http, path, token)
        assert limited.status_code == 429 and limited.headers["RateLimit-Remaining"] == "0"
        assert limited.json() == {
            "id": "rate_limit",
            "message": "Your account reached the API rate limit",
        }
        assert int(limited.headers["Retry-After"]) == 1200  # 3 an hour: one every 20 minutes
        clock.advance(1200)
        assert api(sim, http, path, token).status_code == 200
        sim.reset_rate_limits()
        assert api(sim, http, path, token).status_code == 200


def test_faults(sim: HerokuSimulator, http: httpx.Client) -> None:
    token = exchange(sim, http, "authz-curved-12345")["access_token"]
    rid = sim.addon("authz-curved-12345")["id"]
    path = f"/addons/{rid}"
    app_path = f"/apps/{sim.app('acme-billing')['id']}"

    sim.add_fault("error", status=502, path_prefix="/addons/", count=1)
    assert api(sim, http, app_path, token).status_code == 200  # out of scope
    assert api(sim, http, path, token).status_code == 502
    assert api(sim, http, path, token).status_code == 200  # count used up

    sim.add_fault("rate_limit", count=1, retry_after=7)
    limited = api(sim, http, path, token)
    assert limited.status_code == 429
    assert limited.headers["RateLimit-Remaining"] == "0" and limited.headers["Retry-After"] == "7"

    sim.add_fault("malformed", count=1)
    malformed = api(sim, http, path, token)
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()

    sim.add_fault("drop", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        api(sim, http, path, token)
    assert api(sim, http, path, token).status_code == 200

    sim.add_fault("latency", seconds=0.3, count=1)
    started = time.monotonic()
    assert api(sim, http, path, token).status_code == 200
    assert time.monotonic() - started >= 0.3

    fault_id = sim.add_fault("error")  # until cleared
    assert sim.faults()[0]["id"] == fault_id
    assert api(sim, http, path, token).status_code == 503
    assert api(sim, http, path, token).status_code == 503
    assert sim.clear_faults() == 1
    assert api(sim, http, path, token).status_code == 200
    with pytest.raises(ValueError):
        sim.add_fault("explode")


def test_counters(sim: HerokuSimulator, http: httpx.Client) -> None:
    token = exchange(sim, http, "authz-curved-12345")["access_token"]
    rid = sim.addon("authz-curved-12345")["id"]
    api(sim, http, f"/addons/{rid}", token)
    api(sim, http, f"/addons/{rid}", token)
    http.get(f"{sim.base_url}/__sim/state")  # admin calls are not counted
    counters = sim.counters()
    assert counters["requests"] == {"POST /oauth/token": 1, f"GET /addons/{rid}": 2}
    assert counters["total"] == 3
    assert sim.count("GET") == 2 and sim.count(path_prefix="/oauth") == 1
    sim.reset_counters()
    assert sim.counters() == {"total": 0, "requests": {}}


def test_admin_http_endpoints(sim: HerokuSimulator, http: httpx.Client) -> None:
    admin = f"{sim.base_url}/__sim"
    token = exchange(sim, http, "authz-curved-12345")["access_token"]
    app_id = sim.app("acme-billing")["id"]
    mallory = sim.user("mallory")["id"]

    def collaborators() -> dict[str, Any]:
        items = get_all(sim, http, f"/apps/{app_id}/collaborators", token)
        return {c["user"]["id"]: c for c in items}

    added = http.post(
        f"{admin}/apps/acme-billing/collaborators",
        json={"user": mallory, "role": "collaborator", "permissions": ["view"]},
    )
    assert added.status_code == 201
    assert collaborators()[mallory]["role"] == "collaborator"
    changed = http.patch(
        f"{admin}/apps/acme-billing/collaborators/{mallory}", json={"role": "admin"}
    )
    assert changed.status_code == 200 and collaborators()[mallory]["role"] == "admin"
    assert http.delete(f"{admin}/apps/acme-billing/collaborators/{mallory}").status_code == 200
    assert mallory not in collaborators()
    assert http.delete(f"{admin}/apps/acme-billing/collaborators/{mallory}").status_code == 404

    assert http.post(f"{admin}/teams/globex/members", json={"user": "mallory"}).status_code == 201
    patched = http.patch(f"{admin}/teams/globex/members/mallory", json={"role": "admin"})
    assert patched.json()["role"] == "admin"
    assert http.delete(f"{admin}/teams/globex/members/mallory").status_code == 200
    assert http.patch(f"{admin}/users/mallory", json={"email": "m@new.example"}).status_code == 200
    assert sim.user("mallory")["email"] == "m@new.example"

    grant = http.post(f"{admin}/grants", json={"resource_id": "authz-curved-12345"}).json()
    form = {"grant_type": "authorization_code", "client_secret": sim.client_secret}
    assert http.post(f"{sim.base_url}/oauth/token", data={**form, "code": grant["code"]}).is_success

    fault = http.post(f"{admin}/faults", json={"kind": "error", "status": 500, "count": 1}).json()
    assert http.get(f"{admin}/faults").json()[0]["id"] == fault["id"]
    assert api(sim, http, f"/apps/{app_id}", token).status_code == 500
    assert http.post(f"{admin}/faults", json={"kind": "drop"}).status_code == 201
    assert http.delete(f"{admin}/faults").json() == {"cleared": 1}

    counters = http.get(f"{admin}/counters").json()
    assert counters["total"] >= 1
    assert http.delete(f"{admin}/counters").json()["total"] == 0

    assert http.post(f"{admin}/tokens/expire", json={}).json()["expired"] >= 1
    assert api(sim, http, f"/apps/{app_id}", token).status_code == 401

    assert http.get(f"{admin}/nothing").status_code == 404
    assert http.post(f"{admin}/faults", json={"kind": "explode"}).status_code == 400
    bad_role = http.post(f"{admin}/teams/globex/members", json={"user": "bob", "role": "Boss!"})
    assert bad_role.status_code == 400 and "lowercase word" in bad_role.json()["message"]
    missing = http.post(f"{admin}/teams/globex/members", json={})
    assert missing.status_code == 400 and "user" in missing.json()["message"]


def test_stop_is_quick_even_with_a_sleeping_request() -> None:
    sim = HerokuSimulator(load_fixture())
    url = sim.start()
    sim.add_fault("latency", seconds=30)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            httpx.post(f"{url}/oauth/token", data={}, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    sim.stop()
    thread.join(5)
    assert time.monotonic() - started < 2
    assert not thread.is_alive() and errors


def test_serve_forever_runs_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = (
        "from authz.devtools.heroku_sim import serve_forever; serve_forever('127.0.0.1', 0, None)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Heroku simulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1].strip()
        state = httpx.get(f"{url}/__sim/state", timeout=5).json()
        assert {a["name"] for a in state["apps"]} == {
            "acme-billing",
            "globex-api",
            "initech-legacy",
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
