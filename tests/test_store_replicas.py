"""Two replicas sharing one store: each has its own Database (PostgreSQL: its own connection pool;
SQLite: its own connection to the same file), and what one does the other sees at once."""

from __future__ import annotations

import threading

import pytest

from authz.facts.addons import ADDON_DEPROVISIONED, AddonRegistry, RegistryError
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from tests.clock import FakeClock
from tests.pg import Backend

T0 = 1_700_000_000.0
RID = "01234567-89ab-cdef-0123-456789abcdef"
APP_ID = "6f0d4bb2-9c1e-4a40-8f4e-0a1b2c3d4e5f"
USER = "038df634-6962-43b9-a1ec-9ff09b8ce665"


def test_a_session_revoked_on_one_replica_fails_on_the_other_at_once(backend: Backend) -> None:
    clock = FakeClock(T0)
    a, b = SessionStore(backend.open(), clock), SessionStore(backend.open(), clock)
    token, session = a.issue(USER, RID, "user@example.com", token_kind="sha256")
    assert b.resolve(token) == session  # issued by A, works on B
    assert b.revoke(token) is True
    assert a.resolve(token) is None  # revoked on B, fails on A with no delay
    assert a.revoke(token) is False

    other, _ = b.issue(USER, RID, "", token_kind="sha256")
    assert a.revoke_for_resource(RID) == 1
    assert b.resolve(other) is None


def test_deprovisioning_on_one_replica_stops_the_other(backend: Backend) -> None:
    clock = FakeClock(T0)
    db_a, db_b = backend.open(), backend.open()
    registry_a, registry_b = AddonRegistry(db_a, clock), AddonRegistry(db_b, clock)
    sessions_a, sessions_b = SessionStore(db_a, clock), SessionStore(db_b, clock)
    registry_a.register(RID, APP_ID, "my-app", "test", "us")
    token, _ = sessions_b.issue(USER, RID, "", token_kind="sha256")
    assert registry_b.get(RID).state == "provisioned"  # type: ignore[union-attr]

    registry_a.deprovision(RID)
    sessions_a.revoke_for_resource(RID)
    assert registry_b.get(RID).state == "deprovisioned"  # type: ignore[union-attr]
    assert sessions_b.resolve(token) is None
    with pytest.raises(RegistryError) as info:
        registry_b.register(RID, APP_ID, "my-app", "test", "us")
    assert info.value.code == ADDON_DEPROVISIONED


def test_one_sso_form_posted_to_two_replicas_at_once_wins_once(backend: Backend) -> None:
    clock = FakeClock(T0)
    replicas = [ReplayGuard(backend.open(), clock) for _ in range(2)]
    keys = 40
    barrier = threading.Barrier(len(replicas))
    wins: list[list[bool]] = [[] for _ in replicas]

    def run(i: int) -> None:
        for k in range(keys):
            barrier.wait()
            wins[i].append(replicas[i].claim(f"form-{k}", T0 + 300))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(len(w) == keys for w in wins)
    for k in range(keys):
        assert wins[0][k] + wins[1][k] == 1, f"form-{k}: {wins[0][k]}, {wins[1][k]}"
    # And afterwards each replica refuses the form, whichever accepted it.
    assert not replicas[0].claim("form-0", T0 + 300) and not replicas[1].claim("form-0", T0 + 300)
