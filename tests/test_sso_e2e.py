"""Issue 3 end to end: Heroku SSO → session → checks, through a real server and simulator."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.sso_forms import heroku_sso_form
from authz.v1 import admin_pb2, session_pb2
from tests.conftest import SHIPPED_POLICIES, RecordingHandler, RunningService
from tests.heroku_world import SALT, World, world_settings

ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"
# The reference vector: sha256 over these exact inputs (../shared/reference/heroku-addon.md).
VECTOR_RESOURCE = "01234567-89ab-cdef-0123-456789abcdef"
VECTOR_SALT = "2f97bfa52ca102f8874716e2eb1d3b4920ad0be4"
VECTOR_TS = 1267597772
VECTOR_USER = "038df634-6962-43b9-a1ec-9ff09b8ce665"
VECTOR_DIGEST = "333d1434c7d0000577771aa3a8efc40d555b8620975467d469c994c34a69165a"


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


@pytest.fixture
def world(
    sim: HerokuSimulator, start: Callable[..., RunningService], any_backend_settings: Settings
) -> World:
    return World(sim, start(world_settings(any_backend_settings, sim)))


def test_sha256_forms_accepted_and_sha1_only_forms_refused_by_default(world: World) -> None:
    acme = world.provision(ACME)
    now = int(time.time())
    # One user's forms of the same second are one form: give each its own second.
    for kind, timestamp in (("sha256", now), ("both", now - 1)):
        response = world.exchange(world.form(acme, "alice", token=kind, timestamp=timestamp))
        assert response.session_token.startswith("azs_")
        assert response.principal_id == world.user("alice")["id"]
        assert response.resource_id == acme
        assert response.expires_at.seconds > time.time() + 7 * 3600
        assert response.decision_id
    code, reason, message = world.refusal(world.form(acme, "alice", token="sha1"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SSO_SHA256_REQUIRED")
    assert "AUTHZ_SSO_ALLOW_SHA1=legacy-addons" in message


def test_reference_vector_is_accepted(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    """The published sha256 vector verifies, with a clock set to its timestamp."""
    form = {
        "resource_id": VECTOR_RESOURCE,
        "timestamp": str(VECTOR_TS),
        "user_id": VECTOR_USER,
        "email": "user@example.com",
        "user_scoped_resource_token": VECTOR_DIGEST,
    }
    settings = world_settings(base_settings, sim, sso_salts=(VECTOR_SALT,))
    world = World(sim, start(settings, clock=lambda: VECTOR_TS + 10.0))
    # Unknown resource: the token verified (else SSO_BAD_TOKEN), then the registry refused it.
    assert world.refusal(form)[1] == "ADDON_UNKNOWN"
    tampered = {**form, "user_scoped_resource_token": VECTOR_DIGEST[:-1] + "b"}
    assert world.refusal(tampered)[1] == "SSO_BAD_TOKEN"


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        (
            {"user_scoped_resource_token": "0" * 64},
            grpc.StatusCode.PERMISSION_DENIED,
            "SSO_BAD_TOKEN",
        ),
        ({"timestamp": -360}, grpc.StatusCode.PERMISSION_DENIED, "SSO_STALE_TIMESTAMP"),
        ({"timestamp": +120}, grpc.StatusCode.PERMISSION_DENIED, "SSO_FUTURE_TIMESTAMP"),
        ({"user_id": None}, grpc.StatusCode.INVALID_ARGUMENT, "SSO_MISSING_FIELD"),
        ({"timestamp": None}, grpc.StatusCode.INVALID_ARGUMENT, "SSO_MISSING_FIELD"),
        ({"resource_id": None}, grpc.StatusCode.INVALID_ARGUMENT, "SSO_MISSING_FIELD"),
    ],
)
def test_bad_forms_are_refused_with_their_reason(
    world: World, change: dict, code: grpc.StatusCode, reason: str
) -> None:
    acme = world.provision(ACME)
    alice = world.user("alice")
    form = world.form(acme, "alice")
    for key, value in change.items():
        if value is None:
            form.pop(key)
        elif key == "timestamp":
            form = heroku_sso_form(
                acme, alice["id"], alice["email"], SALT, timestamp=int(time.time()) + value
            )
        else:
            form[key] = value
    got_code, got_reason, message = world.refusal(form)
    assert (got_code, got_reason) == (code, reason)
    assert SALT not in message
    assert form.get("user_scoped_resource_token", "-") not in message


def test_replay_is_refused(world: World) -> None:
    acme = world.provision(ACME)
    form = world.form(acme, "alice")
    world.exchange(form)
    assert world.refusal(form)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "SSO_REPLAYED")


def test_legacy_v1_token_is_refused(world: World) -> None:
    acme = world.provision(ACME)
    form = {
        "id": acme,
        "token": "b6010f6fbb850887a396c2bc0ab23974003008f6",
        "timestamp": str(int(time.time())),
        "user_id": world.user("alice")["id"],
        "resource_id": acme,
    }
    assert world.refusal(form)[1] == "SSO_LEGACY_TOKEN"


def test_unknown_and_deprovisioned_resources_are_refused(world: World) -> None:
    unregistered = world.sim.addon(GLOBEX)["id"]
    assert world.refusal(world.form(unregistered, "erin"))[1] == "ADDON_UNKNOWN"
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    assert world.check(token, "dashboard.view", acme).allowed
    world.admin.DeprovisionAddon(admin_pb2.DeprovisionAddonRequest(resource_id=acme))
    assert world.refusal(world.form(acme, "alice"))[1] == "ADDON_DEPROVISIONED"
    after = world.check(token, "dashboard.view", acme)
    assert not after.allowed
    assert "unknown, expired or revoked" in after.reasons[0]


def test_session_works_for_its_own_addon_only(world: World) -> None:
    acme = world.provision(ACME)
    globex = world.provision(GLOBEX)
    token = world.login(acme, "alice")
    assert world.check(token, "dashboard.view", acme).allowed
    other = world.check(token, "dashboard.view", globex)
    assert not other.allowed
    assert "session-bound-to-its-addon" in {m.rule_id for m in other.matched_rules}


def test_revocation_takes_effect_at_once(world: World) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    assert world.check(token, "dashboard.configure", acme).allowed
    revoked = world.sessions.RevokeSession(session_pb2.RevokeSessionRequest(session_token=token))
    assert revoked.revoked
    assert not world.check(token, "dashboard.configure", acme).allowed


@pytest.mark.parametrize(
    "action",
    [
        "account.change_password",
        "account.change_username",
        "account.deactivate",
        "account.add_user",
        "account.remove_user",
        "account.change_role",
        "account.change_email",
        "billing.update",
        "account.login_password",
        "account.reset_password",
    ],
)
def test_forbidden_actions_denied_for_sso_users_with_reasons(world: World, action: str) -> None:
    acme = world.provision(ACME)
    token = world.login(acme, "alice")  # the app owner: the strongest role there is
    response = world.check(token, action, acme)
    assert not response.allowed
    assert response.reasons and all(r for r in response.reasons)
    denying = {m.rule_id for m in response.matched_rules if m.effect == 2}
    assert denying & {"sso-users-never-change-authentication", "no-password-login"}


def test_callers_cannot_claim_an_sso_login_through_attributes(world: World) -> None:
    from google.protobuf import struct_pb2

    from authz.v1 import authorization_pb2 as pb

    acme = world.provision(ACME)
    attributes = struct_pb2.Struct()
    attributes.update({"auth": {"method": "heroku_sso", "resource_id": acme}})
    response = world.authz.Check(
        pb.CheckRequest(
            principal=pb.Principal(
                type="heroku_user", id=world.user("alice")["id"], attributes=attributes
            ),
            action="dashboard.view",
            resource=pb.Resource(type="addon", id=acme),
        )
    )
    assert not response.allowed
    assert "heroku-user-requires-sso" in {m.rule_id for m in response.matched_rules}


# --- the SHA-1 downgrade (issue 12, item 1) ----------------------------------------------------

OWNERS_CHANGE_PLANS = """
name: owners-change-plans
description: Only an owner of the app may change the add-on's plan.
rules:
  - id: only-owners-change-plans
    effect: deny
    actions: [addon.change_plan]
    resource_types: [addon]
    when: principal.type == "heroku_user" && !("owner" in access.roles)
    reason: Only an owner of the app changes the add-on's plan
