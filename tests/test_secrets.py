"""Issue 8, secrets: after a full run, no secret is in any log line, error, audit record or file.

The run goes through a real server and the Heroku simulator: provisioning with OAuth grants, SSO
logins (good and refused), checks with sessions, CheckBatch, refusals of bad caller tokens,
revocation, deprovisioning, a Platform API 401 that makes authz refresh the add-on's OAuth token,
an upstream failure and the admin's audit queries. Every log record (root logger, DEBUG) is kept.
Then every secret is looked for, verbatim, in: every log line, every gRPC error (message, ErrorInfo
and debug string), every admin answer, and the raw bytes of every file in the data directory
(audit.db, state.db and their WAL/SHM files), read both while serving and after the stop.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format

from authz.config import CallerToken, ConfigError, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import register_addon_request
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.errors import error_info
from authz.v1 import admin_pb2, session_pb2
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RecordingHandler, RunningService, with_bearer
from tests.heroku_world import SALT, TOKEN_KEY, World, world_settings

ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


class Run:
    """The full run's world, with every secret it handed out and every error it saw."""

    def __init__(self, sim: HerokuSimulator, svc: RunningService, tokens: dict[str, str]) -> None:
        self.sim = sim
        self.svc = svc
        self.caller_tokens = tokens
        self.plain_channel = svc.channel
        svc.channel = with_bearer(svc.channel, tokens["ops"])  # closed with the service
        self.ops = World(sim, svc)
        self.web_channel = with_bearer(grpc.insecure_channel(svc.address), tokens["web"])
        self.web = World(sim, _Facade(svc, self.web_channel))
        self.secrets: dict[str, str] = {
            "sso salt": SALT,
            "oauth client secret": sim.client_secret,
            "token encryption key": TOKEN_KEY,
            **{f"caller token {k}": v for k, v in tokens.items()},
        }
        self.errors: list[str] = []
        self.answers: list[str] = []

    def keep(self, kind: str, value: str) -> str:
        self.secrets[f"{kind} #{len(self.secrets)}"] = value
        return value

    def failed(self, call: Callable[[], object]) -> grpc.RpcError:
        try:
            call()
        except grpc.RpcError as exc:
            info = error_info(exc)
            self.errors.append(
                f"{exc.code().name} {exc.details()} {info} {exc.debug_error_string()}"  # type: ignore[attr-defined]
            )
            return exc
        raise AssertionError("the call was expected to fail")

    def provision(self, name: str) -> str:
        code = self.keep("oauth grant code", self.sim.create_grant(self.sim.addon(name)["id"]))
        request = register_addon_request(self.sim, name, grant_code=code)
        return self.ops.admin.RegisterAddon(request).addon.resource_id

    def form(self, resource_id: str, handle: str, **kwargs: object) -> dict[str, str]:
        form = self.ops.form(resource_id, handle, **kwargs)
        for field in ("user_scoped_resource_token", "resource_token"):
            if field in form:
                self.keep(f"sso form {field}", form[field])
        return form

    def login(self, resource_id: str, handle: str, **kwargs: object) -> str:
        token = self.web.exchange(self.form(resource_id, handle, **kwargs)).session_token
        return self.keep("session token", token)

    def oauth_tokens(self) -> None:
        """Every OAuth access and refresh token the simulator ever issued (it keeps them all)."""
        issued = self.sim.issued_tokens()
        for token in issued["access"]:
            self.keep("oauth access token", token)
        for token in issued["refresh"]:
            self.keep("oauth refresh token", token)


class _Facade:
    """What World needs of a RunningService, over another channel."""

    def __init__(self, svc: RunningService, channel: grpc.Channel) -> None:
        self.channel = channel
        self.address = svc.address


