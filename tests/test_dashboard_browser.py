"""The example partner dashboard (examples/heroku-dashboard) in a real headless browser, as a
Heroku user meets it: `authz dev up --dashboard` (the simulator, authz, the dashboard), the
simulator's /__sim/dashboard page with its "Open" links, and Debian's chromium.

The policies are the shipped ones plus the example's plan_owners_only.yaml, so on acme-billing
(a personal app: alice owns it, bob and carol are collaborators) the menus differ: alice may
change the plan, bob may not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from authz.client import AuthzClient
from authz.devtools.dev_world import dev_salt, fixture_sso_form
from authz.devtools.sso_forms import auto_submit_page
from tests.binary import DevUp
from tests.conftest import ROOT, SHIPPED_POLICIES

EXAMPLE = ROOT / "examples" / "heroku-dashboard"
ACME = "authz-curved-12345"
FORBIDDEN_TEXT = ("password", "username", "login email", "deactivate", "add a user", "roles")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
"""Rewritten by `AUTHZ_UPDATE_SCREENSHOTS=1 pytest tests/test_dashboard_browser.py`."""

pytest_plugins = ("tests.browser",)  # the `browser` and `page` fixtures


class World:
    def __init__(self, up: DevUp) -> None:
        self.up = up
        self.sim = up.value("Heroku simulator")
        self.dashboard = up.value("example dashboard")
        self.authz = AuthzClient(up.address)
        # The second of each user's last SSO form: two forms of one user within one second are
        # the same form (a replay). `dev up` logged alice and erin in while starting.
        now = int(time.time())
        self.last_form = {"alice": now, "erin": now}

    def fresh_second(self, user: str) -> None:
        """Wait until a form for `user` cannot be the one they were last given."""
        while int(time.time()) <= self.last_form.get(user, 0):
            time.sleep(0.05)

    def formed(self, user: str) -> None:
        self.last_form[user] = int(time.time())

    def sim_json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = httpx.request(method, f"{self.sim}/__sim/{path}", timeout=10, **kwargs)
        assert reply.status_code < 300, reply.text
        return reply.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dashboard")
    policies = root / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    shutil.copy(EXAMPLE / "policies" / "plan_owners_only.yaml", policies)
    free = ("--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
    up = DevUp(
        [
            *free,
            "--dashboard",
            "--dashboard-listen",
            "127.0.0.1:0",
            "--data",
            str(root / "dev"),
            "--policies",
            str(policies),
        ]
    )
    world = World(up)
    try:
        yield world
    finally:
        world.authz.close()
        status = up.stop(signal.SIGINT)
        assert status == 0, up.stderr
        assert "Traceback" not in up.stderr, up.stderr


def open_from_heroku(page: Any, world: World, user: str, app: str = "acme-billing") -> None:
    """Click the user's "Open" link for the app's add-on on the simulator's page."""
    page.goto(f"{world.sim}/__sim/dashboard")
    world.fresh_second(user)
    page.locator(f'#app-{app} tr[data-user="{user}"] a.open').first.click()
    # The simulator's page POSTs the signed form to the dashboard as soon as it loads.
    page.wait_for_url(f"{world.dashboard}/**")
    page.wait_for_load_state("load")
    world.formed(user)


def functions(page: Any) -> set[str]:
    return set(
        page.locator("section[data-function]").evaluate_all(
            "els => els.map(e => e.dataset.function)"
        )
    )


def assert_no_forbidden_function(page: Any) -> None:
    text = page.locator("main").inner_text().lower()
    for word in FORBIDDEN_TEXT:
        assert word not in text, word
    assert "billing" not in page.locator("section[data-function]").all_inner_texts()


def test_the_owner_sees_every_allowed_function_and_changes_the_plan(
    world: World, page: Any
) -> None:
    open_from_heroku(page, world, "alice")
    assert page.url.startswith(f"{world.dashboard}/addons/")
    assert functions(page) == {"view", "data", "settings", "plan"}
    assert_no_forbidden_function(page)
    assert "alice@acme.example" in page.locator("header").inner_text()
    # Only authz's session token is kept, HttpOnly and SameSite=Lax (no TLS here: not Secure).
    [cookie] = page.context.cookies()
    assert cookie["name"] == "authz_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax" and not cookie["secure"]
    assert cookie["value"].startswith("azs_")
    page.select_option("#fn-plan select", "pro")
    page.click("#fn-plan button")
    assert "Plan changed to pro" in page.locator("[role=status]").inner_text()
    if os.environ.get("AUTHZ_UPDATE_SCREENSHOTS") == "1":  # the README's picture, on request
        page.set_viewport_size({"width": 1100, "height": 600})
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_a_collaborator_sees_no_plan_change_and_is_refused_when_sending_it(
    world: World, page: Any
) -> None:
    open_from_heroku(page, world, "bob")
    assert functions(page) == {"view", "data", "settings"}
    assert_no_forbidden_function(page)
    # Settings are his to change.
    page.fill("#fn-settings input[name=retention_days]", "90")
    page.click("#fn-settings button")
    assert "Retention set to 90 days" in page.locator("[role=status]").inner_text()
    # The plan form is not on his page; sent anyway (an old tab, a crafted form), authz refuses.
    resource = page.url.rsplit("/addons/", 1)[1].split("?")[0]
    page.evaluate(
        """([action]) => {
            const form = document.createElement('form');
            form.method = 'post'; form.action = action;
            const plan = document.createElement('input');
            plan.name = 'plan'; plan.value = 'basic'; form.appendChild(plan);
            document.body.appendChild(form); form.submit();
        }""",
        [f"/addons/{resource}/plan"],
    )
    page.wait_for_selector("#decision-id")
    assert "You may not do this: Change plan" in page.locator("h1").inner_text()
    assert "owner only" in page.locator("main").inner_text()
    decision_id = page.locator("#decision-id").inner_text()
    assert UUID.match(decision_id)
    # The id on the page names the audit record of that very refusal.
    [record] = [
        r
        for r in world.authz.query_decisions(action="addon.change_plan", limit=20)
        if r.decision_id == decision_id
    ]
    assert record.effect == "DENY"
    assert "plan-change-owners-only" in {m.rule_id for m in record.matched_rules}


