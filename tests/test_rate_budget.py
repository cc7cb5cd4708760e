"""Many busy apps sharing one Heroku rate-limit pool: the access cache stretches its TTL toward
(never past) 300 s as ``RateLimit-Remaining`` falls, so decisions keep flowing.

200 personal apps, each with its own add-on and token, are checked continuously through a real
AccessCache, PlatformClient and TokenManager against the simulator, on a shared settable clock
(simulated time: the simulator refills its pool continuously by that clock). Each fetch costs 3
calls (add-on, app, collaborators), so 200 apps cost 600 calls per TTL: at the default TTL of 60 s
that is 10 calls a second, at 300 s about 2. The pool is 9000 an hour (2.5 a second; Heroku's
default is 4500, raised on request): enough for 200 apps only if the cache stretches its TTL.
Each run starts with 2000 tokens left, as if the partner's other processes had spent the rest.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.devtools.heroku_sim import HerokuSimulator
from authz.facts.access import MAX_AGE, AccessCache, AccessUnavailable, PlatformAccessFetcher
from authz.facts.heroku import PlatformClient
from authz.facts.oauth_tokens import OAuthTokenStore, TokenManager
from authz.store import open_database
from tests.clock import FakeClock

APPS = 200
KEY = "test-token-key-0123456789abcdef"
STEP = 3.0  # simulated seconds between rounds of checks
POOL = 9000
LEFT_AT_START = 2000


def busy_world(apps: int) -> dict[str, Any]:
    owner = {"handle": "owner", "id": str(uuid.uuid4()), "email": "owner@example.com"}
    fixture: dict[str, Any] = {
        "oauth": {"client_secret": "budget-test-secret"},
        "users": [owner],
        "apps": [],
        "addons": [],
    }
    for i in range(apps):
        app_id, addon_id = str(uuid.uuid4()), str(uuid.uuid4())
        fixture["apps"].append(
            {
                "id": app_id,
                "name": f"busy-app-{i:03d}",
                "owner": "owner",
                "collaborators": [{"user": "owner", "role": "owner"}],
            }
        )
        fixture["addons"].append({"id": addon_id, "name": f"authz-busy-{i:03d}", "app": app_id})
    return fixture


@dataclass
class Run:
    unavailable: int  # checks that got AccessUnavailable
    first_unavailable_at: float | None  # simulated seconds after the start
    oldest: float  # the oldest access list any check was given, in seconds
    fetches: list[int]  # fetch sequences started per round
    budget_low: int  # the lowest pool level seen
    max_ttl: float


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[HerokuSimulator]:
    with HerokuSimulator(busy_world(APPS), clock=clock, rate_limit=POOL) as s:
        yield s


async def checks(
    sim: HerokuSimulator, clock: FakeClock, tmp_path: Path, seconds: float, **cache_args: Any
) -> Run:
    async with PlatformClient(sim.base_url, sim.base_url, sim.client_secret, clock=clock) as c:
        manager = TokenManager(OAuthTokenStore(open_database(tmp_path / "t.db"), KEY), c, clock)
        apps = []
        for addon in sim.state()["addons"]:
            await manager.register_grant(addon["id"], sim.create_grant(addon["id"]))
            apps.append((addon["app"]["id"], addon["id"]))
        sim.reset_rate_limits(LEFT_AT_START)
        sim.reset_counters()
        cache = AccessCache(
            PlatformAccessFetcher(c, manager),
            ttl=60,
            clock=clock,
            rng=random.Random(7),
            **cache_args,
        )
        start = clock.now
        run = Run(0, None, 0.0, [], sim.rate_limit_remaining(), 0.0)
        try:
            while clock.now - start < seconds:
                before = sim.count("GET", "/addons/")
                for app_id, resource_id in apps:
                    try:
                        access = await cache.get(app_id, resource_id, deadline=5)
                    except AccessUnavailable:
                        run.unavailable += 1
                        if run.first_unavailable_at is None:
                            run.first_unavailable_at = clock.now - start
                        continue
                    run.oldest = max(run.oldest, clock.now - access.fetched_at)
                # Let refresh-ahead fetches started this round finish before time moves on.
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                await asyncio.gather(*others, return_exceptions=True)
                run.fetches.append(sim.count("GET", "/addons/") - before)
                run.budget_low = min(run.budget_low, sim.rate_limit_remaining())
                run.max_ttl = max(run.max_ttl, cache.effective_ttl)
                if run.unavailable and cache_args.get("max_age") == 60:
                    break  # the comparison run has shown what it needed to
                clock.advance(STEP)
        finally:
            await cache.aclose()
        return run


def test_decisions_keep_flowing_while_the_shared_budget_lasts(
    sim: HerokuSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    run = asyncio.run(checks(sim, clock, tmp_path, seconds=1200))
    assert run.unavailable == 0  # not one check refused for want of an access list
    assert run.budget_low > 0  # ... and the pool never ran dry
    assert run.oldest <= MAX_AGE  # never an entry older than 300 s
    assert 200 < run.max_ttl <= MAX_AGE  # the TTL did stretch as the pool fell
    # Refreshes are spread out: once stretched, entries do not all expire in the same round.
    late = run.fetches[len(run.fetches) // 2 :]
    assert max(late) < APPS // 2, late


def test_a_fixed_ttl_runs_the_same_budget_dry(
    sim: HerokuSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    """The comparison that shows the first test can fail: no stretching, same traffic."""
    run = asyncio.run(
        checks(sim, clock, tmp_path, seconds=1200, max_age=60)  # no room to stretch
    )
    assert run.first_unavailable_at is not None and run.first_unavailable_at < 600
    assert run.max_ttl == 60