def data_files(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_no_secret_in_logs_errors_audit_or_state(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    base_settings: Settings,
    root_log: RecordingHandler,
) -> None:
    tokens = {name: secrets.token_urlsafe(24) for name in ("ops", "web")}
    settings = world_settings(
        base_settings,
        sim,
        caller_tokens=tuple(CallerToken.of(n, t) for n, t in tokens.items()),
        admins=frozenset({"ops"}),
        http_listen="127.0.0.1:0",
        public_url="http://127.0.0.1:0",  # add-on webhooks, each with its own signing secret
    )
    assert not any(v in repr(settings) for v in (SALT, TOKEN_KEY, sim.client_secret))
    run = Run(sim, start(settings), tokens)
    web = run.web

    # Provisioning with OAuth grants (and webhook subscriptions), and SSO logins.
    acme, globex = run.provision(ACME), run.provision(GLOBEX)
    for secret in sim.webhook_secrets():
        run.keep("webhook secret", secret)
    assert sum(k.startswith("webhook secret") for k in run.secrets) == 2
    alice = run.login(acme, "alice")
    bob = run.login(acme, "bob", token="both")
    erin = run.login(globex, "erin")

    # Refused logins: forged, replayed, stale, a stranger, a legacy form, an unknown add-on.
    forged = run.form(acme, "alice")
    forged["user_scoped_resource_token"] = run.keep("forged token", secrets.token_hex(32))
    run.failed(lambda: web.exchange(forged))
    replayed = run.form(acme, "carol")
    web.exchange(replayed)
    run.failed(lambda: web.exchange(replayed))
    stale = run.form(acme, "alice", timestamp=int(time.time()) - 3600)
    run.failed(lambda: web.exchange(stale))
    run.failed(lambda: web.exchange(run.form(acme, "mallory")))
    run.failed(lambda: web.exchange({"id": acme, "token": secrets.token_hex(20), "timestamp": "1"}))
    unknown = heroku_sso_form("0" * 8, sim.user("alice")["id"], "a@x", SALT)
    run.failed(lambda: web.exchange(unknown))
    run.failed(lambda: web.exchange(run.form(acme, "carol", token="sha1")))  # SHA-1 only

    # Checks with sessions, batches, a bogus session, secrets a caller put in the context.
    assert web.check(alice, "dashboard.view", acme).allowed
    assert not web.check(alice, "account.change_password", acme).allowed
    assert web.check(erin, "dashboard.configure", globex).allowed
    bogus = run.keep("bogus session token", "azs_" + secrets.token_urlsafe(32))
    assert not web.check(bogus, "dashboard.view", acme).allowed
    batch = pb.CheckBatchRequest(
        session_token=bob,
        items=[
            pb.CheckItem(action=a, resource=pb.Resource(type="addon", id=acme))
            for a in ("dashboard.view", "billing.update", "addon.read_data")
        ],
    )
    batch.context.update({"session_token": alice, "authorization": f"Bearer {tokens['web']}"})
    assert [r.allowed for r in web.authz.CheckBatch(batch).results] == [True, False, True]

    # Callers with bad credentials.
    request = pb.CheckRequest(
        session_token=alice, action="dashboard.view", resource=pb.Resource(type="addon", id=acme)
    )
    unauthenticated = pb_grpc.AuthorizationServiceStub(run.plain_channel)
    for metadata in (
        (("authorization", f"Bearer {tokens['web']}x"),),
        (("authorization", f"Basic {tokens['ops']}"),),
        (("authorization", tokens["ops"]),),
        (),
    ):
        error = run.failed(
            lambda md=metadata: unauthenticated.Check(request, metadata=md, timeout=5)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    run.failed(lambda: web.admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest()))

    # A Platform API 401: the access token expired early at Heroku, authz refreshes it once.
    refreshes = sim.count("POST", "/oauth/token")
    sim.expire_access_tokens()
    run.ops.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=sim.addon(ACME)["app"]["id"])
    )
    assert web.check(bob, "dashboard.view", acme).allowed
    assert sim.count("POST", "/oauth/token") == refreshes + 1
    # An upstream failure: denied, with a reason that names the request, not the token.
    sim.add_fault("error", path_prefix="/apps", status=503)
    run.ops.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=sim.addon(GLOBEX)["app"]["id"])
    )
    failing = web.check(erin, "dashboard.view", globex)
    assert not failing.allowed
    assert "access-list-unavailable" in {m.rule_id for m in failing.matched_rules}
    sim.clear_faults()

    # Signed webhook deliveries (a collaborator leaves), and a forged one.
    sim.remove_collaborator("acme-billing", "carol")
    assert sim.wait_for_deliveries()
    assert run.svc.service.http is not None
    forged = httpx.post(
        f"{run.svc.service.http.url}/heroku/webhooks/{acme}",
        content=b'{"id": "forged"}',
        headers={"Heroku-Webhook-Hmac-SHA256": "AAAA"},
    )
    assert forged.status_code == 401
    run.errors.append(forged.text)

    # Revocations: one session, then every session of a deprovisioned add-on.
    assert web.sessions.RevokeSession(session_pb2.RevokeSessionRequest(session_token=alice)).revoked
    assert not web.check(alice, "dashboard.view", acme).allowed
    run.ops.admin.DeprovisionAddon(admin_pb2.DeprovisionAddonRequest(resource_id=globex))
    assert not web.check(erin, "dashboard.view", globex).allowed

    # What an admin sees: policy status and the audit log through the API.
    run.answers.append(str(run.ops.admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest())))
    for reply in run.ops.admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=1000)):
        run.answers.append(str(reply))
    assert len(run.answers) > 20
    run.oauth_tokens()
    assert sum(k.startswith("oauth access token") for k in run.secrets) >= 3  # incl. refreshed
    assert sum(k.startswith("session token") for k in run.secrets) == 3

    while_serving = data_files(settings.data_dir)
    run.web_channel.close()
    run.svc.stop()
    run.svc.stop = lambda: None  # type: ignore[method-assign]  # the fixture stops it too
    after_stop = data_files(settings.data_dir)

    # The haystacks are real: the files hold the run's decisions, redacted where a caller sent
    # secret-looking context keys.
    audit_bytes = after_stop[str(settings.data_dir / "audit.db")]
    assert acme.encode() in audit_bytes and b"[redacted]" in audit_bytes
    assert str(settings.data_dir / "state.db") in after_stop
    assert len(root_log.lines) > 50
    assert any(r.levelno == logging.DEBUG for r in root_log.records)  # DEBUG really was on
    haystacks = {
        **{f"log line {i}": line for i, line in enumerate(root_log.lines)},
        **{f"grpc error {i}": text for i, text in enumerate(run.errors)},
        **{f"admin answer {i}": text for i, text in enumerate(run.answers)},
    }
    found = []
    for what, secret in run.secrets.items():
        assert len(secret) >= 16, what
        needle = secret.encode()
        for where, text in haystacks.items():
            if secret in text:
                found.append(f"{what} in {where}: {text[:200]}")
        for files in (while_serving, after_stop):
            for name, data in files.items():
                if needle in data:
                    found.append(f"{what} in the bytes of {name}")
    assert not found, "\n".join(found)
    # What is stored instead: each session token's SHA-256, so the store still knows them.
    state = after_stop[str(settings.data_dir / "state.db")]
    for key, secret in run.secrets.items():
        if key.startswith("session token"):
            assert hashlib.sha256(secret.encode()).hexdigest().encode() in state, key


