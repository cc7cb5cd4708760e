"""The access-list cache against the real simulator: TTL, single-flight, refresh-ahead, faults,
backoff, invalidation, the 5-minute bound, and the fact policies see."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from authz.decide import access_fact
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.facts.access import AccessCache, AccessUnavailable, PlatformAccessFetcher
from authz.facts.heroku import AccessList, AppMember, PlatformClient
from authz.facts.oauth_tokens import OAuthTokenStore, TokenManager
from authz.store import open_database
from tests.clock import FakeClock

T = TypeVar("T")
KEY = "test-token-key-0123456789abcdef"
DEADLINE = 0.3


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture(), page_size=2) as s:
        yield s


@dataclass
class World:
    sim: HerokuSimulator
    clock: FakeClock
    cache: AccessCache
    acme: tuple[str, str]  # (app id, resource id)
    globex: tuple[str, str]

    def user(self, handle: str) -> str:
        return str(self.sim.user(handle)["id"])

    def fetches(self, app: tuple[str, str]) -> int:
        """Upstream fetch sequences started for an app (each begins with GET /addons/{id})."""
        return self.sim.count("GET", f"/addons/{app[1]}")


@asynccontextmanager
async def world(sim: HerokuSimulator, tmp_path: Path, **cache_args: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    async with PlatformClient(sim.base_url, sim.base_url, sim.client_secret, clock=clock) as c:
        manager = TokenManager(OAuthTokenStore(open_database(tmp_path / "t.db"), KEY), c, clock)
        apps = []
        for addon_name in ("authz-curved-12345", "authz-spherical-67890"):
            addon = sim.addon(addon_name)
            await manager.register_grant(addon["id"], sim.create_grant(addon["id"]))
            apps.append((addon["app"]["id"], addon["id"]))
        sim.reset_counters()
        cache_args.setdefault("ttl", 60.0)
        cache = AccessCache(PlatformAccessFetcher(c, manager), clock=clock, **cache_args)
        try:
            yield World(sim, clock, cache, apps[0], apps[1])
        finally:
            await cache.aclose()


async def get(w: World, app: tuple[str, str], deadline: float = DEADLINE) -> AccessList:
    return await w.cache.get(app[0], app[1], deadline=deadline)


async def settle(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Let background tasks run until condition holds (real time, bounded)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition never held"
        await asyncio.sleep(0.01)


def test_ttl_bounds() -> None:
    async def fetch(app_id: str, resource_id: str) -> AccessList:
        raise AssertionError("not called")

    AccessCache(fetch, ttl=300)
    bad_settings: list[dict[str, Any]] = [
        {"ttl": 301},
        {"ttl": 0},
        {"ttl": 60, "max_age": 301},
        {"ttl": 100, "max_age": 50},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            AccessCache(fetch, **bad)


def test_hit_then_ttl_expiry(sim: HerokuSimulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, ttl=60, refresh_ahead=1.0) as w:
            first = await get(w, w.acme)
            assert await get(w, w.acme) is first
            w.clock.advance(59.9)
            assert await get(w, w.acme) is first
            assert w.fetches(w.acme) == 1
            w.clock.advance(0.1)  # exactly ttl: expired
            second = await get(w, w.acme)
            assert second is not first and second.fetched_at == w.clock.now
            assert w.fetches(w.acme) == 2

    run(scenario)


def test_removed_collaborator_disappears_after_ttl_and_at_once_on_invalidate(
    sim: HerokuSimulator, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, ttl=60, refresh_ahead=1.0) as w:
            carol, bob = w.user("carol"), w.user("bob")
            assert carol in (await get(w, w.acme)).members
            sim.remove_collaborator("acme-billing", "carol")
            w.clock.advance(30)
            assert carol in (await get(w, w.acme)).members  # within TTL, as promised
            w.clock.advance(30)
            assert carol not in (await get(w, w.acme)).members  # after TTL, gone

            assert bob in (await get(w, w.acme)).members
            sim.remove_collaborator("acme-billing", "bob")
            assert w.cache.invalidate(w.acme[0]) is True
            assert bob not in (await get(w, w.acme)).members  # at once
            assert w.cache.invalidate("never-seen") is False

    run(scenario)


def test_cold_app_200_concurrent_gets_make_one_fetch_sequence(
    sim: HerokuSimulator, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path) as w:
            results = await asyncio.gather(*(get(w, w.globex, deadline=5) for _ in range(200)))
            assert all(r is results[0] for r in results)
            app_id, resource_id = w.globex
            team_id = results[0].team_id
            assert sim.counters()["requests"] == {
                f"GET /addons/{resource_id}": 1,
                f"GET /apps/{app_id}": 1,
                f"GET /apps/{app_id}/collaborators": 2,  # 3 collaborators, pages of 2
                f"GET /teams/{team_id}/members": 2,  # 3 members, pages of 2
            }

    run(scenario)


def test_refresh_ahead_refreshes_once_in_the_background(
    sim: HerokuSimulator, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, ttl=60, refresh_ahead=0.8) as w:
            first = await get(w, w.acme)
            w.clock.advance(47)
            assert await get(w, w.acme) is first and w.fetches(w.acme) == 1  # not yet due
            w.clock.advance(1)  # 48 s = 0.8 * ttl: due
            sim.add_fault("latency", seconds=0.5, path_prefix="/addons/", count=1)
            started = time.monotonic()
            served = await asyncio.gather(*(get(w, w.acme) for _ in range(50)))
            assert time.monotonic() - started < 0.2  # nobody waited for the slow refresh
            assert all(s is first for s in served)
            end = time.monotonic() + 3
            while (refreshed := await get(w, w.acme)) is first:  # served stale-free meanwhile
                assert time.monotonic() < end, "the background refresh never landed"
                await asyncio.sleep(0.01)
            assert w.fetches(w.acme) == 2  # exactly one background refresh
            assert refreshed.fetched_at == w.clock.now
            w.clock.advance(59)  # the refreshed entry lives from its own fetch time
            assert (await get(w, w.acme)) is not None

    run(scenario)


FAULTS: list[tuple[dict[str, Any], str]] = [
    ({"kind": "latency", "seconds": 3.0}, "deadline"),
    ({"kind": "error", "status": 503}, "upstream_error"),
    ({"kind": "rate_limit", "retry_after": 30}, "rate_limited"),
    ({"kind": "malformed"}, "bad_response"),
    ({"kind": "drop"}, "unreachable"),
]


@pytest.mark.parametrize(("fault", "reason"), FAULTS, ids=[f["kind"] for f, _ in FAULTS])
def test_fault_ends_in_access_unavailable_fast_while_fresh_apps_are_served(
    sim: HerokuSimulator, tmp_path: Path, fault: dict[str, Any], reason: str
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path) as w:
            warm = await get(w, w.globex)
            sim.add_fault(**fault)  # every upstream path

            async def failing() -> tuple[float, AccessUnavailable]:
                started = time.monotonic()
                with pytest.raises(AccessUnavailable) as caught:
                    await get(w, w.acme)
                return time.monotonic() - started, caught.value

            async def fresh() -> list[float]:
                times = []
                for _ in range(10):
                    started = time.monotonic()
                    assert await get(w, w.globex) is warm
                    times.append(time.monotonic() - started)
                    await asyncio.sleep(0.02)
                return times

            (elapsed, error), fresh_times = await asyncio.gather(failing(), fresh())
            assert elapsed < 1.5 * DEADLINE, elapsed
            assert reason in error.reason
            assert max(fresh_times) < 0.05
            for secret in (sim.client_secret,):
                assert secret not in error.reason

    run(scenario)


def test_backoff_limits_upstream_calls(sim: HerokuSimulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, backoff_base=1.0, backoff_cap=4.0) as w:
            sim.add_fault("error", status=500, path_prefix="/addons/")
            with pytest.raises(AccessUnavailable):
                await get(w, w.acme)
            assert w.fetches(w.acme) == 1
            for _ in range(20):  # inside the window: fail fast, no upstream call
                started = time.monotonic()
                with pytest.raises(AccessUnavailable) as caught:
                    await get(w, w.acme)
                assert time.monotonic() - started < 0.05
                assert "upstream_error" in caught.value.reason
                assert "not asking Heroku again" in caught.value.reason
            assert w.fetches(w.acme) == 1
            # Windows double: 1, 2, 4, then capped at 4.
            for window, calls in ((1, 2), (2, 3), (4, 4), (4, 5)):
                w.clock.advance(window - 0.01)
                with pytest.raises(AccessUnavailable):
                    await get(w, w.acme)
                assert w.fetches(w.acme) == calls - 1
                w.clock.advance(0.01)
                with pytest.raises(AccessUnavailable):
                    await get(w, w.acme)
                assert w.fetches(w.acme) == calls
            # Recovery resets the backoff.
            sim.clear_faults()
            w.clock.advance(4)
            assert w.user("alice") in (await get(w, w.acme)).members
            w.cache.invalidate(w.acme[0])
            assert w.user("alice") in (await get(w, w.acme)).members

    run(scenario)


def test_rate_limit_retry_after_is_honoured(sim: HerokuSimulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, backoff_cap=30.0) as w:
            sim.add_fault("rate_limit", retry_after=90, count=1)
            with pytest.raises(AccessUnavailable) as caught:
                await get(w, w.acme)
            assert caught.value.retry_after == 90
            w.clock.advance(89)
            with pytest.raises(AccessUnavailable):
                await get(w, w.acme)
            assert w.fetches(w.acme) == 1
            w.clock.advance(1)
            await get(w, w.acme)
            assert w.fetches(w.acme) == 2

    run(scenario)


def test_invalidate_during_a_fetch_in_flight_does_not_reinsert(
    sim: HerokuSimulator, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path) as w:
            sim.add_fault("latency", seconds=0.3, path_prefix="/apps/", count=1)
            early = asyncio.create_task(get(w, w.acme, deadline=2))
            await settle(lambda: w.fetches(w.acme) == 1)
            assert w.cache.invalidate(w.acme[0]) is False  # nothing cached yet
            await early  # the caller that was already waiting gets its answer
            assert len(w.cache) == 0  # ...but the cache did not keep it
            await get(w, w.acme)
            assert w.fetches(w.acme) == 2 and len(w.cache) == 1

    run(scenario)


@pytest.mark.parametrize("stale_if_error", [False, True])
def test_max_age_is_never_exceeded(
    sim: HerokuSimulator, tmp_path: Path, stale_if_error: bool
) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path, ttl=60, stale_if_error=stale_if_error, backoff_cap=10) as w:
            await get(w, w.acme)
            sim.add_fault("error", status=503)  # Heroku is down from now on
            served_ages = []
            for _ in range(60):
                w.clock.advance(7)
                try:
                    access = await get(w, w.acme, deadline=0.2)
                except AccessUnavailable:
                    continue
                age = w.clock.now - access.fetched_at
                served_ages.append(age)
                assert age < (300 if stale_if_error else 60)
            if stale_if_error:
                assert max(served_ages) > 280  # stale served while Heroku is down, to the limit
            else:
                assert max(served_ages) < 60
            with pytest.raises(AccessUnavailable):
                await get(w, w.acme)

    run(scenario)


def test_clock_going_backwards_refetches(sim: HerokuSimulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(sim, tmp_path) as w:
            await get(w, w.acme)
            w.clock.advance(-10)
            await get(w, w.acme)
            assert w.fetches(w.acme) == 2

    run(scenario)


# -- the fact policies see -------------------------------------------------------------------


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, str | bool | float | int)


def _listing(**members: tuple[tuple[str, ...], str | None]) -> AccessList:
    return AccessList(
        app_id="app-1",
        app_name="acme",
        team_id="team-1",
        owner_id="u-owner",
        fetched_at=1_800_000_000.0,
        members={
            uid: AppMember(uid, f"{uid}@example.com", roles, ("deploy", "view"), team_role)
            for uid, (roles, team_role) in members.items()
        },
    )


def test_access_fact_shapes() -> None:
    listing = _listing(
        u_owner=(("owner",), None),
        u_admin=(("member", "admin", "team_admin"), "admin"),
        u_team=(("team_member",), "member"),
        u_teamcollab=(("team_collaborator",), "collaborator"),
    )
    now = 1_800_000_012.5
    fact = access_fact(listing, "u_admin", now)
    assert fact == {
        "available": True,
        "app_id": "app-1",
        "user_id": "u_admin",
        "roles": ["member", "admin", "team_admin"],
        "role": "admin",
        "has_role": True,
        "team_role": "admin",
        "permissions": ["view", "deploy", "operate", "manage"],  # admins hold all four
        "fetched_at": "2027-01-15T08:00:00.000000Z",
        "age_seconds": 12.5,
        "error": "",
    }
    assert _plain(fact)
    assert access_fact(listing, "u_owner", now)["role"] == "owner"
    assert access_fact(listing, "u_team", now)["role"] == "team_member"
    assert access_fact(listing, "u_team", now)["permissions"] == ["view", "deploy"]  # as listed
    collab = access_fact(listing, "u_teamcollab", now)
    assert collab["role"] == "" and not collab["has_role"]
    assert collab["roles"] == ["team_collaborator"]
    stranger = access_fact(listing, "u_nobody", now)
    assert stranger["available"] and not stranger["has_role"] and stranger["roles"] == []
    assert stranger["permissions"] == [] and stranger["team_role"] == ""

    down = access_fact(None, "u_admin", now, "Heroku unreachable", app_id="app-1")
    assert down == {
        "available": False,
        "app_id": "app-1",
        "user_id": "u_admin",
        "roles": [],
        "role": "",
        "has_role": False,
        "team_role": "",
        "permissions": [],
        "fetched_at": "",
        "age_seconds": -1.0,
        "error": "Heroku unreachable",
    }
    assert _plain(down)
    assert access_fact(None, "u", now)["error"]  # never an empty reason when unavailable


def test_effective_app_permissions() -> None:
    """Heroku Enterprise app permissions as policies see them (facts/access.app_permissions)."""

    def member(uid: str, roles: tuple[str, ...], perms: tuple[str, ...]) -> AppMember:
        return AppMember(uid, f"{uid}@example.com", roles, perms)

    def perms(team_id: str | None, m: AppMember) -> list[str]:
        listing = AccessList("app-1", "acme", team_id, "u-owner", 0.0, {m.user_id: m})
        return list(access_fact(listing, m.user_id, 0.0)["permissions"])

    everything = ["view", "deploy", "operate", "manage"]
    assert perms("team-1", member("o", ("owner",), ())) == everything
    assert perms("team-1", member("a", ("team_admin",), ("view",))) == everything
    assert perms("team-1", member("v", ("collaborator",), ("view",))) == ["view"]
    assert perms("team-1", member("m", ("member",), ("manage", "view"))) == ["view", "manage"]
    assert perms("team-1", member("t", ("team_member",), ())) == []
    # Personal apps have no app permissions: their collaborators hold all four.
    assert perms(None, member("c", ("collaborator",), ())) == everything
    # A null role (no role) gets nothing even on a personal app.
    assert perms(None, member("n", (), ())) == []
