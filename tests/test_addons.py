"""The add-on registry (authz.facts.addons), on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlite_utils

from authz.facts.addons import (
    ADDON_APP_CONFLICT,
    ADDON_DEPROVISIONED,
    ADDON_MALFORMED,
    ADDON_UNKNOWN,
    Addon,
    AddonRegistry,
    RegistryError,
)
from authz.store import Database, open_database
from tests.clock import FakeClock
from tests.pg import Backend

T0 = 1_700_000_000.0
RID = "01234567-89ab-cdef-0123-456789abcdef"
OTHER_RID = "fedcba98-7654-3210-fedc-ba9876543210"
APP_ID = "6f0d4bb2-9c1e-4a40-8f4e-0a1b2c3d4e5f"
REGION = "amazon-web-services::us-east-1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db(backend: Backend) -> Database:
    return backend.open()


@pytest.fixture
def registry(db: Database, clock: FakeClock) -> AddonRegistry:
    return AddonRegistry(db, clock)


def test_register_new(registry: AddonRegistry) -> None:
    addon, changed = registry.register(RID, APP_ID, "my-app", "test", REGION)
    assert changed
    assert addon == Addon(RID, APP_ID, "my-app", "test", REGION, "provisioned", T0, T0)
    assert registry.get(RID) == addon


def test_register_is_idempotent(registry: AddonRegistry, clock: FakeClock) -> None:
    first, _ = registry.register(RID, APP_ID, "my-app", "test", REGION)
    clock.advance(30)
    again, changed = registry.register(RID, APP_ID, "my-app", "test", REGION)
    assert not changed
    assert again == first
    assert again.created_at == T0 and again.updated_at == T0


def test_register_with_new_plan_updates(registry: AddonRegistry, clock: FakeClock) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    clock.advance(30)
    addon, changed = registry.register(RID, APP_ID, "renamed-app", "premium", REGION)
    assert changed
    assert (addon.plan, addon.app_name) == ("premium", "renamed-app")
    assert (addon.created_at, addon.updated_at) == (T0, T0 + 30)
    assert registry.get(RID) == addon


def test_register_refuses_a_different_app(registry: AddonRegistry) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    with pytest.raises(RegistryError) as info:
        registry.register(RID, "another-app-id", "my-app", "test", REGION)
    assert info.value.code == ADDON_APP_CONFLICT and not info.value.invalid_argument
    assert registry.get(RID).app_id == APP_ID  # type: ignore[union-attr]


def test_change_plan(registry: AddonRegistry, clock: FakeClock) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    clock.advance(10)
    addon = registry.change_plan(RID, "premium")
    assert (addon.plan, addon.updated_at, addon.created_at) == ("premium", T0 + 10, T0)
    clock.advance(10)
    assert registry.change_plan(RID, "premium") == addon  # same plan: nothing changes
    assert registry.get(RID) == addon


def test_deprovision(registry: AddonRegistry, clock: FakeClock) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    clock.advance(5)
    addon = registry.deprovision(RID)
    assert (addon.state, addon.updated_at, addon.created_at) == ("deprovisioned", T0 + 5, T0)
    assert registry.get(RID) == addon
    clock.advance(5)
    assert registry.deprovision(RID) == addon  # a repeated DELETE changes nothing


def test_deprovisioned_uuid_is_never_provisioned_again(registry: AddonRegistry) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    registry.deprovision(RID)
    for call in (
        lambda: registry.register(RID, APP_ID, "my-app", "test", REGION),
        lambda: registry.change_plan(RID, "premium"),
    ):
        with pytest.raises(RegistryError) as info:
            call()
        assert info.value.code == ADDON_DEPROVISIONED
        assert "never reuses" in str(info.value)
    assert registry.get(RID).state == "deprovisioned"  # type: ignore[union-attr]


def test_unknown_resource(registry: AddonRegistry) -> None:
    assert registry.get(RID) is None
    for call in (lambda: registry.deprovision(RID), lambda: registry.change_plan(RID, "test")):
        with pytest.raises(RegistryError) as info:
            call()
        assert info.value.code == ADDON_UNKNOWN and not info.value.invalid_argument


@pytest.mark.parametrize(
    "resource_id",
    ["", "123", "not-a-uuid", RID + "0", RID.replace("-", ""), "{" + RID + "}", "urn:uuid:" + RID],
)
def test_resource_id_must_be_a_uuid(registry: AddonRegistry, resource_id: str) -> None:
    for call in (
        lambda: registry.register(resource_id, APP_ID, "my-app", "test", REGION),
        lambda: registry.deprovision(resource_id),
        lambda: registry.change_plan(resource_id, "test"),
    ):
        with pytest.raises(RegistryError) as info:
            call()
        assert info.value.code == ADDON_MALFORMED and info.value.invalid_argument
    assert registry.get(resource_id) is None


@pytest.mark.parametrize(("app_id", "plan"), [("", "test"), ("   ", "test"), (APP_ID, "")])
def test_app_id_and_plan_must_not_be_empty(registry: AddonRegistry, app_id: str, plan: str) -> None:
    with pytest.raises(RegistryError) as info:
        registry.register(RID, app_id, "my-app", plan, REGION)
    assert info.value.code == ADDON_MALFORMED and info.value.invalid_argument
    assert registry.get(RID) is None


def test_upper_case_uuid_is_normalised(registry: AddonRegistry) -> None:
    addon, _ = registry.register(RID.upper(), APP_ID, "my-app", "test", REGION)
    assert addon.resource_id == RID
    assert registry.get(RID.upper()) == addon
    assert registry.register(RID, APP_ID, "my-app", "test", REGION) == (addon, False)


def test_resources_are_independent(registry: AddonRegistry) -> None:
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    registry.register(OTHER_RID, APP_ID, "my-app", "premium", REGION)
    registry.deprovision(RID)
    assert registry.get(OTHER_RID).state == "provisioned"  # type: ignore[union-attr]


def test_persists_and_tables_are_created_idempotently(backend: Backend, clock: FakeClock) -> None:
    addon, _ = AddonRegistry(backend.open(), clock).register(RID, APP_ID, "a", "t", REGION)
    AddonRegistry(backend.open(), clock)
    assert AddonRegistry(backend.open(), clock).get(RID) == addon


def test_concurrent_deliveries_register_once(backend: Backend, clock: FakeClock) -> None:
    # Every registry has its own connection (PostgreSQL: its own pool), as replicas would.
    AddonRegistry(backend.open(), clock)
    n = 8
    registries = [AddonRegistry(backend.open(), clock) for _ in range(n)]
    barrier = threading.Barrier(n)
    changed: list[bool] = []
    lock = threading.Lock()

    def run(registry: AddonRegistry) -> None:
        barrier.wait()
        _, c = registry.register(RID, APP_ID, "my-app", "test", REGION)
        with lock:
            changed.append(c)

    workers = [threading.Thread(target=run, args=(r,)) for r in registries]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(changed) == [False] * (n - 1) + [True]


def test_concurrent_plan_changes_are_serialised(backend: Backend, clock: FakeClock) -> None:
    # Read-then-write under the per-resource lock: of racing changes to the same plan, exactly
    # one changes anything (updated_at moves once).
    AddonRegistry(backend.open(), clock).register(RID, APP_ID, "my-app", "test", REGION)
    clock.advance(10)
    n = 6
    registries = [AddonRegistry(backend.open(), clock) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[Addon] = []
    lock = threading.Lock()

    def run(registry: AddonRegistry) -> None:
        barrier.wait()
        addon = registry.change_plan(RID, "premium")
        with lock:
            results.append(addon)

    workers = [threading.Thread(target=run, args=(r,)) for r in registries]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert {(a.plan, a.updated_at) for a in results} == {("premium", T0 + 10)}
    assert registries[0].get(RID) == results[0]


def test_inside_a_callers_transaction(db: Database, registry: AddonRegistry) -> None:
    # A failed call inside the caller's transaction rolls back only its own savepoint; the
    # caller's rollback then takes the successful one back too.
    class Abort(Exception):
        pass

    with pytest.raises(Abort), db.transaction():
        registry.register(RID, APP_ID, "my-app", "test", REGION)
        with pytest.raises(RegistryError):
            registry.register(RID, "other-app", "my-app", "test", REGION)
        assert registry.get(RID) is not None  # still there, inside the transaction
        raise Abort
    assert registry.get(RID) is None


@pytest.mark.parametrize("bad", ["nul\x00byte", "lone \ud800 surrogate"])
def test_text_both_backends_can_store(registry: AddonRegistry, bad: str) -> None:
    with pytest.raises(RegistryError) as info:
        registry.register(RID, APP_ID, bad, "test", REGION)
    assert info.value.code == ADDON_MALFORMED and info.value.invalid_argument
    assert registry.get(RID) is None


# -- the SQLite compatibility path: stores also take a sqlite_utils.Database ------------------


def test_inside_a_callers_sqlite_transaction(tmp_path: Path, clock: FakeClock) -> None:
    db = open_database(tmp_path / "authz.db")
    registry = AddonRegistry(db, clock)
    db.conn.execute("BEGIN")
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    with pytest.raises(RegistryError):
        registry.register(RID, "other-app", "my-app", "test", REGION)
    assert db.conn.in_transaction
    db.conn.execute("ROLLBACK")
    assert registry.get(RID) is None


def test_works_on_a_plain_sqlite_utils_database(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "plain.db"
    registry = AddonRegistry(sqlite_utils.Database(path), clock)
    addon, _ = registry.register(RID, APP_ID, "my-app", "test", REGION)
    assert AddonRegistry(open_database(path), clock).get(RID) == addon


def test_the_first_sha256_sso_login_is_remembered_across_connections(
    backend: Backend, clock: FakeClock
) -> None:
    registry = AddonRegistry(backend.open(), clock)
    registry.register(RID, APP_ID, "my-app", "test", REGION)
    registry.register(OTHER_RID, APP_ID, "my-app", "test", REGION)
    assert registry.get(RID).sso_sha256_since is None  # type: ignore[union-attr]
    clock.advance(5)
    assert registry.note_sha256_sso(RID) is True
    clock.advance(5)
    assert registry.note_sha256_sso(RID.upper()) is False  # once; the first time is kept
    # Another connection (a restart, another replica) sees it; other add-ons are unaffected.
    restarted = AddonRegistry(backend.open(), clock)
    assert restarted.get(RID).sso_sha256_since == T0 + 5  # type: ignore[union-attr]
    assert restarted.get(OTHER_RID).sso_sha256_since is None  # type: ignore[union-attr]
    # A later provisioning retry or plan change does not forget it.
    restarted.register(RID, APP_ID, "renamed-app", "test", REGION)
    restarted.change_plan(RID, "bigger")
    assert restarted.get(RID).sso_sha256_since == T0 + 5  # type: ignore[union-attr]
    with pytest.raises(RegistryError):
        restarted.note_sha256_sso("not-a-uuid")


def test_concurrent_first_sha256_logins_record_it_once(backend: Backend, clock: FakeClock) -> None:
    AddonRegistry(backend.open(), clock).register(RID, APP_ID, "my-app", "test", REGION)
    registries = [AddonRegistry(backend.open(), clock) for _ in range(6)]
    barrier = threading.Barrier(len(registries))
    firsts: list[bool] = []

    def run(registry: AddonRegistry) -> None:
        barrier.wait()
        firsts.append(registry.note_sha256_sso(RID))

    workers = [threading.Thread(target=run, args=(r,)) for r in registries]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(firsts) == [False] * 5 + [True]
