"""Sessions issued after Heroku SSO (authz.facts.sessions), on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlite_utils

from authz.facts.sessions import TOKEN_PREFIX, Session, SessionStore
from authz.store import Database, open_database
from tests.clock import FakeClock
from tests.pg import Backend, count, dump

T0 = 1_700_000_000.0
TTL = 8 * 3600.0
USER = "038df634-6962-43b9-a1ec-9ff09b8ce665"
OTHER_USER = "11111111-2222-3333-4444-555555555555"
RESOURCE = "01234567-89ab-cdef-0123-456789abcdef"
OTHER_RESOURCE = "fedcba98-7654-3210-fedc-ba9876543210"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db(backend: Backend) -> Database:
    return backend.open()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> SessionStore:
    return SessionStore(db, clock)


def test_issue_and_resolve(store: SessionStore) -> None:
    token, session = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    assert token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX) + 40
    assert session == Session(
        session_id=session.session_id,
        user_id=USER,
        resource_id=RESOURCE,
        email="user@example.com",
        issued_at=T0,
        expires_at=T0 + TTL,
        revoked_at=None,
        token_kind="sha256",
    )
    assert session.session_id and session.session_id not in token and token not in repr(session)
    assert store.resolve(token) == session


def test_tokens_and_session_ids_are_unique(store: SessionStore) -> None:
    issued = [
        store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256") for _ in range(50)
    ]
    assert len({t for t, _ in issued}) == 50
    assert len({s.session_id for _, s in issued}) == 50


@pytest.mark.parametrize(
    "token", ["", "azs_", "not-a-token", "azs_" + "A" * 43, "x" * 10_000, "\ud800"]
)
def test_unknown_tokens_resolve_to_none(store: SessionStore, token: str) -> None:
    store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    assert store.resolve(token) is None
    assert store.revoke(token) is False


def test_session_expires(store: SessionStore, clock: FakeClock) -> None:
    token, session = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    clock.advance(TTL - 1)
    assert store.resolve(token) == session
    clock.advance(1)
    assert store.resolve(token) is None
    assert store.revoke(token) is False


def test_custom_ttl(db: Database, clock: FakeClock) -> None:
    store = SessionStore(db, clock, ttl=60)
    token, session = store.issue(USER, RESOURCE, "", token_kind="sha256")
    assert session.expires_at == T0 + 60
    clock.advance(60)
    assert store.resolve(token) is None


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_ttl_must_be_positive(db: Database, clock: FakeClock, ttl: float) -> None:
    with pytest.raises(ValueError):
        SessionStore(db, clock, ttl=ttl)


def test_revoke(store: SessionStore) -> None:
    token, _ = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    other, other_session = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    assert store.revoke(token) is True
    assert store.resolve(token) is None
    assert store.revoke(token) is False
    assert store.resolve(other) == other_session


def test_revoke_for_resource(store: SessionStore) -> None:
    a, _ = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    b, _ = store.issue(OTHER_USER, RESOURCE, "other@example.com", token_kind="sha256")
    c, c_session = store.issue(USER, OTHER_RESOURCE, "user@example.com", token_kind="sha256")
    assert store.revoke(a)
    assert store.revoke_for_resource(RESOURCE) == 1  # a was already revoked
    assert store.resolve(a) is None and store.resolve(b) is None
    assert store.resolve(c) == c_session
    assert store.revoke_for_resource(RESOURCE) == 0
    assert store.revoke_for_resource("unknown") == 0


def test_purge_expired(store: SessionStore, db: Database, clock: FakeClock) -> None:
    old, _ = store.issue(USER, RESOURCE, "", token_kind="sha256")
    clock.advance(3600)
    new, new_session = store.issue(USER, RESOURCE, "", token_kind="sha256")
    clock.advance(TTL - 1800)
    assert store.purge_expired() == 1
    assert count(db, "sessions") == 1
    assert store.resolve(new) == new_session
    assert store.purge_expired() == 0


def test_database_never_holds_the_raw_token(store: SessionStore, db: Database) -> None:
    token, session = store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")
    store.revoke(store.issue(USER, RESOURCE, "user@example.com", token_kind="sha256")[0])
    everything = dump(db)
    secret_part = token.removeprefix(TOKEN_PREFIX)
    assert token not in everything and secret_part not in everything
    assert session.session_id in everything
    hashed = hashlib.sha256(token.encode()).hexdigest()
    rows = db.execute(
        "SELECT token_sha256 FROM sessions WHERE session_id = ?", (session.session_id,)
    ).rows
    assert rows == [(hashed,)]


def test_email_is_display_only(store: SessionStore) -> None:
    a, a_session = store.issue(USER, RESOURCE, "shared@example.com", token_kind="sha256")
    b, b_session = store.issue(OTHER_USER, RESOURCE, "shared@example.com", token_kind="sha256")
    c, c_session = store.issue(USER, RESOURCE, "renamed@example.com", token_kind="sha256")
    assert store.resolve(a) == a_session and store.resolve(b) == b_session
    assert store.resolve(c) == c_session
    assert store.resolve(b).user_id == OTHER_USER  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("user_id", "resource_id", "email"),
    [("", RESOURCE, ""), (USER, "", ""), (USER, RESOURCE, "x" * 1025), ("u" * 1025, RESOURCE, "")],
)
def test_issue_validates(store: SessionStore, user_id: str, resource_id: str, email: str) -> None:
    with pytest.raises(ValueError):
        store.issue(user_id, resource_id, email, token_kind="sha256")


@pytest.mark.parametrize("bad", ["nul\x00byte", "lone \ud800 surrogate"])
def test_issue_refuses_text_a_backend_cannot_store(store: SessionStore, bad: str) -> None:
    for args in ((bad, RESOURCE, ""), (USER, bad, ""), (USER, RESOURCE, bad)):
        with pytest.raises(ValueError):
            store.issue(*args, token_kind="sha256")


def test_sessions_persist_and_tables_are_created_idempotently(
    backend: Backend, clock: FakeClock
) -> None:
    token, session = SessionStore(backend.open(), clock).issue(
        USER, RESOURCE, "", token_kind="sha256"
    )
    again = SessionStore(backend.open(), clock)
    SessionStore(backend.open(), clock)
    assert again.resolve(token) == session
    assert again.revoke(token)
    assert SessionStore(backend.open(), clock).resolve(token) is None


def test_works_on_a_plain_sqlite_utils_database(clock: FakeClock, tmp_path: Path) -> None:
    # Not the autocommit connection open_database makes: writes must still be committed.
    path = tmp_path / "plain.db"
    store = SessionStore(sqlite_utils.Database(path), clock)
    token, session = store.issue(USER, RESOURCE, "", token_kind="sha256")
    assert SessionStore(open_database(path), clock).resolve(token) == session


def test_the_token_kind_is_stored_with_the_session(store: SessionStore, backend: Backend) -> None:
    sha1, sha1_session = store.issue(USER, RESOURCE, "", token_kind="sha1")
    assert sha1_session.token_kind == "sha1"
    again = SessionStore(backend.open(), FakeClock(T0))  # another connection (or replica)
    assert again.resolve(sha1) == sha1_session
    for bad in ("", "SHA256", "unknown", "md5"):
        with pytest.raises(ValueError, match="token_kind"):
            store.issue(USER, RESOURCE, "", token_kind=bad)  # type: ignore[arg-type]


def test_sessions_issued_before_token_kinds_resolve_as_unknown(backend: Backend) -> None:
    """A database migrated to version 4 by an older release keeps its sessions; they read as
    token_kind 'unknown' (policies treat that as not SHA-256)."""
    from authz.store import MIGRATIONS, migrate

    db = backend.open()
    migrate(db, tuple(m for m in MIGRATIONS if m.version <= 4))
    token = TOKEN_PREFIX + "issued-by-an-older-release-0123456789abcdefghij"
    db.execute(
        "INSERT INTO sessions (token_sha256, session_id, user_id, resource_id, email, "
        "issued_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        (hashlib.sha256(token.encode()).hexdigest(), "ses_old", USER, RESOURCE, "", T0, T0 + TTL),
    )
    store = SessionStore(backend.open(), FakeClock(T0 + 60))  # migrates the rest
    old = store.resolve(token)
    assert old is not None and (old.session_id, old.token_kind) == ("ses_old", "unknown")


def test_purge_keeps_revoked_sessions_until_they_expire(
    store: SessionStore, db: Database, clock: FakeClock
) -> None:
    revoked, _ = store.issue(USER, RESOURCE, "", token_kind="sha256")
    assert store.revoke(revoked)
    clock.advance(TTL - 1)
    assert store.purge_expired() == 0
    clock.advance(1)
    assert store.purge_expired() == 1
    assert count(db, "sessions") == 0
