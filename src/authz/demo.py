"""`authz demo`: the bundled Heroku simulator, a real authz server on loopback, and a scripted
partner that provisions add-ons, logs users in through Heroku SSO and asks for decisions."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path

import grpc

from authz.audit.chain import verify
from authz.audit.commands import explain
from authz.audit.query import get_entry, query
from authz.cli import format_decision
from authz.config import CallerToken, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import register_addon_request
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.app import Service, start_service
from authz.server.errors import error_info
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc

# Demo-only secrets: the simulator is local and these never leave this process.
DEMO_SALT = "demo-sso-salt-local-only"
DEMO_TOKEN_KEY = "demo-token-encryption-key-local-only-0123456789"
# Two partner services: the web tier (which also provisions, so it is an admin) and the dashboard.
WEB_TIER_TOKEN = secrets.token_urlsafe(32)
DASHBOARD_TOKEN = secrets.token_urlsafe(32)


def say(text: str = "") -> None:
    print(text, flush=True)


class Partner:
    """What a partner's web tier and services do, as a gRPC client."""

    def __init__(self, channel: grpc.aio.Channel, sim: HerokuSimulator) -> None:
        self.sim = sim
        self.as_web_tier = (("authorization", f"Bearer {WEB_TIER_TOKEN}"),)
        self.as_dashboard = (("authorization", f"Bearer {DASHBOARD_TOKEN}"),)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.authz = pb_grpc.AuthorizationServiceStub(channel)

    async def provision(self, addon_name: str) -> str:
        reply = await self.admin.RegisterAddon(
            register_addon_request(self.sim, addon_name), metadata=self.as_web_tier
        )
        say(
            f"  provisioned {addon_name} for app {reply.addon.app_name} "
            f"(OAuth tokens stored encrypted: {reply.addon.has_oauth_tokens})"
        )
        return reply.addon.resource_id

    async def sso(self, title: str, form: dict[str, str]) -> str:
        say(f"• {title}")
        try:
            reply = await self.sessions.ExchangeSso(
                session_pb2.ExchangeSsoRequest(form=form), metadata=self.as_web_tier
            )
        except grpc.aio.AioRpcError as exc:
            info = error_info(exc)
            say(f"  REFUSED {exc.code().name} {info.reason if info else ''}: {exc.details()}\n")
            return ""
        say(
            f"  session issued for heroku_user:{reply.principal_id} "
            f"(decision {reply.decision_id})\n"
        )
        return reply.session_token

    async def check(self, title: str, token: str, action: str, resource_id: str) -> None:
        reply = await self.authz.Check(
            pb.CheckRequest(
                session_token=token,
                action=action,
                resource=pb.Resource(type="addon", id=resource_id),
            ),
            metadata=self.as_dashboard,
        )
        say(f"• {title}\n{format_decision(reply)}\n")