def test_a_user_not_on_the_app_is_refused_with_a_readable_page(world: World, page: Any) -> None:
    open_from_heroku(page, world, "dave")
    assert "This login from Heroku was refused" in page.locator("h1").inner_text()
    assert page.locator("#refusal-code").inner_text() == "LOGIN_DENIED"
    assert "no owner, admin or collaborator role" in page.locator("main").inner_text()
    assert UUID.match(page.locator("#decision-id").inner_text())
    assert page.context.cookies() == []
    assert page.locator("#heroku-link").get_attribute("href") == f"{world.sim}/__sim/dashboard"


def test_a_replayed_form_is_refused(world: World, page: Any) -> None:
    world.fresh_second("carol")
    form = world.sim_json("GET", f"sso/{ACME}/carol/form")
    world.formed("carol")
    submit = auto_submit_page(f"{world.dashboard}/heroku/sso", form)
    page.set_content(submit)
    page.wait_for_url(f"{world.dashboard}/addons/*")
    assert "view" in functions(page)
    # The same form again, from another browser (someone who captured it): refused.
    other = page.context.browser.new_context()
    try:
        thief = other.new_page()
        thief.set_content(submit)
        thief.wait_for_selector("#refusal-code")
        assert thief.locator("#refusal-code").inner_text() == "SSO_REPLAYED"
        assert "refused" in thief.locator("h1").inner_text()
        assert other.cookies() == []
    finally:
        other.close()


def test_a_stale_form_is_refused(world: World, page: Any) -> None:
    stale = fixture_sso_form(ACME, "bob", dev_salt(), timestamp=int(time.time()) - 6 * 60)
    page.set_content(auto_submit_page(f"{world.dashboard}/heroku/sso", stale))
    page.wait_for_selector("#refusal-code")
    assert page.locator("#refusal-code").inner_text() == "SSO_STALE_TIMESTAMP"
    assert page.context.cookies() == []


def test_a_revoked_session_is_sent_back_to_heroku(world: World, page: Any) -> None:
    open_from_heroku(page, world, "bob")
    assert "view" in functions(page)
    [cookie] = page.context.cookies()
    assert world.authz.revoke_session(cookie["value"])
    page.reload()
    assert "open this add-on again from Heroku" in page.locator("h1").inner_text()
    assert page.context.cookies() == []


def test_a_deprovisioned_addon_sends_its_users_back_to_heroku(world: World, page: Any) -> None:
    open_from_heroku(page, world, "grace", app="globex-api")
    # A team member with deploy but not manage: no plan change, whatever the owners-only rule.
    assert functions(page) == {"view", "data", "settings"}
    resource_id = page.url.rsplit("/addons/", 1)[1]
    # What the partner's provisioning endpoint does when Heroku deprovisions the add-on.
    ended = world.authz.deprovision_addon(resource_id)
    assert ended.addon.state == "deprovisioned" and ended.sessions_revoked >= 1
    page.reload()
    assert "open this add-on again from Heroku" in page.locator("h1").inner_text()
    assert page.context.cookies() == []
    open_from_heroku(page, world, "grace", app="globex-api")
    assert page.locator("#refusal-code").inner_text() == "ADDON_DEPROVISIONED"


def test_removing_the_user_on_heroku_ends_their_access(world: World, page: Any) -> None:
    open_from_heroku(page, world, "carol")
    assert functions(page) == {"view", "data", "settings"}
    dashboard_url = page.url
    # On the simulator's page, remove carol from the app (Heroku sends the api:collaborator
    # webhook to authz, which drops the app's cached access list).
    sim_page = page.context.new_page()
    sim_page.goto(f"{world.sim}/__sim/dashboard")
    sim_page.click('#app-acme-billing tr[data-user="carol"] button.remove')
    sim_page.wait_for_selector('#app-acme-billing tr.outsider[data-user="carol"]')
    deadline = time.monotonic() + 10
    while not any(
        d["event"]["include"] == "api:collaborator" and d["status"] == "succeeded"
        for d in world.sim_json("GET", "webhooks")["deliveries"]
    ):
        assert time.monotonic() < deadline, "the collaborator webhook was not delivered"
        time.sleep(0.1)
    page.goto(dashboard_url)
    assert "open this add-on again from Heroku" in page.locator("h1").inner_text()
    assert page.locator("#heroku-link").get_attribute("href") == f"{world.sim}/__sim/dashboard"
    assert UUID.match(page.locator("#decision-id").inner_text())
    assert page.context.cookies() == []
    # Opening it again from Heroku is refused now: she is not on the app.
    open_from_heroku(page, world, "carol")
    assert "This login from Heroku was refused" in page.locator("h1").inner_text()
