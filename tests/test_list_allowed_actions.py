"""Action search for dashboards: "what may this SSO session do on this add-on?" in one call,
over gRPC (AuthorizationService.ListAllowedActions) and AuthZEN (POST /access/v1/search/action),
with the shipped policies, real SSO logins and the Heroku simulator for the access facts.

The expected lists are read off the shipped policies by hand (policies/*.yaml): app owners,
admins and members with `manage` get every dashboard action; `deploy` without `manage` gets all
but addon.change_plan; an SSO session never gets account.* or billing.update, and works only on
the add-on it was issued for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from authz.audit.query import get
from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES, RunningService, write_policy_dir
from tests.heroku_world import World, world_settings

ACME = "authz-curved-12345"  # personal app acme-billing: alice owner, bob collaborator
GLOBEX = "authz-spherical-67890"  # team app globex-api: erin admin, grace member (view, deploy)
EVERY_DASHBOARD_ACTION = [
    "session.login",
    "dashboard.view",
    "dashboard.configure",
    "addon.read_data",
    "addon.change_plan",
]
FORBIDDEN = {
    "account.login_password",
    "account.reset_password",
    "account.change_password",
    "account.change_username",
    "account.change_email",
    "account.deactivate",
    "account.add_user",
    "account.remove_user",
    "account.change_role",
    "billing.update",
}
CASES = [
    ("alice", ACME, EVERY_DASHBOARD_ACTION),  # the app's owner
    ("bob", ACME, EVERY_DASHBOARD_ACTION),  # collaborator on a personal app: all permissions
    ("erin", GLOBEX, EVERY_DASHBOARD_ACTION),  # app admin and team admin
    ("grace", GLOBEX, EVERY_DASHBOARD_ACTION[:4]),  # member with deploy, without manage
]


@pytest.fixture(scope="module")
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def world(
    sim: HerokuSimulator,
    start_shared: Callable[..., RunningService],
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    base = Settings(
        listen="127.0.0.1:0",
        policy_dir=SHIPPED_POLICIES,
        data_dir=tmp_path_factory.mktemp("actions") / "data",
        http_listen="127.0.0.1:0",
    )
    world = World(sim, start_shared(world_settings(base, sim)))
    for name in (ACME, GLOBEX):
        ADDONS[name] = world.provision(name)
    return world


ADDONS: dict[str, str] = {}
"""Fixture add-on name -> resource id, as the module's world provisioned them."""


SESSIONS: dict[tuple[str, str], str] = {}


def addon(world: World, name: str) -> str:
    return ADDONS[name]


def session(world: World, user: str, name: str) -> str:
    """The user's session on the add-on, logged in once (a second form in the same second
    would be a replay)."""
    if (user, name) not in SESSIONS:
        SESSIONS[(user, name)] = world.login(addon(world, name), user)
    return SESSIONS[(user, name)]


def over_grpc(
    world: World, token: str, resource_id: str, **kwargs: object
) -> pb.ListAllowedActionsResponse:
    return world.authz.ListAllowedActions(
        pb.ListAllowedActionsRequest(
            session_token=token, resource=pb.Resource(type="addon", id=resource_id), **kwargs
        )
    )


