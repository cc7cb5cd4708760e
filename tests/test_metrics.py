"""Issue 16, day two: Prometheus metrics on the HTTP listener (GET /metrics).

Real servers on ephemeral loopback ports wired to the Heroku simulator; real gRPC calls and
HTTP requests, then GET /metrics parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz.config import CallerToken, ConfigError, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.sso_forms import heroku_sso_form
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.clock import FakeClock
from tests.conftest import SHIPPED_POLICIES, RunningService, with_bearer, write_policy_dir
from tests.heroku_world import SALT, World, world_settings

ACME = "authz-curved-12345"
NEW_SALT = "new-sso-salt-0123456789abcdef"
CHECK = "/authz.v1.AuthorizationService/Check"
EXCHANGE = "/authz.v1.SessionService/ExchangeSso"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(svc: RunningService, token: str = "") -> Samples:
    """Every sample GET /metrics serves, by (name, labels)."""
    response = get(svc, "/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def get(svc: RunningService, path: str, token: str = "") -> httpx.Response:
    assert svc.service.http is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{svc.service.http.url}{path}", headers=headers, timeout=10)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check(svc: RunningService, action: str, principal: str = "svc-1") -> pb.CheckResponse:
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    return stub.Check(
        pb.CheckRequest(
            principal=pb.Principal(type="service", id=principal),
            action=action,
            resource=pb.Resource(type="account", id="1"),
        )
    )


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


@pytest.fixture
def world(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> World:
    # Mid-rotation: the new salt is first, the old one (the simulator's forms) second.
    settings = world_settings(
        base_settings, sim, sso_salts=(NEW_SALT, SALT), http_listen="127.0.0.1:0"
    )
    return World(sim, start(settings))


def test_metrics_count_what_the_service_did(world: World) -> None:
    acme = world.provision(ACME)  # exchanges the OAuth grant with Heroku
    alice = world.user("alice")
    # Two forms of different seconds: the replay guard takes one per add-on, user and second.
    now = int(time.time())
    old_salt_form = world.form(acme, "alice", timestamp=now)  # the old salt: position 2
    old_salt_session = world.exchange(old_salt_form).session_token
    new_salt_form = heroku_sso_form(acme, alice["id"], alice["email"], NEW_SALT, timestamp=now - 1)
    world.exchange(new_salt_form)  # position 1
    assert world.refusal(new_salt_form)[1] == "SSO_REPLAYED"
    forged = heroku_sso_form(acme, alice["id"], alice["email"], "not-a-configured-salt-123")
    assert world.refusal(forged)[1] == "SSO_BAD_TOKEN"
    for _ in range(3):
        assert world.check(old_salt_session, "dashboard.view", acme).allowed
    assert not check(world.svc, "made.up.action").allowed  # not catalogued: ACTION_UNKNOWN
    assert get(world.svc, "/healthz").status_code == 200
    assert get(world.svc, "/no/such/page").status_code == 404

    samples = scrape(world.svc)

    # Decisions by effect, action (catalogued, else "other") and caller: 2 logins, 2 refused
    # exchanges, 3 checks and the uncatalogued one.
    decisions = "authz_decisions_total"
    assert (
        value(samples, decisions, effect="ALLOW", action="session.login", caller="anonymous") == 2
    )
    assert value(samples, decisions, effect="DENY", action="session.login", caller="anonymous") == 2
    assert (
        value(samples, decisions, effect="ALLOW", action="dashboard.view", caller="anonymous") == 3
    )
    assert value(samples, decisions, effect="DENY", action="other", caller="anonymous") == 1
    assert not any("made.up" in str(labels) for _, labels in samples)

    # Latency and status per gRPC method and HTTP route.
    duration = "authz_rpc_duration_seconds_count"
    assert value(samples, duration, protocol="grpc", method=CHECK) == 4
    assert value(samples, duration, protocol="grpc", method=EXCHANGE) == 4
    assert value(samples, "authz_rpcs_total", protocol="grpc", method=CHECK, code="OK") == 4
    refused = value(
        samples, "authz_rpcs_total", protocol="grpc", method=EXCHANGE, code="PERMISSION_DENIED"
    )
    assert refused == 2
    assert value(samples, duration, protocol="http", method="/healthz") == 1
    assert value(samples, "authz_rpcs_total", protocol="http", method="unmatched", code="404") == 1
    slowest = value(samples, "authz_rpc_duration_seconds_sum", protocol="grpc", method=CHECK)
    assert 0 < slowest < 60

    # SSO: refusals by reason; logins by the salt that verified them (never the salt itself).
    assert value(samples, "authz_sso_refusals_total", reason="SSO_REPLAYED") == 1
    assert value(samples, "authz_sso_refusals_total", reason="SSO_BAD_TOKEN") == 1
    logins = "authz_sso_logins_total"
    assert value(samples, logins, salt="1", token_kind="sha256") == 1
    assert value(samples, logins, salt="2", token_kind="sha256") == 1
    page = get(world.svc, "/metrics").text
    assert SALT not in page and NEW_SALT not in page

    # The access cache: the first login fetched the app's list, the rest were served from it.
    assert value(samples, "authz_access_cache_lookups_total", result="miss") == 1
    assert value(samples, "authz_access_cache_lookups_total", result="hit") == 4
    assert value(samples, "authz_access_cache_entries") == 1
    assert value(samples, "authz_access_cache_ttl_seconds") == 60

    # Heroku: the grant exchange and the access-list recipe, by status; the budget left.
    calls = value(samples, "authz_heroku_api_calls_total", status="200")
    assert calls >= 4  # /oauth/token, /addons, /apps, /apps/collaborators
    remaining = value(samples, "authz_heroku_ratelimit_remaining")
    assert 0 < remaining <= 4500

    # The audit log: every decision written, the queue empty, each request's wait measured.
    assert value(samples, "authz_audit_records_written_total") == 8
    assert value(samples, "authz_audit_queue_depth") == 0
    assert value(samples, "authz_audit_commits_total") >= 1
    assert value(samples, "authz_audit_record_duration_seconds_count") == 8

    # The policy set being served.
    revision = world.svc.service.policies.current.revision
    assert value(samples, "authz_policy_info", revision=revision) == 1
    assert value(samples, "authz_policy_rules") == world.svc.service.policies.current.rule_count
    assert value(samples, "authz_policy_last_refused_timestamp_seconds") == 0


TOKENS = {"web": "tok-web-0123456789abcdef", "billing": "tok-billing-0123456789abcdef"}


def caller_settings(base: Settings, **overrides: object) -> Settings:
    tokens = tuple(CallerToken.of(name, token) for name, token in TOKENS.items())
    return replace(base, caller_tokens=tokens, http_listen="127.0.0.1:0", **overrides)


def test_metrics_are_for_callers_by_default_and_name_them(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(caller_settings(base_settings))
    missing = get(svc, "/metrics")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert get(svc, "/metrics", "not-a-token").status_code == 401
    with with_bearer(grpc.insecure_channel(svc.address), TOKENS["billing"]) as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)
        stub.Check(
            pb.CheckRequest(
                principal=pb.Principal(type="service", id="x"),
                action="billing.update",
                resource=pb.Resource(type="account", id="1"),
            )
        )
    samples = scrape(svc, TOKENS["web"])
    labels = {"effect": "DENY", "action": "billing.update", "caller": "billing"}
    assert value(samples, "authz_decisions_total", **labels) == 1
    # Refused calls are timed and counted too, by status.
    refused = value(samples, "authz_rpcs_total", protocol="http", method="/metrics", code="401")
    assert refused == 2


def test_metrics_open_serves_anyone_who_reaches_the_listener(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(caller_settings(base_settings, metrics_open=True))
    assert get(svc, "/metrics").status_code == 200
    # Only /metrics is opened: other routes for callers still want a token.
    assert value(scrape(svc), "authz_policy_rules") > 0


def test_openmetrics_is_served_when_the_scraper_asks_for_it(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(replace(base_settings, http_listen="127.0.0.1:0"))
    assert svc.service.http is not None
    response = httpx.get(
        f"{svc.service.http.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_refused_policy_changes_show_while_the_old_revision_serves(
    start: Callable[..., RunningService], base_settings: Settings, tmp_path: Path
) -> None:
    policies = write_policy_dir(
        tmp_path / "policies",
        {p.name: p.read_text() for p in SHIPPED_POLICIES.glob("*.yaml")},
    )
    svc = start(replace(base_settings, policy_dir=policies, http_listen="127.0.0.1:0"))
    before = svc.service.policies.current.revision
    (policies / "broken.yaml").write_text("name: broken\nrules:\n  - id: [unclosed\n")
    started = time.time()
    assert not svc.service.policies.reload().reloaded
    samples = scrape(svc)
    assert value(samples, "authz_policy_info", revision=before) == 1
    refused_at = value(samples, "authz_policy_last_refused_timestamp_seconds")
    assert refused_at >= started
    assert refused_at > value(samples, "authz_policy_loaded_timestamp_seconds")
    (policies / "broken.yaml").unlink()
    (policies / "extra.yaml").write_text(
        "name: extra\nrules:\n  - id: extra-deny\n    effect: deny\n"
        "    actions: [billing.update]\n    reason: Nobody updates billing here\n"
    )
    assert svc.service.policies.reload().reloaded
    samples = scrape(svc)
    after = svc.service.policies.current.revision
    assert after != before
    assert value(samples, "authz_policy_info", revision=after) == 1
    assert value(samples, "authz_policy_info", revision=before) == 0
    assert value(samples, "authz_policy_loaded_timestamp_seconds") > refused_at


def test_each_service_counts_its_own(
    start: Callable[..., RunningService], base_settings: Settings, tmp_path: Path
) -> None:
    first = start(replace(base_settings, http_listen="127.0.0.1:0"))
    second = start(replace(base_settings, http_listen="127.0.0.1:0", data_dir=tmp_path / "second"))
    check(first, "billing.update")
    check(first, "billing.update")
    check(second, "billing.update")
    labels = {"effect": "DENY", "action": "billing.update", "caller": "anonymous"}
    assert value(scrape(first), "authz_decisions_total", **labels) == 2
    assert value(scrape(second), "authz_decisions_total", **labels) == 1


def test_refreshes_and_heroku_failures_are_counted(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    clock = FakeClock(time.time())
    settings = world_settings(base_settings, sim, http_listen="127.0.0.1:0")
    world = World(sim, start(settings, clock=clock))
    acme = world.provision(ACME)
    session = world.login(acme, "alice")  # fetches the app's access list (60 s TTL)
    sim.add_fault("rate_limit", path_prefix="/addons/", retry_after=30)
    clock.advance(50)  # past the refresh-ahead point (80 % of the TTL)
    assert world.check(session, "dashboard.view", acme).allowed  # served from the cache...
    deadline = time.monotonic() + 10
    while value(samples := scrape(world.svc), "authz_access_cache_fetch_failures_total") < 1:
        assert time.monotonic() < deadline, "the refresh never failed"
        time.sleep(0.05)
    # ...which started one refresh in the background, refused by Heroku (429).
    assert value(samples, "authz_access_cache_refreshes_total") == 1
    assert value(samples, "authz_heroku_api_calls_total", status="429") == 1
    assert value(samples, "authz_heroku_ratelimit_remaining") == 0
    assert value(samples, "authz_access_cache_ttl_seconds") == 300  # the budget is spent
    clock.advance(300)  # the entry expires: the next login waits for Heroku, which refuses
    denied = world.refusal(world.form(acme, "alice", timestamp=int(clock())))
    assert denied[1] == "LOGIN_DENIED"
    samples = scrape(world.svc)
    assert value(samples, "authz_sso_refusals_total", reason="LOGIN_DENIED") == 1
    assert value(samples, "authz_access_cache_lookups_total", result="miss") == 2


def test_metrics_open_takes_exact_values() -> None:
    assert Settings.from_env({"AUTHZ_METRICS_OPEN": "1"}).metrics_open
    assert not Settings.from_env({}).metrics_open
    for value_ in ("true", "yes", "on", " 1"):
        with pytest.raises(ConfigError, match="AUTHZ_METRICS_OPEN"):
            Settings.from_env({"AUTHZ_METRICS_OPEN": value_})
