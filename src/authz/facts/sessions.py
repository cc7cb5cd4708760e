"""Sessions issued after a verified Heroku SSO login.

A session carries identity only (the Heroku user id and the add-on resource it was opened for);
what that user may do is decided afresh from the app's current access list on every request, as
Heroku requires. The bearer token is shown to the caller once and never stored: the table is keyed
by its SHA-256, so a copy of the database does not contain a usable token. ``session_id`` is a
separate random id that is safe to log. ``email`` is display data and never a key.
``token_kind`` records which Heroku SSO token verified the login (``sha256``; ``sha1`` only in the
legacy mode; ``unknown`` for sessions issued before it was recorded), so policies can tell them
apart. Expired sessions are deleted by :meth:`SessionStore.purge_expired`, which the server runs
on a schedule.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from authz.clock import Clock
from authz.store import StoreLike, ensure_schema

__all__ = ["TOKEN_PREFIX", "Session", "SessionStore"]

TOKEN_PREFIX: Final = "azs_"
"""Bearer tokens start with this, so a leaked one is recognisable (e.g. by secret scanners, and
by the audit log's redaction, authz.decide). Every token ever issued has it."""
SESSION_ID_PREFIX: Final = "ses_"
DEFAULT_TTL: Final = 8 * 3600.0
_MAX_FIELD_LENGTH = 1024

_TABLE = "sessions"
_COLUMNS = "session_id, user_id, resource_id, email, issued_at, expires_at, revoked_at, token_kind"
# The table is created by schema migration 2, token_kind by 5 (authz.store.migrations).

IssuedKind = Literal["sha256", "sha1"]
"""The SSO token kinds a session can be issued for (authz.facts.sso.TokenKind)."""


@dataclass(frozen=True)
class Session:
    """A session as stored; it holds no token, so it is safe to log."""

    session_id: str
    user_id: str
    resource_id: str
    email: str
    """Display only: never used to decide anything."""
    issued_at: float
    expires_at: float
    revoked_at: float | None
    token_kind: str
    """``sha256``, ``sha1`` or ``unknown`` (issued before the kind was recorded)."""


class SessionStore:
    """Sessions in the ``sessions`` table (SQLite or PostgreSQL).

    Every call is one statement on the shared table, so a session issued or revoked through one
    replica is seen by every other at once.
    """

    def __init__(self, db: StoreLike, clock: Clock, ttl: float = DEFAULT_TTL) -> None:
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ttl={ttl!r} must be a positive number of seconds")
        self._db = ensure_schema(db)
        self._clock = clock
        self._ttl = float(ttl)

    def issue(
        self, user_id: str, resource_id: str, email: str, *, token_kind: IssuedKind
    ) -> tuple[str, Session]:
        """Start a session; returns the bearer token (shown once, never stored) and the session.

        ``token_kind`` is the SSO token that verified the login (``sha256`` or ``sha1``).
        """
        _require("user_id", user_id)
        if token_kind not in ("sha256", "sha1"):
            raise ValueError(f"token_kind={token_kind!r} must be 'sha256' or 'sha1'")
        _require("resource_id", resource_id)
        if not isinstance(email, str) or len(email) > _MAX_FIELD_LENGTH:
            raise ValueError(f"email must be text of at most {_MAX_FIELD_LENGTH} characters")
        _storable("email", email)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(
            session_id=SESSION_ID_PREFIX + secrets.token_hex(16),
            user_id=user_id,
            resource_id=resource_id,
            email=email,
            issued_at=now,
            expires_at=now + self._ttl,
            revoked_at=None,
            token_kind=token_kind,
        )
        self._db.execute(
            f"INSERT INTO {_TABLE} (token_sha256, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _token_hash(token),
                session.session_id,
                session.user_id,
                session.resource_id,
                session.email,
                session.issued_at,
                session.expires_at,
                session.revoked_at,
                session.token_kind,
            ),
        )
        return token, session

    def resolve(self, token: str) -> Session | None:
        """The live session for ``token``; None if unknown, expired or revoked.

        The same work whatever the token looks like: hash it, one lookup by the hash (so a
        token is looked up whether or not it carries ``TOKEN_PREFIX``).
        """
        now = self._clock()
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM {_TABLE} WHERE token_sha256 = ?", (_token_hash(token),)
        ).fetchone()
        if row is None:
            return None
        session = Session(*row)
        if session.revoked_at is not None or now >= session.expires_at:
            return None
        return session

    def revoke(self, token: str) -> bool:
        """End the session for ``token``; True if this call ended a live session."""
        now = self._clock()
        changed = self._db.execute(
            f"UPDATE {_TABLE} SET revoked_at = ? "
            "WHERE token_sha256 = ? AND revoked_at IS NULL AND expires_at > ?",
            (now, _token_hash(token), now),
        ).rowcount
        return changed > 0

    def revoke_for_resource(self, resource_id: str) -> int:
        """End every live session opened for ``resource_id`` (e.g. on deprovision); how many."""
        now = self._clock()
        return self._db.execute(
            f"UPDATE {_TABLE} SET revoked_at = ? "
            "WHERE resource_id = ? AND revoked_at IS NULL AND expires_at > ?",
            (now, resource_id, now),
        ).rowcount

    def purge_expired(self) -> int:
        """Delete sessions past their expiry (revoked ones go when they expire); how many."""
        return self._db.execute(
            f"DELETE FROM {_TABLE} WHERE expires_at <= ?", (self._clock(),)
        ).rowcount


def _token_hash(token: str) -> str:
    # surrogatepass: hashing never raises, whatever text arrives.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _require(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD_LENGTH:
        raise ValueError(f"{name} must be non-empty text of at most {_MAX_FIELD_LENGTH} characters")
    _storable(name, value)


def _storable(name: str, value: str) -> None:
    """Both backends store it as it is: PostgreSQL text holds no NUL, neither lone surrogates."""
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode text") from None
