"""A development world: the Heroku simulator and an authz server wired to it, on loopback.

``authz dev up`` keeps one running in the foreground, with its data in a named folder, until
Ctrl-C (with ``--dashboard``, the example partner dashboard of examples/heroku-dashboard beside
them, opened from the simulator's ``/__sim/dashboard`` page); ``authz demo`` runs a scripted
partner against one in a temporary folder. Both use the
bundled simulator fixture (``heroku_fixture.yaml``): its add-on manifest's SSO salt is the
world's, so ``authz dev sso-form`` signs forms this world accepts and nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import uvicorn

from authz.client import AsyncAuthzClient, AuthzCallError, Registration, SessionResult
from authz.config import CallerToken, ConfigError, Settings, parse_host_port
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import provisioning_fields
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.app import Service, start_service
from authz.web.server import bind

DEV_TOKEN_KEY = "dev-token-encryption-key-local-only-0123456789"
"""Encrypts the simulator's OAuth tokens in the world's state store; development only."""
PERSONAL_ADDON = "authz-curved-12345"  # on acme-billing, a personal app
TEAM_ADDON = "authz-spherical-67890"  # on globex-api, an app of team globex
DEFAULT_DATA_DIR = Path("data/dev")
DEFAULT_DASHBOARD_DIR = Path("examples/heroku-dashboard")
LOCK_FILE = ".dev-up.lock"


class DevWorldError(Exception):
    """The world cannot start; the message says what to change."""


@dataclass
class DevWorld:
    sim: HerokuSimulator
    service: Service

    @property
    def settings(self) -> Settings:
        return self.service.settings

    async def provision(self, client: AsyncAuthzClient, addon: str) -> Registration:
        """Register `addon` as Heroku's provisioning call would, with a fresh OAuth grant."""
        return await client.register_addon(**provisioning_fields(self.sim, addon))


@contextlib.asynccontextmanager
async def dev_world(
    data_dir: Path,
    policy_dir: Path,
    *,
    listen: str = "127.0.0.1:0",
    http_listen: str | None = None,
    heroku_listen: str = "127.0.0.1:0",
    callers: tuple[CallerToken, ...] = (),
    admins: frozenset[str] = frozenset(),
    reviewers: frozenset[str] = frozenset(),
    watch_interval: float | None = None,
    webhooks: bool = False,
) -> AsyncIterator[DevWorld]:
    """Start the simulator and a server wired to it (its Platform API, OAuth and SSO salt);
    without `callers` the server is in development mode. With `webhooks` (and `http_listen`)
    add-ons registered subscribe to the simulator's webhooks, so a change of people on an app
    reaches authz at once. Both stop on leaving."""
    host, port = parse_host_port(heroku_listen, "--heroku-listen")
    sim = HerokuSimulator(load_fixture(), host=host, port=port)
    try:
        sim.start()
    except OSError as exc:
        raise DevWorldError(
            f"the Heroku simulator cannot listen on {heroku_listen}: {exc}"
        ) from None
    try:
        settings = Settings(
            listen=listen,
            http_listen=http_listen,
            policy_dir=policy_dir,
            data_dir=data_dir,
            sso_salts=(sim.sso_salt,),
            heroku_api_url=sim.base_url,
            heroku_id_url=sim.base_url,
            heroku_client_secret=sim.client_secret,
            token_key=DEV_TOKEN_KEY,
            caller_tokens=callers,
            admins=admins,
            reviewers=reviewers,
            public_url=public_url(http_listen) if webhooks and http_listen else None,
        )
        service = await start_service(settings, watch_interval=watch_interval)
        try:
            yield DevWorld(sim, service)
        finally:
            await service.stop(grace=2)
    finally:
        sim.stop()


def public_url(http_listen: str) -> str:
    """Where the simulator delivers webhooks: the HTTP listener (port 0: its bound port)."""
    host, _ = parse_host_port(http_listen, "--http-listen")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "localhost") else host
    return f"http://{f'[{host}]' if ':' in host else host}:0"


