"""One use per SSO form: remember accepted replay keys until their window closes.

Heroku's SSO tokens are deterministic, so a captured form verifies again until its timestamp goes
stale. :meth:`ReplayGuard.claim` records the form's replay key with a single atomic statement, so
exactly one claim wins even when several processes share the SQLite file.
"""

from __future__ import annotations

import math
import sqlite3

import sqlite_utils

from authz.clock import Clock

__all__ = ["ReplayGuard"]

_TABLE = "sso_replay"
_PURGE_INTERVAL = 60.0
_MAX_KEY_LENGTH = 256
_GRACE = 60.0
"""A key is kept at least this long after its claim, even if its window closed meanwhile: a form
verified just before the window closed and claimed just after must still be claimable only once."""

_SCHEMA = (
    f"""
    CREATE TABLE IF NOT EXISTS {_TABLE} (
        replay_key TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    )
    """,
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_expires_at ON {_TABLE} (expires_at)",
)


def _write(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    """Run one write statement and return its rowcount.

    Works on the autocommit connections :func:`authz.store.open_database` makes, joins a
    transaction the caller already has open, and commits the implicit transaction that a
    connection in the sqlite3 module's legacy mode would otherwise leave open.
    """
    outer = conn.in_transaction
    rowcount = conn.execute(sql, params).rowcount
    if not outer and conn.in_transaction:
        conn.commit()
    return rowcount


class ReplayGuard:
    """Claims of SSO replay keys (``SsoLogin.replay_key``), stored in ``sso_replay``."""

    def __init__(self, db: sqlite_utils.Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._next_purge = float("-inf")
        for statement in _SCHEMA:
            _write(db.conn, statement, ())

    def claim(self, replay_key: str, expires_at: float) -> bool:
        """Record ``replay_key`` until ``expires_at``; False if it is already claimed and live.

        A key whose retention has passed counts as unclaimed: the form it came from is stale by
        then, so verification refuses it before it gets here. Retention is ``expires_at``, but at
        least a minute after the claim (see ``_GRACE``).
        """
        if not replay_key or len(replay_key) > _MAX_KEY_LENGTH:
            raise ValueError("replay_key must be a non-empty string of at most 256 characters")
        if not math.isfinite(expires_at):
            raise ValueError(f"expires_at={expires_at!r} must be a finite number of Unix seconds")
        now = self._clock()
        self._maybe_purge(now)
        # One statement, so it is atomic across connections and processes: insert the key, or
        # take over a row whose window has closed; a live row is left alone (rowcount 0).
        claimed = _write(
            self._db.conn,
            f"""
            INSERT INTO {_TABLE} (replay_key, expires_at) VALUES (?, ?)
            ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at
            WHERE {_TABLE}.expires_at < ?
            """,
            (replay_key, max(float(expires_at), now + _GRACE), now),
        )
        return claimed == 1

    def purge_expired(self) -> int:
        """Delete every key whose window has closed; returns how many were deleted."""
        now = self._clock()
        self._next_purge = now + _PURGE_INTERVAL
        return _write(self._db.conn, f"DELETE FROM {_TABLE} WHERE expires_at < ?", (now,))

    def _maybe_purge(self, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_INTERVAL
            _write(self._db.conn, f"DELETE FROM {_TABLE} WHERE expires_at < ?", (now,))
