"""Issue 12 item 13: expired sessions are deleted on a schedule, and an add-on's OAuth tokens are
deleted when it is deprovisioned; on SQLite and on PostgreSQL, through a real server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.facts.heroku import PlatformClient, PlatformError
from authz.facts.oauth_tokens import OAuthTokenStore, TokenManager
from authz.facts.replay import RETENTION, ReplayGuard
from authz.facts.sessions import SessionStore
from authz.server.app import start_service
from authz.store import MIGRATIONS, Database, migrate
from authz.v1 import admin_pb2
from tests.clock import FakeClock
from tests.conftest import LoopThread, RecordingHandler, RunningService
from tests.heroku_world import TOKEN_KEY, World, world_settings
from tests.pg import Backend, count

ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"
RID = "01234567-89ab-cdef-0123-456789abcdef"


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


def state_of(settings: Settings, backend: Backend) -> Database:
    """Another connection to the server's state store (its SQLite file, or the shared database)."""
    if backend.name == "sqlite":
        return Backend("sqlite", str(settings.data_dir / "state.db"), backend.opened).open()
    return backend.open()


def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- expired sessions ------------------------------------------------------------------------


def test_the_server_deletes_expired_sessions_on_a_schedule(
    any_backend_settings: Settings,
    backend: Backend,
    loop_thread: LoopThread,
    root_log: RecordingHandler,
) -> None:
    clock = FakeClock(time.time())
    settings = any_backend_settings
    service = loop_thread.run(start_service(settings, clock=clock, purge_interval=0.05))
    try:
        db = state_of(settings, backend)
        short = SessionStore(db, clock, ttl=60)
        expiring, _ = short.issue("user-1", RID, "", token_kind="sha256")
        revoked, _ = short.issue("user-2", RID, "", token_kind="sha1")
        assert short.revoke(revoked)
        live, live_session = SessionStore(db, clock, ttl=3600).issue(
            "user-3", RID, "", token_kind="sha256"
        )
        assert ReplayGuard(db, clock).claim("form-key", clock() + 300)
        assert count(db, "sessions") == 3
        clock.advance(RETENTION + 1)  # past both short sessions and the replay key
        assert eventually(lambda: count(db, "sessions") == 1)
        assert eventually(lambda: count(db, "sso_replay") == 0)
        assert short.resolve(live) == live_session

        # A failing round (the table away) is logged and the next round works again.
        db.execute("ALTER TABLE sessions RENAME TO sessions_away")
        assert eventually(
            lambda: any(
                "purging expired sessions failed" in line
                for line in root_log.at_least(logging.WARNING)
            )
        )
        db.execute("ALTER TABLE sessions_away RENAME TO sessions")
        clock.advance(3600)
        assert eventually(lambda: count(db, "sessions") == 0)
    finally:
        loop_thread.run(service.stop(grace=1))


# --- OAuth tokens at deprovisioning -----------------------------------------------------------


def test_deprovisioning_deletes_the_addons_oauth_tokens(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    any_backend_settings: Settings,
    backend: Backend,
) -> None:
    settings = world_settings(any_backend_settings, sim)
    world = World(sim, start(settings))
    acme, globex = world.provision(ACME), world.provision(GLOBEX)
    db = state_of(settings, backend)
    assert count(db, "heroku_oauth_tokens") == 2
    request = admin_pb2.DeprovisionAddonRequest(resource_id=acme)
    reply = world.admin.DeprovisionAddon(request)
    assert reply.addon.state == "deprovisioned" and not reply.addon.has_oauth_tokens
    rows = db.execute("SELECT resource_id FROM heroku_oauth_tokens").rows
    assert rows == [(globex,)]
    # Heroku may deliver the DELETE again: it still succeeds.
    assert world.admin.DeprovisionAddon(request).addon.state == "deprovisioned"

    # Restarted without Platform API credentials, the server still deletes the tokens an
    # earlier configuration stored.
    world.svc.stop()
    world.svc.stop = lambda: None  # type: ignore[method-assign]  # the fixture stops it too
    again = World(sim, start(replace(settings, heroku_client_secret="", token_key="")))
    again.admin.DeprovisionAddon(admin_pb2.DeprovisionAddonRequest(resource_id=globex))
    assert count(db, "heroku_oauth_tokens") == 0


def test_a_refresh_under_way_does_not_bring_deleted_tokens_back(
    sim: HerokuSimulator, backend: Backend
) -> None:
    resource = sim.addon(ACME)["id"]
    store = OAuthTokenStore(backend.open(), TOKEN_KEY)

    async def scenario() -> PlatformError:
        client = PlatformClient(sim.base_url, sim.base_url, sim.client_secret)
        try:
            manager = TokenManager(store, client)
            await manager.register_grant(resource, sim.create_grant(resource))
            sim.add_fault("latency", path_prefix="/oauth/token", seconds=0.5, count=1)
            refresh = asyncio.create_task(manager.on_unauthorized(resource))
            await asyncio.sleep(0.2)  # the refresh is waiting for Heroku
            assert store.delete(resource)  # the add-on is deprovisioned meanwhile
            with pytest.raises(PlatformError) as caught:
                await refresh
            return caught.value
        finally:
            await client.aclose()

    error = asyncio.run(scenario())
    assert error.failure == "no_tokens" and "deprovisioned" in error.message
    assert not store.has(resource)


def test_migration_forgets_tokens_of_addons_deprovisioned_earlier(backend: Backend) -> None:
    db = backend.open()
    migrate(db, tuple(m for m in MIGRATIONS if m.version <= 4))  # an older release's schema
    for resource_id, state in ((RID, "deprovisioned"), (RID.replace("0", "a"), "provisioned")):
        db.execute(
            "INSERT INTO addons (resource_id, app_id, app_name, plan, region, state, created_at, "
            "updated_at) VALUES (?, 'app', 'app', 'basic', 'us', ?, 0, 0)",
            (resource_id, state),
        )
        db.execute(
            "INSERT INTO heroku_oauth_tokens (resource_id, key_id, nonce, ciphertext, expires_at, "
            "updated_at) VALUES (?, 'k', ?, ?, 0, 0)",
            (resource_id, b"n" * 12, b"sealed"),
        )
    assert 6 in migrate(db)
    assert db.execute("SELECT resource_id FROM heroku_oauth_tokens").rows == [
        (RID.replace("0", "a"),)
    ]