def test_secrets_come_from_env_or_files_and_never_show(tmp_path: Path) -> None:
    values = {
        "AUTHZ_SSO_SALT": "salt-from-a-mounted-file-0123456789",
        "AUTHZ_HEROKU_CLIENT_SECRET": "client-secret-from-a-file-0123456789",
        "AUTHZ_TOKEN_KEY": "token-key-from-a-file-0123456789abcdef",
    }
    env = {}
    for name, value in values.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `kubectl create secret` or an editor leaves it
        env[f"{name}_FILE"] = str(path)
    from_files = Settings.from_env(env)
    assert from_files.sso_salts == (values["AUTHZ_SSO_SALT"],)
    assert from_files.heroku_client_secret == values["AUTHZ_HEROKU_CLIENT_SECRET"]
    assert from_files.token_key == values["AUTHZ_TOKEN_KEY"]
    from_env = Settings.from_env(values)
    assert from_env.token_key == values["AUTHZ_TOKEN_KEY"]
    for settings in (from_files, from_env):
        assert not any(value in repr(settings) for value in values.values())
    # Ambiguity and unreadable files are refused, naming the variable and the file only.
    with pytest.raises(ConfigError, match="both AUTHZ_TOKEN_KEY and AUTHZ_TOKEN_KEY_FILE"):
        Settings.from_env({**env, "AUTHZ_TOKEN_KEY": values["AUTHZ_TOKEN_KEY"]})
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AUTHZ_SSO_SALT_FILE": str(tmp_path / "absent")})
    assert "AUTHZ_SSO_SALT_FILE: cannot read" in str(caught.value)