# -- the example partner dashboard (authz dev up --dashboard) ----------------------------------


def load_dashboard(example_dir: Path) -> ModuleType:
    """examples/heroku-dashboard/dashboard.py, imported from its file (it is not a package of
    authz: it is what a partner writes, using only authz.client)."""
    path = example_dir / "dashboard.py"
    if not path.is_file():
        raise DevWorldError(
            f"no example dashboard at {path}: run this from the repository's root or give "
            "--dashboard-dir DIR"
        )
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise DevWorldError(
            "the example dashboard renders its pages with Jinja2: pip install 'authz[dashboard]'"
        ) from None
    spec = importlib.util.spec_from_file_location("heroku_dashboard_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


class _DashboardServer(uvicorn.Server):
    """uvicorn without its own signal handling: `dev up` owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def example_dashboard(world: DevWorld, listen: str, module: ModuleType) -> AsyncIterator[str]:
    """Serve the example dashboard (`module`, from load_dashboard) against `world` on `listen`
    and point the simulator's "open add-on" button (the manifest's sso_url) at it; yields its
    URL."""
    settings = module.DashboardSettings(
        authz_target=world.service.address,
        heroku_dashboard_url=f"{world.sim.base_url}/__sim/dashboard",
    )
    sock: socket.socket = bind(listen)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        module.create_app(settings), log_config=None, access_log=False, lifespan="on"
    )
    server = _DashboardServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise DevWorldError(f"the example dashboard stopped while starting on {listen}")
        await asyncio.sleep(0.02)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    world.sim.set_manifest(sso_url=f"{url}{module.SSO_PATH}")
    try:
        yield url
    finally:
        server.should_exit = True
        await task


# -- authz dev sso-form --------------------------------------------------------------------------


def dev_salt() -> str:
    """The SSO salt of the bundled fixture's add-on manifest: the one `dev up` serves with."""
    return HerokuSimulator(load_fixture()).sso_salt


def fixture_sso_form(
    addon: str,
    user: str,
    salt: str,
    *,
    email: str | None = None,
    timestamp: int | None = None,
    token: str = "both",
) -> dict[str, str]:
    """A signed SSO form. `addon` is a fixture add-on's name or id, or any resource id; `user` a
    fixture user's handle or id, or any user id when `email` is given."""
    sim = HerokuSimulator(load_fixture())  # not started: only its world is read
    app = ""
    try:
        info = sim.addon(addon)
        resource_id, app = info["id"], info["app"]["name"]
    except LookupError:
        resource_id = addon
    try:
        known = sim.user(user)
        user_id, known_email = known["id"], known["email"]
    except LookupError:
        if email is None:
            raise DevWorldError(
                f"{user!r} is no user of the simulator's fixture; give the user's id with --email"
            ) from None
        user_id, known_email = user, email
    return heroku_sso_form(
        resource_id,
        user_id,
        email or known_email,
        salt,
        timestamp=timestamp,
        app=app,
        token=token,
    )


# -- authz dev up --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevUp:
    """What `authz dev up` was asked for; `program` is how the printed commands call authz."""

    data_dir: Path = DEFAULT_DATA_DIR
    policy_dir: Path = Path("policies")
    listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    heroku_listen: str = "127.0.0.1:0"
    program: str = "authz"
    dashboard: bool = False
    dashboard_listen: str = "127.0.0.1:8090"
    dashboard_dir: Path = DEFAULT_DASHBOARD_DIR


