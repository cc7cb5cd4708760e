"""The Platform API client, the encrypted token store and the token manager, against the
real simulator over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.facts.access import PlatformAccessFetcher
from authz.facts.heroku import AccessList, OAuthTokens, PlatformClient, PlatformError
from authz.facts.oauth_tokens import (
    OAuthTokenStore,
    TokenKeyMissing,
    TokenManager,
    TokenStoreError,
)
from authz.store import open_database
from tests.clock import FakeClock
from tests.pg import Backend, dump

T = TypeVar("T")
KEY = "test-token-key-0123456789abcdef"
ACME = "authz-curved-12345"
GLOBEX = "authz-spherical-67890"
INITECH = "authz-angular-24680"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture(), page_size=2) as s:
        yield s


def client_for(sim: HerokuSimulator, **kwargs: Any) -> PlatformClient:
    return PlatformClient(sim.base_url, sim.base_url, sim.client_secret, **kwargs)


def rid(sim: HerokuSimulator, addon: str) -> str:
    return str(sim.addon(addon)["id"])


async def fetch(sim: HerokuSimulator, addon: str, **kwargs: Any) -> AccessList:
    async with client_for(sim, **kwargs) as client:
        tokens = await client.exchange_grant(sim.create_grant(rid(sim, addon)))
        return await client.fetch_access_list(rid(sim, addon), tokens.access_token)


def test_exchange_grant_and_refresh(sim: HerokuSimulator) -> None:
    clock = FakeClock()
    code = sim.create_grant(rid(sim, ACME))

    async def scenario() -> tuple[OAuthTokens, OAuthTokens]:
        async with client_for(sim, clock=clock) as client:
            tokens = await client.exchange_grant(code)
            return tokens, await client.refresh(tokens.refresh_token)

    tokens, refreshed = run(scenario)
    assert tokens.expires_at == clock.now + 28800
    assert tokens.user_id and refreshed.access_token != tokens.access_token
    for shown in (repr(tokens), str(tokens)):
        assert tokens.access_token not in shown and tokens.refresh_token not in shown
        assert "hidden" in shown


def test_refused_exchange_never_shows_code_or_secret(sim: HerokuSimulator) -> None:
    code = sim.create_grant(rid(sim, ACME))

    async def scenario() -> None:
        async with client_for(sim) as client:
            await client.exchange_grant(code)
            with pytest.raises(PlatformError) as used:
                await client.exchange_grant(code)  # single use
            assert used.value.failure == "unauthorized" and used.value.status == 401
            for text in (str(used.value), repr(used.value)):
                assert code not in text and sim.client_secret not in text
            async with PlatformClient(sim.base_url, sim.base_url, "wrong-secret") as bad:
                with pytest.raises(PlatformError) as wrong:
                    await bad.exchange_grant(sim.create_grant(rid(sim, ACME)))
                assert wrong.value.failure == "unauthorized"
                assert "wrong-secret" not in str(wrong.value)

    run(scenario)


def test_personal_app_access_list(sim: HerokuSimulator) -> None:
    access = run(lambda: fetch(sim, ACME))
    alice, bob, carol = (sim.user(h)["id"] for h in ("alice", "bob", "carol"))
    assert access.app_id == sim.app("acme-billing")["id"] and access.app_name == "acme-billing"
    assert access.team_id is None and access.owner_id == alice
    assert set(access.members) == {alice, bob, carol}  # dave and mallory are nowhere
    assert access.members[alice].roles == ("owner",)
    assert access.members[bob].roles == ("collaborator",)
    # A personal app has no Enterprise app permissions: Heroku lists none (access_fact decides).
    assert access.members[bob].permissions == () and access.members[carol].permissions == ()
    assert access.members[carol].team_role is None
    assert access.ratelimit_remaining is not None and access.ratelimit_remaining < 4500
    assert access.members[alice].email == "alice@acme.example"
    # The recipe, in order, with pagination: 3 collaborators in pages of 2; no team call.
    app_id = access.app_id
    assert sim.count("GET", f"/addons/{rid(sim, ACME)}") == 1
    assert sim.count("GET", f"/apps/{app_id}/collaborators") == 2
    assert sim.count("GET", f"/apps/{app_id}") == 3
    assert sim.count("GET", "/teams/") == 0


def test_team_app_access_list(sim: HerokuSimulator) -> None:
    access = run(lambda: fetch(sim, GLOBEX))
    team = sim.team("globex")
    erin, frank, grace, ivan = (sim.user(h)["id"] for h in ("erin", "frank", "grace", "ivan"))
    owner = sim.user("globex-owner")["id"]
    assert access.team_id == team["id"] and access.owner_id == owner
    assert set(access.members) == {owner, erin, frank, grace, ivan}
    assert access.members[grace].permissions == ("deploy", "view")
    assert access.members[ivan].roles == ("collaborator",)
    assert access.members[ivan].permissions == ("view",)
    assert access.members[erin].roles == ("admin", "team_admin")
    assert access.members[erin].team_role == "admin"
    assert access.members[grace].roles == ("member", "team_member")
    assert access.members[frank].roles == ("team_member",)
    assert access.members[frank].permissions == ()
    # 3 members in pages of 2, ranged by email as the schema says (an `id` range is a 416).
    assert sim.count("GET", f"/teams/{team['id']}/members") == 2


def test_identity_is_the_user_id_not_the_email(sim: HerokuSimulator) -> None:
    bob = sim.user("bob")["id"]
    before = run(lambda: fetch(sim, ACME))
    sim.set_user_email("bob", "robert@acme.example")
    sim.add_collaborator("acme-billing", "mallory", role=None, permissions=["view"])
    sim.remove_collaborator("acme-billing", "carol")
    after = run(lambda: fetch(sim, ACME))
    assert after.members[bob].roles == before.members[bob].roles
    assert after.members[bob].email == "robert@acme.example"
    assert sim.user("carol")["id"] not in after.members
    # A collaborator whose role is null is listed but holds no role: it grants nothing.
    assert after.members[sim.user("mallory")["id"]].roles == ()


def test_null_unknown_and_odd_roles_grant_nothing_and_the_rest_stands(
    sim: HerokuSimulator,
) -> None:
    """Rows Heroku may send (role null, viewer, a role added later, a federated member with an
    identity_provider) used to make the whole list unavailable; now they grant nothing."""
    sim.set_team_member_role("globex", "frank", None)
    sim.add_team_member("globex", "mallory", "viewer")
    sim.add_team_member("globex", "dave", "identity_provider", {"name": "acme-sso"})
    sim.set_collaborator_role("globex-api", "ivan", "billing_contact")
    access = run(lambda: fetch(sim, GLOBEX))
    frank, mallory, dave, ivan, erin, grace = (
        sim.user(h)["id"] for h in ("frank", "mallory", "dave", "ivan", "erin", "grace")
    )
    assert access.members[frank].roles == () and access.members[frank].team_role is None
    assert access.members[mallory].roles == ("team_viewer",)
    assert access.members[dave].roles == ("team_identity_provider",)
    assert access.members[ivan].roles == ("billing_contact",)
    # Everyone else is exactly as before.
    assert access.members[erin].roles == ("admin", "team_admin")
    assert access.members[grace].roles == ("member", "team_member")


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ({"kind": "error", "status": 503}, "upstream_error"),
        ({"kind": "error", "status": 401}, "unauthorized"),
        ({"kind": "error", "status": 404}, "not_found"),
        ({"kind": "rate_limit", "retry_after": 12}, "rate_limited"),
        ({"kind": "malformed"}, "bad_response"),
        ({"kind": "drop"}, "unreachable"),
        ({"kind": "latency", "seconds": 1.0}, "unreachable"),
    ],
)
def test_error_kinds(sim: HerokuSimulator, fault: dict[str, Any], kind: str) -> None:
    code = sim.create_grant(rid(sim, ACME))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with client_for(sim, timeout=0.3) as client:
            tokens = await client.exchange_grant(code)
            seen["tokens"] = tokens
            sim.add_fault(**fault, path_prefix="/apps/")
            await client.fetch_access_list(rid(sim, ACME), tokens.access_token)

    with pytest.raises(PlatformError) as caught:
        run(scenario)
    error = caught.value
    assert error.failure == kind
    if kind == "rate_limited":
        assert error.retry_after == 12 and error.status == 429
    tokens = seen["tokens"]
    for text in (str(error), repr(error)):
        for secret in (tokens.access_token, tokens.refresh_token, code, sim.client_secret):
            assert secret not in text
    assert "/apps/" in str(error)  # says which call failed


def test_unreachable_when_nothing_listens() -> None:
    sim = HerokuSimulator(load_fixture())
    url = sim.start()
    sim.stop()

    async def scenario() -> None:
        async with PlatformClient(url, url, "secret") as client:
            await client.fetch_access_list("ce9b8461-8f28-4524-bffc-bd6d349c4ef0", "token")

    with pytest.raises(PlatformError) as caught:
        run(scenario)
    assert caught.value.failure == "unreachable"


def test_token_of_another_app_is_forbidden(sim: HerokuSimulator) -> None:
    async def scenario() -> None:
        async with client_for(sim) as client:
            tokens = await client.exchange_grant(sim.create_grant(rid(sim, INITECH)))
            await client.fetch_access_list(rid(sim, ACME), tokens.access_token)

    with pytest.raises(PlatformError) as caught:
        run(scenario)
    assert caught.value.failure == "forbidden" and caught.value.status == 403


def test_no_calls_left_stops_the_recipe_early() -> None:
    with HerokuSimulator(load_fixture(), page_size=2, rate_limit=2) as sim:
        with pytest.raises(PlatformError) as caught:
            run(lambda: fetch(sim, ACME))
        assert caught.value.failure == "rate_limited" and caught.value.retry_after
        # Ratelimit-Remaining hit 0 on the second call: the third was never sent.
        assert sim.count("GET") == 2


# -- token store ---------------------------------------------------------------------------


def test_tokens_are_encrypted_at_rest(
    sim: HerokuSimulator, backend: Backend, tmp_path: Path
) -> None:
    resource = rid(sim, ACME)

    async def scenario() -> OAuthTokens:
        async with client_for(sim) as client:
            manager = TokenManager(OAuthTokenStore(backend.open(), KEY), client)
            return await manager.register_grant(resource, sim.create_grant(resource))

    tokens = run(scenario)
    db = backend.open()
    everything = dump(db)
    if backend.name == "sqlite":  # the files themselves, WAL included
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("authz.db"))
        assert raw, "the database files exist"
        everything += raw.decode("latin-1")
    assert resource in everything
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in everything
    store = OAuthTokenStore(db, KEY)
    assert store.get(resource) == tokens
    assert store.has(resource) and store.get("no-such-addon") is None

    nonce1 = db.execute("SELECT nonce FROM heroku_oauth_tokens").scalar()
    store.put(resource, tokens)
    nonce2 = db.execute("SELECT nonce FROM heroku_oauth_tokens").scalar()
    assert len(nonce1) == 12 and nonce1 != nonce2  # a fresh nonce per write
    assert store.get(resource) == tokens

    # The resource id is bound in: a row copied onto another add-on does not decrypt.
    db.execute(
        "INSERT INTO heroku_oauth_tokens (resource_id, key_id, nonce, ciphertext, expires_at, "
        "updated_at) SELECT 'other-addon', key_id, nonce, ciphertext, expires_at, updated_at "
        "FROM heroku_oauth_tokens WHERE resource_id = ?",
        (resource,),
    )
    with pytest.raises(TokenStoreError):
        store.get("other-addon")
    with pytest.raises(TokenStoreError, match="another encryption key"):
        OAuthTokenStore(backend.open(), "a-different-key-of-enough-length").get(resource)
    assert store.delete(resource) and store.get(resource) is None and not store.delete(resource)


def test_store_refuses_without_a_key(sim: HerokuSimulator, backend: Backend) -> None:
    store = OAuthTokenStore(backend.open(), "")
    assert not store.enabled
    tokens = OAuthTokens("access", "refresh", 0.0)
    with pytest.raises(TokenKeyMissing, match="AUTHZ_TOKEN_KEY"):
        store.put("addon", tokens)
    with pytest.raises(TokenKeyMissing):
        OAuthTokenStore(backend.open(), "short").put("addon", tokens)
    assert not store.has("addon")
    code = sim.create_grant(rid(sim, ACME))

    async def scenario() -> None:
        async with client_for(sim) as client:
            await TokenManager(store, client).register_grant(rid(sim, ACME), code)

    with pytest.raises(TokenKeyMissing):
        run(scenario)
    assert sim.count("POST", "/oauth/token") == 0  # the single-use code was not spent


def test_tokens_put_through_one_database_are_read_through_another(backend: Backend) -> None:
    # Two replicas: one stores (or refreshes) an add-on's tokens, the other reads them at once.
    first, second = OAuthTokenStore(backend.open(), KEY), OAuthTokenStore(backend.open(), KEY)
    tokens = OAuthTokens("access-1", "refresh-1", 1_800_000_600.0, "user-1")
    first.put("addon", tokens)
    assert second.get("addon") == tokens
    refreshed = OAuthTokens("access-2", "refresh-1", 1_800_001_200.0, "user-1")
    second.put("addon", refreshed)
    assert first.get("addon") == refreshed
    assert first.delete("addon") and not second.has("addon")


def test_token_manager_refreshes_near_expiry_once(sim: HerokuSimulator, tmp_path: Path) -> None:
    clock = FakeClock()
    resource = rid(sim, ACME)

    async def scenario() -> None:
        async with client_for(sim, clock=clock) as client:
            store = OAuthTokenStore(open_database(tmp_path / "t.db"), KEY)
            manager = TokenManager(store, client, clock, refresh_margin=300)
            first = await manager.register_grant(resource, sim.create_grant(resource))
            assert await manager.access_token(resource) == first.access_token
            clock.now = first.expires_at - 301
            assert await manager.access_token(resource) == first.access_token
            assert sim.count("POST", "/oauth/token") == 1
            clock.now = first.expires_at - 299  # inside the margin: refresh, once for all
            tokens = await asyncio.gather(*(manager.access_token(resource) for _ in range(50)))
            assert len(set(tokens)) == 1 and tokens[0] != first.access_token
            assert sim.count("POST", "/oauth/token") == 2
            assert store.get(resource).access_token == tokens[0]  # type: ignore[union-attr]
            with pytest.raises(PlatformError) as missing:
                await manager.access_token("no-such-addon")
            assert missing.value.failure == "no_tokens"

    run(scenario)


def test_fetcher_retries_once_after_401(sim: HerokuSimulator, tmp_path: Path) -> None:
    resource = rid(sim, ACME)
    app_id = sim.app("acme-billing")["id"]

    async def scenario() -> None:
        async with client_for(sim) as client:
            store = OAuthTokenStore(open_database(tmp_path / "t.db"), KEY)
            manager = TokenManager(store, client)
            await manager.register_grant(resource, sim.create_grant(resource))
            fetcher = PlatformAccessFetcher(client, manager)
            sim.reset_counters()

            # Heroku expired the token before we thought it would: one refresh, one retry,
            # shared by concurrent fetches.
            sim.expire_access_tokens()
            lists = await asyncio.gather(*(fetcher(app_id, resource) for _ in range(10)))
            assert all(a.app_id == app_id for a in lists)
            assert sim.count("POST", "/oauth/token") == 1

            # A token refused even after refreshing: give up after exactly one retry.
            sim.reset_counters()
            sim.add_fault("error", status=401, path_prefix="/addons/")
            with pytest.raises(PlatformError) as caught:
                await fetcher(app_id, resource)
            assert caught.value.failure == "unauthorized"
            assert sim.count("GET", "/addons/") == 2
            assert sim.count("POST", "/oauth/token") == 1
            sim.clear_faults()

            # The add-on must belong to the app the caller named.
            with pytest.raises(PlatformError) as mismatch:
                await fetcher(sim.app("globex-api")["id"], resource)
            assert mismatch.value.failure == "app_mismatch"

    run(scenario)


def test_register_grant_is_idempotent_for_a_redelivered_provisioning(
    sim: HerokuSimulator, tmp_path: Path
) -> None:
    resource = rid(sim, ACME)
    code = sim.create_grant(resource)

    async def scenario() -> None:
        async with client_for(sim) as client:
            store = OAuthTokenStore(open_database(tmp_path / "t.db"), KEY)
            manager = TokenManager(store, client)
            first = await manager.register_grant(resource, code)
            # Heroku delivers the same provisioning (and grant code) again.
            assert await manager.register_grant(resource, code) == first
            # A used code for an add-on without tokens is still an error.
            with pytest.raises(PlatformError) as caught:
                await manager.register_grant(rid(sim, GLOBEX), code)
            assert caught.value.failure == "unauthorized"

    run(scenario)