"""


@pytest.fixture
def owners_only_world(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    any_backend_settings: Settings,
    tmp_path: Path,
) -> World:
    """The shipped policies plus an owners-only rule for addon.change_plan."""
    policies = tmp_path / "owners-only"
    shutil.copytree(SHIPPED_POLICIES, policies)
    (policies / "owners_change_plans.yaml").write_text(OWNERS_CHANGE_PLANS)
    settings = replace(world_settings(any_backend_settings, sim), policy_dir=policies)
    return World(sim, start(settings))


def downgraded(form: dict[str, str], victim: dict[str, str], how: str) -> dict[str, str]:
    """A genuine form with its SHA-256 token dropped (or emptied) and the user swapped."""
    forged = dict(form, user_id=victim["id"], email=victim["email"])
    if how == "removed":
        del forged["user_scoped_resource_token"]
    else:
        forged["user_scoped_resource_token"] = ""
    return forged


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_collaborator_cannot_downgrade_their_own_form_to_become_the_owner(
    owners_only_world: World, how: str
) -> None:
    world = owners_only_world
    acme = world.provision(ACME)
    # Carol, a plain collaborator, in her own name (a form from a few seconds ago).
    carol = world.exchange(world.form(acme, "carol", timestamp=int(time.time()) - 5))
    assert not world.check(carol.session_token, "addon.change_plan", acme).allowed
    # Carol opens the add-on again; Heroku posts both tokens. She keeps the form, drops the
    # SHA-256 token (the only one that covers the user) and names the owner, alice.
    genuine = world.form(acme, "carol", token="both")
    forged = downgraded(genuine, world.user("alice"), how)
    code, reason, message = world.refusal(forged)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SSO_SHA256_REQUIRED")
    assert "user_scoped_resource_token" in message and SALT not in message
    # Her genuine form, untouched, still logs her in as herself.
    assert world.exchange(genuine).principal_id == world.user("carol")["id"]


def audit_auth(world: World, decision_id: str) -> dict:
    """principal.auth of a recorded decision, as an admin reads it."""
    for reply in world.admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=1000)):
        if reply.decision_id == decision_id:
            record = json_format.MessageToDict(reply.record)
            return record["input"]["principal"]["auth"]
    raise AssertionError(f"decision {decision_id} is not in the audit log")


def test_legacy_mode_accepts_sha1_until_the_addon_sends_sha256_and_remembers_it(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    any_backend_settings: Settings,
    root_log: RecordingHandler,
) -> None:
    settings = world_settings(any_backend_settings, sim, sso_allow_sha1="legacy-addons")
    first = World(sim, start(settings))
    warnings = root_log.at_least(logging.WARNING)
    assert any("legacy-addons" in w and "log in as any other member" in w for w in warnings)
    acme, globex = first.provision(ACME), first.provision(GLOBEX)

    # An add-on that never sent SHA-256: SHA-1 logins work, marked as such everywhere.
    ts = int(time.time())
    alice = first.exchange(first.form(acme, "alice", token="sha1", timestamp=ts))
    # Another user of the same add-on in the same second (same SHA-1 token) is not a replay.
    bob = first.exchange(first.form(acme, "bob", token="sha1", timestamp=ts))
    assert bob.principal_id == first.user("bob")["id"]
    assert audit_auth(first, alice.decision_id)["token_kind"] == "sha1"
    view = first.check(alice.session_token, "dashboard.view", acme)
    assert view.allowed
    assert audit_auth(first, view.decision_id)["token_kind"] == "sha1"
    for action in ("addon.change_plan", "addon.read_data", "dashboard.configure"):
        denied = first.check(alice.session_token, action, acme)
        assert not denied.allowed, action
        assert "sensitive-actions-need-a-sha256-login" in {m.rule_id for m in denied.matched_rules}

    # The same form carrying both tokens is one form: used once, whichever token is checked.
    both = first.form(acme, "carol", token="both", timestamp=ts - 2)
    first.exchange({k: v for k, v in both.items() if k != "user_scoped_resource_token"})
    assert first.refusal(both)[1] == "SSO_REPLAYED"

    # Heroku sends acme the SHA-256 token once: from then on its SHA-1-only forms are downgrades.
    sha256 = first.exchange(first.form(acme, "alice", timestamp=ts - 4))
    assert audit_auth(first, sha256.decision_id)["token_kind"] == "sha256"
    assert first.check(sha256.session_token, "addon.change_plan", acme).allowed
    downgrade = first.form(acme, "carol", token="both", timestamp=ts - 6)
    downgrade = downgraded(downgrade, first.user("alice"), "removed")
    code, reason, message = first.refusal(downgrade)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SSO_SHA256_REQUIRED")
    assert "has sent Heroku's SHA-256 token before" in message

    # After a restart (the same store) acme is still remembered; globex still takes SHA-1.
    first.svc.stop()
    first.svc.stop = lambda: None  # type: ignore[method-assign]  # the fixture stops it too
    again = World(sim, start(settings))
    fresh = again.form(acme, "carol", token="sha1", timestamp=ts - 8)
    assert again.refusal(fresh)[1] == "SSO_SHA256_REQUIRED"
    assert again.exchange(again.form(globex, "erin", token="sha1", timestamp=ts - 8)).session_token
