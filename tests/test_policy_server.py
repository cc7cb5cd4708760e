"""Policy semantics as a running server applies them: the action catalogue (issue 12, item 14)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService
from tests.heroku_world import World, world_settings

ACME = "authz-curved-12345"  # alice owns this app in the simulator's fixture

DOCS = """
name: docs
actions:
  doc.read: Read a document
  doc.edit: Edit a document
rules:
  - id: owners-do-anything
    effect: allow
    actions: ["doc.*"]
    when: resource.attributes.owner == principal.id
    reason: owners may do anything with their documents
"""


def check(svc: RunningService, action: str) -> pb.CheckResponse:
    return pb_grpc.AuthorizationServiceStub(svc.channel).Check(
        pb.CheckRequest(
            principal=pb.Principal(type="user", id="alice"),
            action=action,
            resource=pb.Resource(type="doc", id="d1", attributes=_struct(owner="alice")),
            request_id=f"req-{action}",
        ),
        timeout=5,
    )


def _struct(**values: object) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(values)
    return value


def test_an_uncatalogued_action_is_denied_by_the_server_and_explained(
    start: Callable[..., RunningService],
    base_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
) -> None:
    svc = start(base_settings, policy_dir=policy_dir({"docs.yaml": DOCS}))
    assert check(svc, "doc.edit").allowed
    response = check(svc, "doc.delete_everything")
    assert not response.allowed and response.effect == pb.EFFECT_DENY
    assert list(response.matched_rules) == []
    assert response.reasons[0].startswith(
        "ACTION_UNKNOWN: action 'doc.delete_everything' is in no action catalogue"
    )
    # The audit record says the same.
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    [record] = admin.QueryDecisions(
        admin_pb2.QueryDecisionsRequest(action="doc.delete_everything", limit=5), timeout=5
    )
    assert record.effect == pb.EFFECT_DENY and list(record.matched_rules) == []
    assert (
        record.record.fields["reasons"]
        .list_value.values[0]
        .string_value.startswith("ACTION_UNKNOWN: ")
    )


def test_an_open_catalogue_lets_the_rules_decide_on_the_server(
    start: Callable[..., RunningService],
    base_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
) -> None:
    svc = start(base_settings, policy_dir=policy_dir({"docs.yaml": DOCS + "catalogue: open\n"}))
    response = check(svc, "doc.delete_everything")
    assert response.allowed
    assert [m.rule_id for m in response.matched_rules] == ["owners-do-anything"]


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


def test_the_app_owner_cannot_reach_an_uncatalogued_addon_action_through_a_glob(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    """The review's case: the shipped rule allows members `addon.*`; before, that let the app
    owner's SSO session do `addon.delete_everything`, an action nobody catalogued."""
    world = World(sim, start(world_settings(base_settings, sim)))
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    assert world.check(token, "addon.read_data", acme).allowed
    response = world.check(token, "addon.delete_everything", acme)
    assert not response.allowed
    assert list(response.matched_rules) == []
    assert response.reasons[0].startswith("ACTION_UNKNOWN: ")
