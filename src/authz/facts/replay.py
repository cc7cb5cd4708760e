"""One use per SSO form: remember accepted replay keys until their window closes.

Heroku's SSO tokens are deterministic, so a captured form verifies again until its timestamp goes
stale. :meth:`ReplayGuard.claim` records the form's replay key with a single atomic statement, so
exactly one claim wins even when several processes share the SQLite file, or several replicas
share the PostgreSQL database.
"""

from __future__ import annotations

import math

from authz.clock import Clock
from authz.config import MAX_SSO_FUTURE_SECONDS, MAX_SSO_PAST_SECONDS
from authz.store import StoreLike, ensure_schema

__all__ = ["RETENTION", "ReplayGuard"]

_TABLE = "sso_replay"
_PURGE_INTERVAL = 60.0
_MAX_KEY_LENGTH = 256
RETENTION = MAX_SSO_PAST_SECONDS + MAX_SSO_FUTURE_SECONDS
"""A key is kept at least this long after its claim, whatever AUTHZ_SSO_MAX_AGE says now: a form
may be up to 60 s ahead of this clock and is accepted until 300 s past its timestamp under the
largest window the service allows, so raising the configured window later (or a replica with a
larger one) can never make a claimed form claimable again. It also covers a form verified just
before its window closed and claimed just after."""

# The table is created by schema migration 3 (authz.store.migrations).


class ReplayGuard:
    """Claims of SSO replay keys (``SsoLogin.replay_key``), stored in ``sso_replay``."""

    def __init__(self, db: StoreLike, clock: Clock) -> None:
        self._db = ensure_schema(db)
        self._clock = clock
        self._next_purge = float("-inf")

    def claim(self, replay_key: str, expires_at: float) -> bool:
        """Record ``replay_key`` until ``expires_at``; False if it is already claimed and live.

        A key whose retention has passed counts as unclaimed: the form it came from is stale by
        then under any configuration, so verification refuses it before it gets here. Retention
        is ``expires_at``, but at least ``RETENTION`` (360 s) after the claim.
        """
        if not replay_key or len(replay_key) > _MAX_KEY_LENGTH:
            raise ValueError("replay_key must be a non-empty string of at most 256 characters")
        if not math.isfinite(expires_at):
            raise ValueError(f"expires_at={expires_at!r} must be a finite number of Unix seconds")
        now = self._clock()
        self._maybe_purge(now)
        # One statement, so it is atomic across connections, processes and replicas: insert the
        # key, or take over a row whose window has closed; a live row is left alone (rowcount 0).
        # On PostgreSQL a concurrent insert of the same key waits for the first to commit and
        # then sees its live row, so it too is left alone.
        claimed = self._db.execute(
            f"""
            INSERT INTO {_TABLE} (replay_key, expires_at) VALUES (?, ?)
            ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at
            WHERE {_TABLE}.expires_at < ?
            """,
            (replay_key, max(float(expires_at), now + RETENTION), now),
        ).rowcount
        return claimed == 1

    def purge_expired(self) -> int:
        """Delete every key whose window has closed; returns how many were deleted."""
        now = self._clock()
        self._next_purge = now + _PURGE_INTERVAL
        return self._db.execute(f"DELETE FROM {_TABLE} WHERE expires_at < ?", (now,)).rowcount

    def _maybe_purge(self, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_INTERVAL
            self._db.execute(f"DELETE FROM {_TABLE} WHERE expires_at < ?", (now,))