@dataclass(frozen=True)
class Prepared:
    """What `dev up` did in the world before handing it over."""

    addons: dict[str, Registration]
    sessions: dict[str, SessionResult]  # by user handle
    refused: AuthzCallError  # dave's login: he has left acme-billing


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """One `dev up` per folder: a second one would interleave two audit writers' chains."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise DevWorldError(
                f"{data_dir} is in use by another `authz dev up` (pid {holder}); stop it, or "
                "give this one another folder with --data"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


async def prepare(world: DevWorld, client: AsyncAuthzClient) -> Prepared:
    """Provision both add-ons, open alice's and erin's sessions, and have dave refused."""
    addons = {name: await world.provision(client, name) for name in (PERSONAL_ADDON, TEAM_ADDON)}
    sessions = {
        user: await _log_in(world, client, addon, user)
        for user, addon in (("alice", PERSONAL_ADDON), ("erin", TEAM_ADDON))
    }
    try:
        await _log_in(world, client, PERSONAL_ADDON, "dave")
    except AuthzCallError as refused:
        return Prepared(addons, sessions, refused)
    raise DevWorldError(
        "dave, who has left acme-billing, was let in: the policies are not the shipped ones"
    )


async def _log_in(
    world: DevWorld, client: AsyncAuthzClient, addon: str, user: str
) -> SessionResult:
    """An SSO login through a form the simulator signs now. Heroku's form is a function of the
    second it is signed in, so a run started within the second of the last run's logins (same
    folder, same replay guard) gets the very form that was used: refused as replayed. Then it
    signs another in the next second, as a user opening the add-on again would."""
    try:
        return await client.exchange_sso(world.sim.sso_form(addon, user))
    except AuthzCallError as refused:
        if refused.code != "SSO_REPLAYED":
            raise
    await asyncio.sleep(1.05 - time.time() % 1.0)
    return await client.exchange_sso(world.sim.sso_form(addon, user))


def _people(state: dict[str, Any], app_id: str) -> str:
    handles = {u["id"]: u["handle"] or u["email"] for u in state["users"]}
    app = next(a for a in state["apps"] if a["id"] == app_id)
    people = []
    for c in app["collaborators"]:
        permissions = "/".join(p["name"] for p in c["permissions"])
        people.append(
            f"{handles[c['user']['id']]} ({c['role']}{': ' if permissions else ''}{permissions})"
        )
    line = ", ".join(people)
    if app["team"]:
        team = next(t for t in state["teams"] if t["id"] == app["team"]["id"])
        members = ", ".join(f"{handles[m['user']['id']]} ({m['role']})" for m in team["members"])
        line += f"; team {team['name']}: {members}"
    return line


def banner(
    world: DevWorld, prepared: Prepared, options: DevUp, dashboard_url: str | None = None
) -> str:
    """What `dev up` prints once the world is ready: where everything is, and commands to paste."""
    service, sim = world.service, world.sim
    data = options.data_dir.resolve()
    authz = options.program
    server = f"--server {service.address}"
    http = f"http://{service.http.address}" if service.http else "(off)"
    acme = prepared.addons[PERSONAL_ADDON].addon
    globex = prepared.addons[TEAM_ADDON].addon
    alice, erin = prepared.sessions["alice"], prepared.sessions["erin"]
    state = sim.state()
    in_data = f"AUTHZ_DATA_DIR={shlex.quote(str(data))}"
    lines = [
        f"authz dev up: a development world, its data in {data}",
        "  (run it again to go on with the same data; delete the folder to start afresh)",
        "",
        f"  Heroku simulator   {sim.base_url}   (Platform API, OAuth, admin API under /__sim/)",
        f"  authz gRPC         {service.address}   (development mode: no caller credentials)",
        f"  authz HTTP         {http}   (GET /healthz, /readyz)",
        f"  policies           {world.settings.policy_dir.resolve()}, revision "
        f"{service.policies.current.revision} (edits are picked up within a second)",
    ]
    if dashboard_url:
        lines += [
            f"  example dashboard  {dashboard_url}   (examples/heroku-dashboard, SSO URL "
            "/heroku/sso)",
            f"  open it as Heroku  {sim.base_url}/__sim/dashboard   (a browser page: one "
            '"Open" link per user and add-on)',
        ]
    lines += [
        "",
        "Provisioned as Heroku does it (with an OAuth grant), and who is who on Heroku:",
    ]
    for registration in (acme, globex):
        kind = "team app" if registration is globex else "personal app"
        lines.append(f"  addon:{registration.resource_id}  on {kind} {registration.app_name}")
        lines.append(f"      {_people(state, registration.app_id)}")
    lines += [
        "",
        f"Logged in by Heroku SSO: alice on {acme.app_name}, erin on {globex.app_name}; dave "
        f"(he left {acme.app_name}) was refused: {prepared.refused.code}.",
        "",
        "Paste these into another terminal:",
        "",
        f"  # alice, owner of {acme.app_name}, opens its dashboard",
        f"  {authz} check {server} --session {alice.session_token} "
        f"--action dashboard.view --resource addon:{acme.resource_id}   # ALLOW",
        f"  # erin's session is for {globex.app_name}'s add-on, not {acme.app_name}'s",
        f"  {authz} check {server} --session {erin.session_token} "
        f"--action dashboard.view --resource addon:{acme.resource_id}   # DENY",
        f"  # erin, admin of team globex, changes {globex.app_name}'s plan",
        f"  {authz} check {server} --session {erin.session_token} "
        f"--action addon.change_plan --resource addon:{globex.resource_id}   # ALLOW",
        f"  # log carol (a collaborator on {acme.app_name}) in yourself, then ask for her",
        f"  SESSION=$({authz} dev sso-form --addon {PERSONAL_ADDON} --user carol "
        f"| {authz} session exchange {server} --form - --token-only)",
        f'  {authz} check {server} --session "$SESSION" '
        f"--action dashboard.view --resource addon:{acme.resource_id}   # ALLOW",
        f'  {authz} check {server} --session "$SESSION" '
        f"--action account.change_password --resource addon:{acme.resource_id}   # DENY",
        "  # why dave was refused, and every decision so far (the audit log)",
        f"  {in_data} {authz} audit show {prepared.refused.decision_id}",
        f"  {in_data} {authz} audit query --since 1h",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


async def dev_up(options: DevUp, out: TextIO = sys.stdout) -> None:
    """Run the world until SIGINT or SIGTERM. Idempotent on the same folder: add-ons are
    registered again (nothing changes but fresh OAuth tokens), earlier sessions stay valid
    until they expire, and the audit log goes on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not options.policy_dir.is_dir():
        raise DevWorldError(
            f"no policy directory at {options.policy_dir}: run this from the repository's root "
            "or give --policies DIR"
        )
    # Loaded before anything starts, so that a missing example or Jinja2 is said at once.
    dashboard = load_dashboard(options.dashboard_dir) if options.dashboard else None
    with exclusive(options.data_dir):
        try:
            world_context = dev_world(
                options.data_dir,
                options.policy_dir,
                listen=options.listen,
                http_listen=options.http_listen,
                heroku_listen=options.heroku_listen,
                watch_interval=1.0,
                webhooks=options.dashboard,
            )
            async with world_context as world, contextlib.AsyncExitStack() as stack:
                async with AsyncAuthzClient(world.service.address) as client:
                    prepared = await prepare(world, client)
                dashboard_url = None
                if dashboard is not None:
                    dashboard_url = await stack.enter_async_context(
                        example_dashboard(world, options.dashboard_listen, dashboard)
                    )
                print(banner(world, prepared, options, dashboard_url), file=out, flush=True)
                await stop.wait()
                print("stopping the server and the simulator...", file=out, flush=True)
        except (ConfigError, OSError) as exc:
            raise DevWorldError(
                f"{exc} (give other addresses with --listen, --http-listen, --heroku-listen, "
                "--dashboard-listen; 127.0.0.1:0 picks a free port)"
            ) from None