def test_session_tokens_are_redacted_wherever_a_caller_puts_them(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    """Issue 12 item 12: redaction went by key name only, so a session token sent as an id, a
    request id or a value under an innocent key was written to the audit log as it was."""
    settings = world_settings(base_settings, sim)
    world = World(sim, start(settings))
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    tail = token.removeprefix("azs_")
    innocent = pb.CheckRequest(
        principal=pb.Principal(type="service", id=token),
        action="dashboard.view",
        resource=pb.Resource(type="addon", id=f"x/{token}/y"),
        request_id=token,
    )
    innocent.principal.attributes.update({token: "as a key", "note": f"copied: {token}"})
    innocent.context.update({"remember": [token, {"deep": token}], "cut": token[:12]})
    assert not world.authz.Check(innocent).allowed
    batch = pb.CheckBatchRequest(
        session_token=token,
        request_id=f"batch {token}",
        items=[pb.CheckItem(action="dashboard.view", resource=pb.Resource(type="addon", id=acme))],
    )
    batch.items[0].context.update({"seen": token})
    assert [r.allowed for r in world.authz.CheckBatch(batch).results] == [True]
    # An SSO refusal records the claimed (unverified) user id.
    forged = dict(world.form(acme, "alice"), user_id=token)
    assert world.refusal(forged)[1] == "SSO_BAD_TOKEN"

    records = [
        json_format.MessageToJson(reply.record)
        for reply in world.admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=1000))
    ]
    assert len(records) >= 4
    assert not [r for r in records if tail[:16] in r]
    assert any('"id": "[redacted]"' in r for r in records)  # principal.id
    assert any('"request_id": "[redacted]"' in r for r in records)
    assert any('"x/[redacted]/y"' in r for r in records)
    assert any(f'"cut": "{token[:12]}"' in r for r in records)  # too short to be one: kept
    world.svc.stop()
    world.svc.stop = lambda: None  # type: ignore[method-assign]  # the fixture stops it too
    for name, data in data_files(settings.data_dir).items():
        assert tail[:16].encode() not in data, name


def test_redact_session_tokens_walks_only_records_that_hold_one() -> None:
    from datetime import UTC, datetime

    from authz.decide import redact_session_tokens

    token = "azs_" + secrets.token_urlsafe(32)
    clean = {"principal": {"id": "user-1"}, "input": {"context": {"note": ["x", 1.5, None]}}}
    assert redact_session_tokens(clean) is clean  # no prefix anywhere: the record itself
    short = {"input": {"context": {"azs_": "azs_short"}}}
    assert redact_session_tokens(short) == short  # the prefix alone is not a token
    # A value marshal cannot encode (here a datetime) takes the slow path, and still redacts.
    odd = {"when": datetime(2025, 1, 1, tzinfo=UTC), "ids": (f"{token}!", {token: [token]})}
    assert redact_session_tokens(odd) == {
        "when": odd["when"],
        "ids": ["[redacted]!", {"[redacted]": ["[redacted]"]}],
    }


def test_redact_blanks_secret_looking_keys_at_any_depth_and_leaves_clean_trees_alone() -> None:
    from types import MappingProxyType

    from authz.decide import REDACTED, redact

    clean = {"team": "red", "roles": ["editor", {"level": 2}], "limits": {"max": 3}}
    assert redact(clean) is clean  # nothing to blank: the tree itself, not a copy
    assert redact(clean) is clean  # and again, with its keys remembered
    nested = {"team": "red", "items": [{"ok": 1}, {"api_token": "t", "deep": {"Password": "p"}}]}
    assert redact(nested) == {
        "team": "red",
        "items": [{"ok": 1}, {"api_token": REDACTED, "deep": {"Password": REDACTED}}],
    }
    assert nested["items"][1]["api_token"] == "t"  # the caller's tree is never changed
    pairs = {"pair": ("a", "b"), "deeper": [("c", {"d": 1})]}
    assert redact(pairs) is pairs  # tuples are written as JSON arrays too
    # Another kind of mapping is copied into a dict (the audit log encodes plain JSON).
    odd = {"pair": ("a", "b"), "view": MappingProxyType({"x": 1})}
    assert redact(odd) == {"pair": ["a", "b"], "view": {"x": 1}}
    assert type(redact(odd)["view"]) is dict
