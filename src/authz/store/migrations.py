"""Versioned schema migrations, the same list for SQLite and PostgreSQL.

``schema_migrations`` records every applied version. :func:`migrate` applies the missing ones, in
order, in one write transaction that first takes the migration lock (PostgreSQL: an advisory lock
taken before anything else, SQLite: ``BEGIN IMMEDIATE``), so replicas starting at the same moment
apply each version exactly once and the others wait and find nothing left to do. DDL is
transactional on both backends: a failing migration leaves no trace.

Adding one: append a :class:`Migration` with the next version; never edit an applied one. Write
each statement once with ``{FLOAT}`` / ``{BYTES}`` where the column types differ, or give a text
per dialect. Version 1-4 use ``IF NOT EXISTS`` so that a ``state.db`` made before migrations
existed is adopted as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from authz.store.base import Database, Dialect, StoreError
from authz.store.sqlite import StoreLike, as_database

__all__ = [
    "MIGRATIONS",
    "Migration",
    "applied_versions",
    "ensure_schema",
    "latest_version",
    "migrate",
    "portable",
]

log = logging.getLogger("authz.store")

LOCK = "authz:schema-migrations"

_TYPES: Mapping[Dialect, Mapping[str, str]] = {
    "sqlite": {"{FLOAT}": "REAL", "{BYTES}": "BLOB"},
    "postgresql": {"{FLOAT}": "DOUBLE PRECISION", "{BYTES}": "BYTEA"},
}


def portable(*statements: str) -> dict[Dialect, tuple[str, ...]]:
    """The same statements for both dialects, with ``{FLOAT}`` and ``{BYTES}`` filled in
    (SQLite's REAL is 8 bytes; PostgreSQL's REAL would be 4, too few for Unix timestamps)."""

    def render(dialect: Dialect, sql: str) -> str:
        for placeholder, type_name in _TYPES[dialect].items():
            sql = sql.replace(placeholder, type_name)
        return sql

    return {d: tuple(render(d, s) for s in statements) for d in ("sqlite", "postgresql")}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: Mapping[Dialect, tuple[str, ...]]
    """The statements, one text per dialect (see :func:`portable`)."""


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

_BOOKKEEPING = portable(
    """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at {FLOAT} NOT NULL
    )
    """
)


def latest_version(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    return max(m.version for m in migrations)


def migrate(db: StoreLike, migrations: tuple[Migration, ...] | None = None) -> list[int]:
    """Apply every migration the database lacks; returns the versions this call applied.

    Safe to run from several processes at once (each version is applied exactly once) and
    again at every start (then it returns ``[]``). A database that already has versions this
    code does not know (a newer release migrated it) is left alone and logged.
    """
    database = as_database(db)
    migrations = MIGRATIONS if migrations is None else migrations
    _check(migrations)
    applied: list[int] = []
    current = 0
    try:
        with database.transaction(lock=LOCK) as tx:
            for statement in _BOOKKEEPING[database.dialect]:
                tx.execute(statement)
            done = {row[0] for row in tx.execute("SELECT version FROM schema_migrations")}
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version in done:
                    continue
                current = migration.version
                for statement in migration.sql[database.dialect]:
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied.append(migration.version)
    except StoreError:
        raise
    except Exception as exc:
        where = f"at version {current}" if current else "before any migration"
        raise StoreError(f"migrating {database.location} failed {where}: {exc}") from exc
    newer = sorted(v for v in done if v > latest_version(migrations))
    if newer:
        log.warning(
            "%s has schema versions %s that this release does not know (a newer release "
            "migrated it); continuing with the schema as it is",
            database.location,
            newer,
        )
    if applied:
        log.info("migrated %s: applied schema versions %s", database.location, applied)
    database._schema_checked = True
    return applied


def ensure_schema(db: StoreLike) -> Database:
    """``db`` as a :class:`Database`, migrated (once per Database object; later calls are free).

    The fact stores call this, so a store on a fresh database works without a separate step.
    """
    database = as_database(db)
    if not database._schema_checked:
        migrate(database)
    return database


def applied_versions(db: StoreLike) -> list[int]:
    """The versions recorded in ``schema_migrations`` (empty before the first migration)."""
    database = as_database(db)
    exists = (
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        if database.dialect == "sqlite"
        else "SELECT COUNT(*) FROM (SELECT to_regclass('schema_migrations') AS t) AS r "
        "WHERE t IS NOT NULL"
    )
    try:
        if not database.execute(exists).scalar():
            return []
        rows = database.execute("SELECT version FROM schema_migrations ORDER BY version")
    except Exception as exc:
        raise StoreError(f"cannot read the schema version of {database.location}: {exc}") from exc
    return [row[0] for row in rows]


def _check(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions) or any(v < 1 for v in versions):
        raise StoreError(f"migration versions must be unique positive numbers: {versions}")
