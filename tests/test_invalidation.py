"""InvalidateAccess reaches every replica: two caches, two listeners, one PostgreSQL database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from authz.facts.access import AccessCache
from authz.facts.heroku import AccessList
from authz.facts.invalidation import AccessInvalidations
from tests.pg import postgres


def replica() -> tuple[AccessCache, list[str]]:
    """A cache whose upstream answers at once and counts its calls (one replica's view)."""
    fetches: list[str] = []

    async def fetch(app_id: str, resource_id: str) -> AccessList:
        fetches.append(app_id)
        return AccessList(app_id, "app", None, "owner", time.time())

    return AccessCache(fetch, ttl=300), fetches


async def until(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not invalidated in time"
        await asyncio.sleep(0.02)


async def reaches_the_other_replica_not_itself(target: str | Path) -> None:
    """Replica A publishes app-1 (on the bus at `target`): B drops app-1 and nothing else; A,
    which dropped and refetched it at once, keeps what it refetched when its own message comes
    back. The same scenario on PostgreSQL and SQLite (tests/test_workers.py)."""
    (cache_a, fetches_a), (cache_b, fetches_b) = replica(), replica()
    bus_a = AccessInvalidations(cache_a, target, channel="authz_test_inval")
    bus_b = AccessInvalidations(cache_b, target, channel="authz_test_inval")
    await bus_a.start()
    await bus_b.start()
    try:
        for cache in (cache_a, cache_b):
            await cache.get("app-1", "res-1", deadline=1)
            await cache.get("app-2", "res-2", deadline=1)
        assert await bus_a.publish("app-1")
        await cache_a.get("app-1", "res-1", deadline=1)  # A refetches at once
        await until(lambda: bus_b.received >= 1)
        await cache_b.get("app-1", "res-1", deadline=1)
        await cache_b.get("app-2", "res-2", deadline=1)
        assert fetches_b == ["app-1", "app-2", "app-1"]  # only app-1 was dropped on B
        await asyncio.sleep(0.3)  # A's own message has come back by now
        await cache_a.get("app-1", "res-1", deadline=1)
        assert fetches_a == ["app-1", "app-2", "app-1"] and bus_a.received == 0
    finally:
        await bus_a.aclose()
        await bus_b.aclose()


def test_invalidation_reaches_the_other_replica() -> None:
    server = postgres()
    if server.url is None:
        pytest.skip(server.skip_reason)
    asyncio.run(reaches_the_other_replica_not_itself(server.url))


def test_a_replica_ignores_its_own_notifications() -> None:
    """Its entry was dropped when it published; the notice coming back must not drop the list
    fetched in between (that made a second fetch for nothing)."""
    server = postgres()
    if server.url is None:
        pytest.skip(server.skip_reason)

    async def scenario() -> None:
        (cache_a, fetches_a), (cache_b, _) = replica(), replica()
        bus_a = AccessInvalidations(cache_a, server.url, channel="authz_test_own")
        bus_b = AccessInvalidations(cache_b, server.url, channel="authz_test_own")
        await bus_a.start()
        await bus_b.start()
        try:
            await cache_a.get("app-1", "res-1", deadline=1)
            assert await bus_a.publish("app-1")
            await cache_a.get("app-1", "res-1", deadline=1)  # fetched again at once
            await until(lambda: bus_b.received >= 1)
            await asyncio.sleep(0.3)  # A's own notice has come back by now
            await cache_a.get("app-1", "res-1", deadline=1)
            assert fetches_a == ["app-1", "app-1"] and bus_a.received == 0
        finally:
            await bus_a.aclose()
            await bus_b.aclose()

    asyncio.run(scenario())


def test_without_postgres_invalidation_is_local() -> None:
    async def scenario() -> None:
        cache, fetches = replica()
        bus = AccessInvalidations(cache, None)
        await bus.start()
        await cache.get("app-1", "res-1", deadline=1)
        assert await bus.publish("app-1")
        assert not await bus.publish("app-1")
        await cache.get("app-1", "res-1", deadline=1)
        assert fetches == ["app-1", "app-1"]
        await bus.aclose()

    asyncio.run(scenario())
