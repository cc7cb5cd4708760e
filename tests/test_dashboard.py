"""The example partner dashboard's HTTP edges, and the client call its menu rests on
(``AuthzClient.list_allowed_actions``), against `authz dev up --dashboard` (real servers on
loopback, the Heroku simulator, the shipped policies). What a user sees in a browser is in
test_dashboard_browser.py.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from authz.client import AuthzClient, Resource
from authz.devtools.dev_world import DEFAULT_DASHBOARD_DIR, load_dashboard
from tests.binary import DevUp, authz
from tests.conftest import ROOT

ACME = "authz-curved-12345"  # acme-billing: alice owns it, bob and carol are collaborators
EVERY_DASHBOARD_ACTION = (
    "session.login",
    "dashboard.view",
    "dashboard.configure",
    "addon.read_data",
    "addon.change_plan",
)


class World:
    def __init__(self, up: DevUp) -> None:
        self.up = up
        self.sim = up.value("Heroku simulator")
        self.dashboard = up.value("example dashboard")
        self.authz = AuthzClient(up.address)
        self.resource_id = httpx.get(f"{self.sim}/__sim/sso/{ACME}/bob/form").json()["resource_id"]
        self._last_form: dict[str, int] = {}

    def form(self, user: str) -> dict[str, str]:
        """Heroku's SSO form for `user` on acme's add-on, never the same form twice (two forms of
        one user within one second are one form: a replay)."""
        while int(time.time()) <= self._last_form.get(user, 0):
            time.sleep(0.05)
        form = httpx.get(f"{self.sim}/__sim/sso/{ACME}/{user}/form", timeout=10).json()
        self._last_form[user] = int(form["timestamp"])
        return form

    def login(self, user: str, base: str | None = None, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{base or self.dashboard}/heroku/sso", data=self.form(user), headers=headers
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("dashboard-http") / "dev"
    free = ("--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
    up = DevUp([*free, "--dashboard", "--dashboard-listen", "127.0.0.1:0", "--data", str(data)])
    world = World(up)
    try:
        yield world
    finally:
        world.authz.close()
        assert up.stop(signal.SIGINT) == 0, up.stderr
        assert "Traceback" not in up.stderr, up.stderr


def test_list_allowed_actions_answers_for_the_catalogue_or_the_actions_asked(
    world: World,
) -> None:
    session = world.authz.exchange_sso(world.form("bob"))
    addon = Resource("addon", world.resource_id)
    everything = world.authz.list_allowed_actions(addon, session=session.session_token)
    # bob is a collaborator of a personal app: every permission, hence every dashboard action.
    assert everything.actions == EVERY_DASHBOARD_ACTION
    assert len(everything.decisions) == 15  # the whole catalogue, each decided and audited
    assert "billing.update" not in everything
    billing = everything.decision("billing.update")
    assert billing is not None and billing.effect == "DENY" and billing.decision_id
    asked = world.authz.list_allowed_actions(
        addon, ["billing.update", "dashboard.view"], session=session.session_token
    )
    assert asked.actions == ("dashboard.view",)
    assert [d.action for d in asked.decisions] == ["billing.update", "dashboard.view"]
    assert asked.decision("addon.change_plan") is None
    with pytest.raises(ValueError, match="list of action names"):
        world.authz.list_allowed_actions(addon, "dashboard.view", session="x")


def test_the_sso_url_keeps_only_the_session_token_in_a_locked_down_cookie(world: World) -> None:
    reply = world.login("carol")
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/addons/{world.resource_id}"
    [cookie] = reply.headers.get_list("set-cookie")
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    name, value = name_value.split("=", 1)
    assert name == "authz_session" and value.startswith("azs_")
    flags = {a.split("=")[0].lower(): a.partition("=")[2] for a in attributes}
    assert "httponly" in flags and flags["samesite"].lower() == "lax" and flags["path"] == "/"
    assert "secure" not in flags  # plain HTTP on loopback: a Secure cookie would never return
    assert 0 < int(flags["max-age"]) <= 24 * 3600
    # The cookie opens the dashboard; the email shown is the form's, for display only.
    page = httpx.get(f"{world.dashboard}{reply.headers['location']}", cookies={name: value})
    assert page.status_code == 200 and "carol@contractor.example" in page.text
    assert page.headers["cache-control"] == "no-store"
    # The site's root leads back to the session's add-on, or says to come from Heroku.
    home = httpx.get(f"{world.dashboard}/", cookies={name: value})
    assert home.status_code == 303 and home.headers["location"] == reply.headers["location"]
    stranger = httpx.get(f"{world.dashboard}/")
    assert stranger.status_code == 403 and "open this add-on again from Heroku" in stranger.text


def test_sso_posts_that_are_not_heroku_forms_are_refused_saying_why(world: World) -> None:
    sso = f"{world.dashboard}/heroku/sso"
    as_json = httpx.post(sso, json=world.form("bob"))
    assert as_json.status_code == 400 and "URL-encoded" in as_json.text
    twice = httpx.post(
        sso,
        content="resource_id=a&resource_id=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert twice.status_code == 400 and "&#39;resource_id&#39; twice" in twice.text
    empty = httpx.post(sso, data={"user_id": "x"})
    assert empty.status_code == 400
    assert "This login from Heroku was refused" in empty.text
    assert "set-cookie" not in empty.headers
    assert httpx.get(sso).status_code == 405


def test_changes_ask_authz_and_refuse_without_session_from_elsewhere_or_with_bad_input(
    world: World,
) -> None:
    login = world.login("bob")
    cookies = dict(login.cookies)
    addon = f"{world.dashboard}/addons/{world.resource_id}"
    origin = {"origin": world.dashboard}

    saved = httpx.post(
        f"{addon}/settings", data={"retention_days": "45"}, cookies=cookies, headers=origin
    )
    assert saved.status_code == 303 and saved.headers["location"].endswith("?done=settings")
    assert "45 days" in httpx.get(addon, cookies=cookies).text

    cross_site = httpx.post(
        f"{addon}/settings",
        data={"retention_days": "7"},
        cookies=cookies,
        headers={"origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403 and "another site" in cross_site.text
    bad = httpx.post(
        f"{addon}/settings", data={"retention_days": "0"}, cookies=cookies, headers=origin
    )
    assert bad.status_code == 400 and "from 1 to 365" in bad.text
    assert "45 days" in httpx.get(addon, cookies=cookies).text  # neither changed anything

    # An account function: never drawn for SSO users; posted anyway, authz says no, with the id.
    assert "Change password" not in httpx.get(addon, cookies=cookies).text
    password = httpx.post(f"{addon}/password", cookies=cookies, headers=origin)
    assert password.status_code == 403
    assert "You may not do this: Change password" in password.text
    assert 'id="decision-id"' in password.text and "never changes usernames" in password.text

    assert httpx.post(f"{addon}/nothing", cookies=cookies, headers=origin).status_code == 404
    no_session = httpx.post(f"{addon}/settings", data={"retention_days": "9"}, headers=origin)
    assert no_session.status_code == 403 and "open this add-on again from Heroku" in (
        no_session.text
    )
    assert httpx.get(addon).status_code == 403
    # Another add-on than the session's: authz refuses, and the user is sent back to Heroku.
    other = httpx.get(f"{world.dashboard}/addons/not-this-addon", cookies=cookies)
    assert other.status_code == 403 and "open this add-on again from Heroku" in other.text
    assert "only for the add-on it was issued for" in other.text


@contextmanager
def example_on_its_own(authz_target: str) -> Iterator[str]:
    """The example as it runs on Heroku: its own uvicorn, trusting the router's
    X-Forwarded-Proto (here from loopback), talking to authz at `authz_target`."""
    module: Any = load_dashboard(ROOT / DEFAULT_DASHBOARD_DIR)
    app = module.create_app(module.DashboardSettings(authz_target=authz_target))
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, proxy_headers=True, forwarded_allow_ips="127.0.0.1", log_config=None)
    )
    # In its own thread uvicorn leaves signals alone (they are the main thread's).
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the example did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_over_tls_the_cookie_is_secure_and_bound_to_the_host(world: World) -> None:
    with example_on_its_own(world.up.address) as url:
        reply = world.login("carol", url, **{"x-forwarded-proto": "https"})
    assert reply.status_code == 303
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("__Host-authz_session=azs_")
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "; Path=/" in cookie


def test_without_authz_nothing_is_shown_or_changed(world: World) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        nobody = f"127.0.0.1:{closed.getsockname()[1]}"
    cookies = dict(world.login("bob").cookies)
    with example_on_its_own(nobody) as url:
        page = httpx.get(f"{url}/addons/{world.resource_id}", cookies=cookies, timeout=30)
        assert page.status_code == 503 and "cannot check your access" in page.text
        assert "Settings" not in page.text
        change = httpx.post(
            f"{url}/addons/{world.resource_id}/settings",
            data={"retention_days": "5"},
            cookies=cookies,
            timeout=30,
        )
        assert change.status_code == 503 and "Nothing was changed" in change.text
        login = world.login("carol", url)
        assert login.status_code == 503 and "set-cookie" not in login.headers


def test_dev_up_says_where_the_example_should_be_when_it_is_missing(tmp_path: Path) -> None:
    missing = authz(
        "dev",
        "up",
        "--dashboard",
        "--dashboard-dir",
        str(tmp_path / "nowhere"),
        "--data",
        str(tmp_path / "dev"),
        timeout=60,
    )
    assert missing.returncode == 1
    assert f"no example dashboard at {tmp_path / 'nowhere' / 'dashboard.py'}" in missing.stderr
    assert "--dashboard-dir" in missing.stderr
