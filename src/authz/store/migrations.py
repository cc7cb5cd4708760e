"""Versioned schema migrations in named sets, the same list for SQLite and PostgreSQL.

A set is one part of the schema with versions of its own: ``state`` (the fact stores, below) and
``audit`` (authz.audit.migrations). ``schema_migrations`` records every applied version with its
set's name, as sqlite-utils keeps its migration sets in one table; on PostgreSQL both sets share
it, on SQLite each file has the sets migrated into it. :func:`migrate` applies the missing
versions of a set, in order, in one write transaction that first takes the migration lock
(PostgreSQL: an advisory lock taken before anything else, SQLite: ``BEGIN IMMEDIATE``), so
replicas starting at the same moment apply each version exactly once and the others wait and
find nothing left to do. DDL is
transactional on both backends: a failing migration leaves no trace.

Adding one: append a :class:`Migration` with the next version; never edit an applied one. Write
each statement once with ``{FLOAT}`` / ``{BYTES}`` / ``{BIGINT}`` where the column types differ
(authz.store.dialect), or give a text per dialect. Version 1-4 use ``IF NOT EXISTS`` so that a
``state.db`` made before migrations existed is adopted as it is; a set that an older release
versioned some other way names how to read that (``MigrationSet.adopt``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from authz.store.base import Database, Dialect, StoreError
from authz.store.dialect import POSTGRESQL, SQLITE
from authz.store.sqlite import StoreLike, as_database

__all__ = [
    "MIGRATIONS",
    "STATE",
    "Migration",
    "MigrationSet",
    "applied_versions",
    "ensure_schema",
    "latest_version",
    "migrate",
    "portable",
]

log = logging.getLogger("authz.store")

LOCK = "authz:schema-migrations"


def portable(*statements: str) -> dict[Dialect, tuple[str, ...]]:
    """The same statements for both dialects, with ``{FLOAT}``, ``{BYTES}`` and ``{BIGINT}``
    filled in (authz.store.dialect)."""
    return {d.name: tuple(d.render(s) for s in statements) for d in (SQLITE, POSTGRESQL)}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: Mapping[Dialect, tuple[str, ...]]
    """The statements, one text per dialect (see :func:`portable`)."""
    after: Callable[[Database], object] | None = None
    """A step in Python run after the statements, in the same transaction (e.g. moving data)."""


@dataclass(frozen=True)
class MigrationSet:
    name: str
    migrations: tuple[Migration, ...]
    adopt: Callable[[Database], int] | None = None
    """For a database that has none of this set's versions recorded: the newest version an
    older release applied by some other means (0: none), recorded as applied without running."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "add-on registry",
        portable(
            """
            CREATE TABLE IF NOT EXISTS addons (
                resource_id TEXT PRIMARY KEY,
                app_id TEXT NOT NULL,
                app_name TEXT NOT NULL,
                plan TEXT NOT NULL,
                region TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('provisioned', 'deprovisioned')),
                created_at {FLOAT} NOT NULL,
                updated_at {FLOAT} NOT NULL
            )
            """
        ),
    ),
    Migration(
        2,
        "sessions",
        portable(
            """
            CREATE TABLE IF NOT EXISTS sessions (
                token_sha256 TEXT PRIMARY KEY,
                session_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                email TEXT NOT NULL,
                issued_at {FLOAT} NOT NULL,
                expires_at {FLOAT} NOT NULL,
                revoked_at {FLOAT}
            )
            """,
            "CREATE INDEX IF NOT EXISTS sessions_resource_id ON sessions (resource_id)",
            "CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at)",
        ),
    ),
    Migration(
        3,
        "SSO replay guard",
        portable(
            """
            CREATE TABLE IF NOT EXISTS sso_replay (
                replay_key TEXT PRIMARY KEY,
                expires_at {FLOAT} NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS sso_replay_expires_at ON sso_replay (expires_at)",
        ),
    ),
    Migration(
        4,
        "Heroku OAuth tokens",
        portable(
            """
            CREATE TABLE IF NOT EXISTS heroku_oauth_tokens (
                resource_id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                nonce {BYTES} NOT NULL,
                ciphertext {BYTES} NOT NULL,
                expires_at {FLOAT} NOT NULL,
                updated_at {FLOAT} NOT NULL
            )
            """
        ),
    ),
    Migration(
        5,
        "SSO token kinds",
        portable(
            # Which token verified the login a session came from. Sessions issued before this
            # version may have come from a SHA-1 form: 'unknown', which policies treat as not
            # SHA-256 (they expire within AUTHZ_SESSION_TTL anyway).
            "ALTER TABLE sessions ADD COLUMN token_kind TEXT NOT NULL DEFAULT 'unknown'",
            # When an add-on first sent a verified SHA-256 SSO token; from then on its SHA-1-only
            # forms are refused even with AUTHZ_SSO_ALLOW_SHA1=legacy-addons.
            "ALTER TABLE addons ADD COLUMN sso_sha256_since {FLOAT}",
        ),
    ),
    Migration(
        6,
        "forget the OAuth tokens of deprovisioned add-ons",
        # Deprovisioning now deletes them (server.admin); this clears those kept before.
        portable(
            "DELETE FROM heroku_oauth_tokens WHERE resource_id IN "
            "(SELECT resource_id FROM addons WHERE state = 'deprovisioned')"
        ),
    ),
    Migration(
        7,
        "add-on webhooks and provisioning retries",
        portable(
            # The SHA-256 of the grant code the tokens came from: a redelivered provisioning
            # call is recognised without spending the single-use code again (authz.provisioning).
            "ALTER TABLE heroku_oauth_tokens ADD COLUMN grant_sha256 TEXT",
            # Each add-on's webhook subscription at Heroku and its signing secret, sealed like
            # the OAuth tokens (authz.facts.webhooks).
            """
            CREATE TABLE IF NOT EXISTS heroku_webhooks (
                resource_id TEXT PRIMARY KEY,
                webhook_id TEXT NOT NULL,
                url TEXT NOT NULL,
                key_id TEXT NOT NULL,
                nonce {BYTES} NOT NULL,
                ciphertext {BYTES} NOT NULL,
                created_at {FLOAT} NOT NULL
            )
            """,
        ),
    ),
)

STATE = MigrationSet("state", MIGRATIONS)
"""The fact stores' schema (state.db, or the shared PostgreSQL database)."""

_BOOKKEEPING = portable(
    # migration_set defaults to 'state' for an older release still running during an upgrade,
    # which records its versions without naming a set.
    """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        migration_set TEXT NOT NULL DEFAULT 'state',
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        applied_at {FLOAT} NOT NULL,
        PRIMARY KEY (migration_set, version)
    )
    """
)
_SETLESS = "schema_migrations_before_sets"
_COLUMNS: Mapping[Dialect, str] = {
    "sqlite": "SELECT name FROM pragma_table_info(?)",
    "postgresql": "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = ?",
}


def _bookkeeping(tx: Database) -> None:
    """Create schema_migrations, or give the one of a release before migration sets (version,
    name, applied_at: all the state set's) its migration_set column."""
    columns = {row[0] for row in tx.execute(_COLUMNS[tx.dialect], ("schema_migrations",))}
    if columns and "migration_set" not in columns:
        tx.execute(f"ALTER TABLE schema_migrations RENAME TO {_SETLESS}")
        for statement in _BOOKKEEPING[tx.dialect]:
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_migrations (migration_set, version, name, applied_at) "
            f"SELECT 'state', version, name, applied_at FROM {_SETLESS}"
        )
        tx.execute(f"DROP TABLE {_SETLESS}")
        return
    for statement in _BOOKKEEPING[tx.dialect]:
        tx.execute(statement)


def _as_set(migrations: MigrationSet | tuple[Migration, ...] | None) -> MigrationSet:
    if migrations is None:
        return STATE
    if isinstance(migrations, MigrationSet):
        return migrations
    return MigrationSet(STATE.name, migrations)


def latest_version(migrations: MigrationSet | tuple[Migration, ...] = MIGRATIONS) -> int:
    return max(m.version for m in _as_set(migrations).migrations)


def migrate(
    db: StoreLike, migrations: MigrationSet | tuple[Migration, ...] | None = None
) -> list[int]:
    """Apply every migration of a set (default: the state set) the database lacks; returns the
    versions this call applied. A tuple of migrations is taken for the state set.

    Safe to run from several processes at once (each version is applied exactly once) and
    again at every start (then it returns ``[]``). A database that already has versions this
    code does not know (a newer release migrated it) is left alone and logged.
    """
    database = as_database(db)
    mset = _as_set(migrations)
    _check(mset.migrations)
    applied: list[int] = []
    current = 0
    try:
        with database.transaction(lock=LOCK) as tx:
            _bookkeeping(tx)
            done = {
                row[0]
                for row in tx.execute(
                    "SELECT version FROM schema_migrations WHERE migration_set = ?", (mset.name,)
                )
            }
            if not done and mset.adopt is not None:
                adopted = mset.adopt(tx)
                for migration in mset.migrations:
                    if migration.version <= adopted:
                        _record(tx, mset, migration, " (adopted)")
                        done.add(migration.version)
            for migration in sorted(mset.migrations, key=lambda m: m.version):
                if migration.version in done:
                    continue
                current = migration.version
                for statement in migration.sql[database.dialect]:
                    tx.execute(statement)
                if migration.after is not None:
                    migration.after(tx)
                _record(tx, mset, migration)
                applied.append(migration.version)
    except StoreError:
        raise
    except Exception as exc:
        where = f"at {mset.name} version {current}" if current else "before any migration"
        raise StoreError(f"migrating {database.location} failed {where}: {exc}") from exc
    newer = sorted(v for v in done if v > latest_version(mset))
    if newer:
        log.warning(
            "%s has %s schema versions %s that this release does not know (a newer release "
            "migrated it); continuing with the schema as it is",
            database.location,
            mset.name,
            newer,
        )
    if applied:
        log.info(
            "migrated %s: applied %s schema versions %s", database.location, mset.name, applied
        )
    if mset.name == STATE.name:
        database._schema_checked = True
    return applied


def _record(tx: Database, mset: MigrationSet, migration: Migration, note: str = "") -> None:
    tx.execute(
        "INSERT INTO schema_migrations (migration_set, version, name, applied_at) "
        "VALUES (?, ?, ?, ?)",
        (mset.name, migration.version, migration.name + note, time.time()),
    )


def ensure_schema(db: StoreLike) -> Database:
    """``db`` as a :class:`Database`, migrated (once per Database object; later calls are free).

    The fact stores call this, so a store on a fresh database works without a separate step.
    """
    database = as_database(db)
    if not database._schema_checked:
        migrate(database)
    return database


def applied_versions(db: StoreLike, migration_set: str = STATE.name) -> list[int]:
    """The versions of a set recorded in ``schema_migrations`` (empty before the first)."""
    database = as_database(db)
    try:
        if not database.table_exists("schema_migrations"):
            return []
        columns = {
            r[0] for r in database.execute(_COLUMNS[database.dialect], ("schema_migrations",))
        }
        if "migration_set" not in columns:  # a release before migration sets: the state set's
            if migration_set != STATE.name:
                return []
            rows = database.execute("SELECT version FROM schema_migrations ORDER BY version")
        else:
            rows = database.execute(
                "SELECT version FROM schema_migrations WHERE migration_set = ? ORDER BY version",
                (migration_set,),
            )
    except Exception as exc:
        raise StoreError(f"cannot read the schema version of {database.location}: {exc}") from exc
    return [row[0] for row in rows]


def _check(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions) or any(v < 1 for v in versions):
        raise StoreError(f"migration versions must be unique positive numbers: {versions}")