def over_authzen(world: World, token: str, resource_id: str, **extra: object) -> httpx.Response:
    http = world.svc.service.http
    assert http is not None
    return httpx.post(
        http.url + "/access/v1/search/action",
        content=json.dumps(
            {
                "subject": {"type": "session", "id": token},
                "resource": {"type": "addon", "id": resource_id},
                **extra,
            }
        ),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize(("user", "name", "expected"), CASES)
def test_an_sso_session_may_do_exactly_what_the_policies_allow(
    world: World, user: str, name: str, expected: list[str]
) -> None:
    resource_id = addon(world, name)
    token = session(world, user, name)
    reply = over_grpc(world, token, resource_id, request_id=f"menu-{user}")
    assert list(reply.actions) == expected
    # Every catalogue action was decided, in catalogue order, and the hidden ones say why.
    assert len(reply.decisions) == 15
    assert [d.action for d in reply.decisions if d.decision.allowed] == expected
    assert FORBIDDEN.isdisjoint(reply.actions)
    for decision in reply.decisions:
        if decision.action in FORBIDDEN:
            rules = {m.rule_id for m in decision.decision.matched_rules}
            assert "sso-users-never-change-authentication" in rules, decision
        record = get(world.svc.service.audit.target, decision.decision.decision_id)
        assert record is not None
        assert (record["action"], record["effect"]) == (
            decision.action,
            "ALLOW" if decision.decision.allowed else "DENY",
        )
        assert record["request_id"] == f"menu-{user}" and record["interface"] == "grpc"
        assert record["principal"]["id"] == world.user(user)["id"]
        assert token not in json.dumps(record)

    answer = over_authzen(world, token, resource_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "page": {"next_token": "", "count": len(expected)},
        "results": [{"name": action} for action in expected],
    }


def test_a_session_works_only_on_its_own_add_on(world: World) -> None:
    token = session(world, "alice", ACME)
    reply = over_grpc(world, token, addon(world, GLOBEX))
    assert list(reply.actions) == []
    assert all(
        "session-bound-to-its-addon" in {m.rule_id for m in d.decision.matched_rules}
        for d in reply.decisions
    )
    answer = over_authzen(world, token, addon(world, GLOBEX), options={"explain": True})
    assert answer.json()["results"] == []
    evaluated = answer.json()["context"]["evaluated"]
    assert [e["name"] for e in evaluated] == [d.action for d in reply.decisions]
    assert all(e["context"]["effect"] == "DENY" for e in evaluated)


def test_an_unknown_session_may_do_nothing(world: World) -> None:
    token = "azs_" + "x" * 43
    reply = over_grpc(world, token, addon(world, ACME))
    assert list(reply.actions) == []
    assert {d.decision.reasons[0].split(":")[0] for d in reply.decisions} == {"SESSION_UNKNOWN"}
    assert over_authzen(world, token, addon(world, ACME)).json()["results"] == []


def test_the_actions_to_consider_can_be_named(world: World) -> None:
    resource_id = addon(world, GLOBEX)
    token = session(world, "grace", GLOBEX)
    actions = ["billing.update", "addon.change_plan", "dashboard.view", "dashboard.view", "x.y"]
    reply = over_grpc(world, token, resource_id, actions=actions)
    assert list(reply.actions) == ["dashboard.view"]
    assert [d.action for d in reply.decisions] == [
        "billing.update",
        "addon.change_plan",
        "dashboard.view",
        "x.y",
    ]
    assert reply.decisions[-1].decision.reasons[0].startswith("ACTION_UNKNOWN")


def test_a_principal_named_directly(world: World) -> None:
    """A partner service asking for itself: the shipped policies allow services nothing."""
    reply = world.authz.ListAllowedActions(
        pb.ListAllowedActionsRequest(
            principal=pb.Principal(type="service", id="billing-worker"),
            resource=pb.Resource(type="addon", id=addon(world, ACME)),
        )
    )
    assert list(reply.actions) == [] and len(reply.decisions) == 15


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.ListAllowedActionsRequest(principal=pb.Principal(type="service", id="web")),
            "resource is missing",
        ),
        (
            pb.ListAllowedActionsRequest(resource=pb.Resource(type="addon", id="a")),
            "principal or session_token is required",
        ),
        (
            pb.ListAllowedActionsRequest(
                principal=pb.Principal(type="service", id="web"),
                resource=pb.Resource(type="addon", id="a"),
                actions=["a"] * 101,
            ),
            "actions has 101 entries; at most 100",
        ),
        (
            pb.ListAllowedActionsRequest(
                principal=pb.Principal(type="service", id="web"),
                resource=pb.Resource(type="addon", id="a"),
                actions=["dashboard.view", ""],
            ),
            "actions[1] is empty",
        ),
    ],
)
def test_malformed_requests_are_invalid_arguments(
    world: World, request_: pb.ListAllowedActionsRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        world.authz.ListAllowedActions(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")


def test_a_policy_set_without_a_catalogue_needs_the_actions_named(
    start: Callable[..., RunningService], base_settings: Settings, tmp_path: Path
) -> None:
    directory = write_policy_dir(
        tmp_path / "uncatalogued",
        {"p.yaml": "name: p\nrules: [{id: r, effect: allow, actions: [read], reason: R}]\n"},
    )
    svc = start(base_settings, policy_dir=directory)
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    request = pb.ListAllowedActionsRequest(
        principal=pb.Principal(type="user", id="u"), resource=pb.Resource(type="doc", id="d")
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListAllowedActions(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no action catalogue" in (refused.value.details() or "")
    request.actions.extend(["read", "write"])
    assert list(stub.ListAllowedActions(request).actions) == ["read"]


def test_grpc_decisions_are_recorded_with_their_interface(world: World) -> None:
    token = session(world, "alice", ACME)
    reply = world.check(token, "dashboard.view", addon(world, ACME))
    record = get(world.svc.service.audit.target, reply.decision_id)
    assert record is not None and record["interface"] == "grpc"
