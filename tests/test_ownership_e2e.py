"""Issue 4 end to end: the add-on is for the owning app's current members, as Heroku says now."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.sso_forms import heroku_sso_form
from authz.v1 import admin_pb2
from authz.v1 import authorization_pb2 as pb
from tests.conftest import RunningService
from tests.heroku_world import SALT, World, world_settings

ACME = "authz-curved-12345"  # personal app: alice owner, bob + carol collaborators, dave gone
GLOBEX = "authz-spherical-67890"  # team app: erin admin, grace member+collaborator, frank member,
# ivan an outside collaborator with only the `view` app permission


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


@pytest.fixture
def make_world(
    sim: HerokuSimulator, start: Callable[..., RunningService], any_backend_settings: Settings
) -> Callable[..., World]:
    def _make(**overrides: object) -> World:
        return World(sim, start(world_settings(any_backend_settings, sim, **overrides)))

    return _make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def login_refusal(world: World, resource_id: str, handle: str) -> tuple[str, str]:
    code, reason, message = world.refusal(world.form(resource_id, handle))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    return reason, message


@pytest.mark.parametrize("handle", ["alice", "bob", "carol"])
def test_app_owner_and_collaborators_get_in(world: World, handle: str) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, handle)
    response = world.check(token, "dashboard.view", acme)
    assert response.allowed
    assert [m.rule_id for m in response.matched_rules] == ["app-members-use-addon"]


def test_provisioner_without_a_role_and_strangers_are_refused(world: World) -> None:
    acme = world.provision(ACME)
    for handle in ("dave", "mallory", "erin"):
        reason, message = login_refusal(world, acme, handle)
        assert reason == "LOGIN_DENIED"
        assert "no owner, admin or collaborator role" in message


@pytest.mark.parametrize(("handle", "allowed"), [("erin", True), ("grace", True), ("frank", False)])
def test_team_app_roles(world: World, handle: str, allowed: bool) -> None:
    globex = world.provision(GLOBEX)
    if allowed:
        assert world.check(world.login(globex, handle), "dashboard.view", globex).allowed
    else:
        assert login_refusal(world, globex, handle)[0] == "LOGIN_DENIED"


def test_app_permissions_decide_what_a_member_may_do(world: World) -> None:
    """Heroku's matrix: add-on SSO needs deploy or manage; a paid plan change needs manage."""
    globex = world.provision(GLOBEX)
    reason, message = login_refusal(world, globex, "ivan")  # view only
    assert reason == "LOGIN_DENIED" and "neither the deploy nor the manage permission" in message
    grace = world.login(globex, "grace")  # view + deploy
    assert world.check(grace, "dashboard.configure", globex).allowed
    refused = world.check(grace, "addon.change_plan", globex)
    assert not refused.allowed
    assert [m.rule_id for m in refused.matched_rules] == ["plan-change-needs-manage"]
    world.sim.set_collaborator_role("globex-api", "grace", "member", ["view", "manage"])
    world.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=world.sim.app("globex-api")["id"])
    )
    assert world.check(grace, "addon.change_plan", globex).allowed
    erin = world.login(globex, "erin")  # team admin: every permission
    assert world.check(erin, "addon.change_plan", globex).allowed


def test_team_admin_without_a_collaborator_entry_gets_in(world: World) -> None:
    globex = world.provision(GLOBEX)
    world.sim.set_team_member_role("globex", "frank", "admin")
    assert world.check(world.login(globex, "frank"), "dashboard.view", globex).allowed


def test_a_known_email_with_another_user_id_gets_nothing(world: World) -> None:
    acme = world.provision(ACME)
    alice, mallory = world.user("alice"), world.user("mallory")
    form = heroku_sso_form(acme, mallory["id"], alice["email"], SALT)
    assert world.refusal(form)[1] == "LOGIN_DENIED"


def test_email_change_does_not_matter(world: World) -> None:
    acme = world.provision(ACME)
    world.sim.set_user_email("carol", "carol@new-employer.example")
    assert world.check(world.login(acme, "carol"), "dashboard.view", acme).allowed


def test_removed_collaborator_denied_after_invalidation_at_once(world: World) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, "carol")
    assert world.check(token, "dashboard.view", acme).allowed
    world.sim.remove_collaborator("acme-billing", "carol")
    app_id = world.sim.app("acme-billing")["id"]
    dropped = world.admin.InvalidateAccess(admin_pb2.InvalidateAccessRequest(app_id=app_id))
    assert dropped.dropped
    response = world.check(token, "dashboard.view", acme)
    assert not response.allowed
    assert "no owner, admin or collaborator role" in response.reasons[0]


def test_removed_collaborator_denied_when_the_ttl_runs_out(
    make_world: Callable[..., World],
) -> None:
    world = make_world(access_ttl=1.0)
    acme = world.provision(ACME)
    token = world.login(acme, "carol")
    world.sim.remove_collaborator("acme-billing", "carol")
    deadline = time.monotonic() + 10
    while world.check(token, "dashboard.view", acme).allowed:
        assert time.monotonic() < deadline, "still allowed long after the TTL"
        time.sleep(0.2)


def test_concurrent_checks_on_a_cold_app_fetch_once(world: World) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    app_id = world.sim.app("acme-billing")["id"]
    world.admin.InvalidateAccess(admin_pb2.InvalidateAccessRequest(app_id=app_id))
    world.sim.reset_counters()
    request = pb.CheckRequest(
        session_token=token, action="dashboard.view", resource=pb.Resource(type="addon", id=acme)
    )
    futures = [world.authz.Check.future(request) for _ in range(200)]
    assert all(f.result(timeout=30).allowed for f in futures)
    assert world.sim.count("GET", f"/addons/{acme}") == 1
    assert world.sim.count("GET", f"/apps/{app_id}/collaborators") == 1


def test_expired_oauth_token_is_refreshed(world: World) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    world.sim.expire_access_tokens()
    world.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=world.sim.app("acme-billing")["id"])
    )
    world.sim.reset_counters()
    assert world.check(token, "dashboard.view", acme).allowed
    assert world.sim.count("POST", "/oauth/token") == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "latency", "seconds": 3.0},
        {"kind": "error", "status": 500},
        {"kind": "rate_limit"},
        {"kind": "malformed"},
        {"kind": "drop"},
    ],
)
def test_faults_end_in_a_fast_explained_deny_while_fresh_apps_are_served(
    make_world: Callable[..., World], fault: dict
) -> None:
    world = make_world(facts_deadline=1.0)
    acme, globex = world.provision(ACME), world.provision(GLOBEX)
    acme_token = world.login(acme, "alice")
    globex_token = world.login(globex, "erin")  # globex's access list is now fresh
    world.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=world.sim.app("acme-billing")["id"])
    )
    fault = dict(fault)  # parametrize shares the dict between backends
    kind = fault.pop("kind")
    world.sim.add_fault(kind, path_prefix=f"/addons/{acme}", **fault)
    started = time.monotonic()
    response = world.check(acme_token, "dashboard.view", acme)
    elapsed = time.monotonic() - started
    assert not response.allowed
    assert "access-list-unavailable" in {m.rule_id for m in response.matched_rules}
    assert elapsed < 2.5, f"{kind} took {elapsed:.2f}s"
    assert world.check(globex_token, "dashboard.view", globex).allowed
