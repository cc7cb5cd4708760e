"""`authz demo`: the development world of `authz dev up` (the Heroku simulator and a real authz
server on loopback) in a temporary folder, and a scripted partner that provisions add-ons, logs
users in through Heroku SSO and asks for decisions, through authz.client; it ends by itself."""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from authz.audit.chain import verify
from authz.audit.explain import explain
from authz.audit.query import get_entry, query
from authz.client import AsyncAuthzClient, AuthzCallError, Resource, format_decision
from authz.config import CallerToken
from authz.devtools.dev_world import PERSONAL_ADDON, TEAM_ADDON, DevWorld, dev_world
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.app import Service

# Two partner services: the web tier (which also provisions, so it is an admin) and the dashboard;
# and the partner's compliance staff, who review the audit log in a browser (AUTHZ_REVIEWERS).
WEB_TIER_TOKEN = secrets.token_urlsafe(32)
DASHBOARD_TOKEN = secrets.token_urlsafe(32)
REVIEWER_TOKEN = secrets.token_urlsafe(32)


def say(text: str = "") -> None:
    print(text, flush=True)


class Partner:
    """What a partner's web tier and dashboard service do, each with its own client."""

    def __init__(self, world: DevWorld, web_tier: AsyncAuthzClient, dashboard: AsyncAuthzClient):
        self.world = world
        self.sim = world.sim
        self.web_tier = web_tier
        self.dashboard = dashboard

    async def provision(self, addon_name: str) -> str:
        registration = await self.world.provision(self.web_tier, addon_name)
        addon = registration.addon
        say(
            f"  provisioned {addon_name} for app {addon.app_name} "
            f"(OAuth tokens stored encrypted: {addon.has_oauth_tokens})"
        )
        return addon.resource_id

    async def sso(self, title: str, form: dict[str, str]) -> str:
        say(f"• {title}")
        try:
            session = await self.web_tier.exchange_sso(form)
        except AuthzCallError as refused:
            say(f"  REFUSED {refused.status.name} {refused.code}: {refused.message}\n")
            return ""
        say(f"  session issued for {session.principal} (decision {session.decision_id})\n")
        return session.session_token

    async def check(self, title: str, token: str, action: str, resource_id: str) -> None:
        decision = await self.dashboard.check(action, Resource("addon", resource_id), session=token)
        say(f"• {title}\n{format_decision(decision)}\n")

    def form(self, resource_id: str, handle: str, **kwargs: Any) -> dict[str, str]:
        user = self.sim.user(handle)
        salt = self.world.settings.sso_salts[0]
        return heroku_sso_form(resource_id, user["id"], user["email"], salt, **kwargs)


async def run_demo(policy_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-demo-") as data_dir:
        world_context = dev_world(
            Path(data_dir),
            policy_dir,
            http_listen="127.0.0.1:0",
            callers=(
                CallerToken.of("web-tier", WEB_TIER_TOKEN),
                CallerToken.of("dashboard", DASHBOARD_TOKEN),
                CallerToken.of("compliance", REVIEWER_TOKEN),
            ),
            admins=frozenset({"web-tier"}),
            reviewers=frozenset({"compliance"}),
        )
        async with world_context as world:
            service = world.service
            say(f"Heroku API simulator at {world.sim.base_url}")
            say(
                f"authz server on {service.address}, policy revision "
                f"{service.policies.current.revision}, audit {world.settings.audit_mode};\n"
                "partner services authenticate with bearer tokens: web-tier (admin) and dashboard\n"
            )
            async with (
                AsyncAuthzClient(service.address, token=WEB_TIER_TOKEN) as web_tier,
                AsyncAuthzClient(service.address, token=DASHBOARD_TOKEN) as dashboard,
            ):
                await script(Partner(world, web_tier, dashboard))
            report_audit(service)
            await offer_review(service)


async def script(partner: Partner) -> None:
    sim = partner.sim
    say("Heroku provisions two add-ons (the partner registers them with authz):")
    acme = await partner.provision(PERSONAL_ADDON)
    globex = await partner.provision(TEAM_ADDON)
    say()

    say("Users open the add-on from the Heroku dashboard (add-on SSO):")
    alice = await partner.sso("alice, owner of acme-billing", partner.form(acme, "alice"))
    carol_form = partner.form(acme, "carol")
    carol = await partner.sso("carol, a collaborator on acme-billing", carol_form)
    await partner.sso("the same SSO form posted again (a replay)", carol_form)
    alice_user = sim.user("alice")
    downgrade = {
        **partner.form(acme, "carol", token="both", timestamp=_ago(2)),
        "user_id": alice_user["id"],
        "email": alice_user["email"],
        "user_scoped_resource_token": "",
    }
    await partner.sso(
        "carol drops the SHA-256 token from a fresh form of hers and names alice instead",
        downgrade,
    )
    await partner.sso(
        "dave, who provisioned the add-on but has left the app", partner.form(acme, "dave")
    )
    await partner.sso(
        "frank, a plain member of team globex with no access to globex-api",
        partner.form(globex, "frank"),
    )
    await partner.sso("a form 6 minutes old", partner.form(acme, "bob", timestamp=_ago(360)))
    erin = await partner.sso("erin, admin of team globex", partner.form(globex, "erin"))

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
    await partner.web_tier.invalidate_access(sim.app("acme-billing")["id"])
    await partner.check("carol opens the dashboard again", carol, "dashboard.view", acme)
    await partner.web_tier.revoke_session(alice)
    say("The dashboard service (not an admin) asks AdminService for the policy status:")
    try:
        await partner.dashboard.policy_status()
    except AuthzCallError as refused:
        say(f"  REFUSED {refused.status.name}: {refused.message}\n")
    await partner.check("alice logged out; her old session is used", alice, "dashboard.view", acme)


def _ago(seconds: int) -> int:
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


async def offer_review(service: Service) -> None:
    """The review URL and how to log in; in a terminal, the server stays up until Enter."""
    assert service.http is not None
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    say("\nReview these decisions in a browser (for reviewers: the demo's is caller compliance):")
    say(f"  {service.http.url}/audit")
    say(f"  log in: paste the token {REVIEWER_TOKEN} into the form there")
    if interactive:
        say("The demo keeps serving until you press Enter.")
        await asyncio.to_thread(sys.stdin.readline)
    else:
        say("(not a terminal: the demo stops now; run `make demo` in a terminal to browse it)")


def main(policy_dir: Path) -> int:
    asyncio.run(run_demo(policy_dir))
    return 0