async def run_demo(policy_dir: Path) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="authz-demo-") as data_dir,
        HerokuSimulator(load_fixture()) as sim,
    ):
        settings = replace(
            Settings.from_env({}),
            listen="127.0.0.1:0",
            policy_dir=policy_dir,
            data_dir=Path(data_dir),
            sso_salts=(DEMO_SALT,),
            heroku_api_url=sim.base_url,
            heroku_id_url=sim.base_url,
            heroku_client_secret=sim.client_secret,
            token_key=DEMO_TOKEN_KEY,
            caller_tokens=(
                CallerToken.of("web-tier", WEB_TIER_TOKEN),
                CallerToken.of("dashboard", DASHBOARD_TOKEN),
            ),
            admins=frozenset({"web-tier"}),
        )
        service = await start_service(settings, watch_interval=None)
        say(f"Heroku API simulator at {sim.base_url}")
        say(
            f"authz server on 127.0.0.1:{service.port}, policy revision "
            f"{service.policies.current.revision}, audit {settings.audit_mode};\n"
            "partner services authenticate with bearer tokens: web-tier (admin) and dashboard\n"
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                await script(Partner(channel, sim), sim, service)
        finally:
            await service.stop()
        report_audit(service)


async def script(partner: Partner, sim: HerokuSimulator, service: Service) -> None:
    def form(resource_id: str, handle: str, **kwargs: object) -> dict[str, str]:
        user = sim.user(handle)
        return heroku_sso_form(resource_id, user["id"], user["email"], DEMO_SALT, **kwargs)

    say("Heroku provisions two add-ons (the partner registers them with authz):")
    acme = await partner.provision("authz-curved-12345")
    globex = await partner.provision("authz-spherical-67890")
    say()

    say("Users open the add-on from the Heroku dashboard (add-on SSO):")
    alice = await partner.sso("alice, owner of acme-billing", form(acme, "alice"))
    carol_form = form(acme, "carol")
    carol = await partner.sso("carol, a collaborator on acme-billing", carol_form)
    await partner.sso("the same SSO form posted again (a replay)", carol_form)
    alice_user = sim.user("alice")
    downgrade = {
        **form(acme, "carol", token="both", timestamp=_ago(2)),
        "user_id": alice_user["id"],
        "email": alice_user["email"],
        "user_scoped_resource_token": "",
    }
    await partner.sso(
        "carol drops the SHA-256 token from a fresh form of hers and names alice instead",
        downgrade,
    )
    await partner.sso("dave, who provisioned the add-on but has left the app", form(acme, "dave"))
    await partner.sso(
        "frank, a plain member of team globex with no access to globex-api", form(globex, "frank")
    )
    await partner.sso("a form 6 minutes old", form(acme, "bob", timestamp=_ago(360)))
    erin = await partner.sso("erin, admin of team globex", form(globex, "erin"))

    say("Partner services ask before sensitive actions:")
    await partner.check("carol opens the dashboard", carol, "dashboard.view", acme)
    await partner.check(
        "carol tries to change her password from the SSO dashboard",
        carol,
        "account.change_password",
        acme,
    )
    await partner.check(
        "alice's session is used on another add-on", alice, "dashboard.view", globex
    )
    await partner.check(
        "erin changes the plan of globex's add-on", erin, "addon.change_plan", globex
    )

    say("On Heroku, carol is removed from acme-billing; a webhook makes the partner invalidate:")
    sim.remove_collaborator("acme-billing", "carol")
    await partner.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=sim.app("acme-billing")["id"]),
        metadata=partner.as_web_tier,
    )
    await partner.check("carol opens the dashboard again", carol, "dashboard.view", acme)
    await partner.sessions.RevokeSession(
        session_pb2.RevokeSessionRequest(session_token=alice), metadata=partner.as_web_tier
    )
    say("The dashboard service (not an admin) asks AdminService for the policy status:")
    try:
        await partner.admin.GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(), metadata=partner.as_dashboard
        )
    except grpc.aio.AioRpcError as exc:
        say(f"  REFUSED {exc.code().name}: {exc.details()}\n")
    await partner.check("alice logged out; her old session is used", alice, "dashboard.view", acme)


def _ago(seconds: int) -> int:
    import time

    return int(time.time()) - seconds


def report_audit(service: Service) -> None:
    path = service.audit.path
    records = query(path, limit=1000)
    report = verify(path)
    allowed = sum(1 for r in records if r["effect"] == "ALLOW")
    say(
        f"Audit log {path.name}: {len(records)} decisions recorded "
        f"({allowed} allowed, {len(records) - allowed} denied); chain: {report}"
    )
    denied = next(r for r in records if r["effect"] == "DENY" and r["matched_rules"])
    entry = get_entry(path, denied["decision_id"])
    if entry is not None:
        say(f"\n`authz audit show {denied['decision_id']}` explains a denial:\n")
        say(explain(entry))


def main(policy_dir: Path) -> int:
    asyncio.run(run_demo(policy_dir))
    return 0
