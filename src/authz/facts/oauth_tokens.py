"""Each add-on's Heroku OAuth tokens: encrypted at rest, refreshed before they expire.

:class:`OAuthTokenStore` keeps one row per add-on resource id. The token pair is sealed by a
:class:`Sealer` with AES-256-GCM (``cryptography``'s AESGCM, no hand-written crypto):

- the 256-bit key is derived from the configured key string (``AUTHZ_TOKEN_KEY``) with
  HKDF-SHA256, so any string works as key material; a long random string is expected;
- every write uses a fresh random 96-bit nonce;
- the resource id is the associated data, so a row copied onto another add-on does not decrypt;
- a short key fingerprint is stored beside each row, so a changed key is reported as such rather
  than as corruption.

The same sealing keeps the add-ons' webhook secrets (authz.facts.webhooks), under its own
associated-data prefix, so a sealed token can never be read back as a secret or the other way.

Without a key the store refuses to store or read anything (:class:`TokenKeyMissing`); it never
falls back to plaintext.

Beside the tokens the store keeps the SHA-256 of the provisioning grant code they came from, so
a provisioning call that Heroku delivers again (the same single-use code) is recognised without
spending the code a second time (authz.provisioning).

:class:`TokenManager` hands out a valid access token per add-on: it refreshes when the token is
within ``refresh_margin`` seconds of expiry, and at most one refresh per add-on runs at a time
(concurrent callers share it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from authz.clock import Clock, system_clock
from authz.errors import AuthzError
from authz.facts.heroku import OAuthTokens, PlatformClient, PlatformError
from authz.store import Database, StoreLike, ensure_schema

__all__ = [
    "MIN_KEY_LENGTH",
    "OAuthTokenStore",
    "OAuthTokens",
    "Sealer",
    "TokenKeyMissing",
    "TokenManager",
    "TokenStoreError",
    "grant_digest",
]

T = TypeVar("T")

MIN_KEY_LENGTH: Final = 16
"""Characters of key material required; ``secrets.token_urlsafe(32)`` makes a good key."""

_TABLE: Final = "heroku_oauth_tokens"
# The table is created by schema migration 4, grant_sha256 by 7 (authz.store.migrations).
_AAD_PREFIX: Final = b"authz/heroku-oauth-tokens/v1:"


class TokenStoreError(AuthzError, RuntimeError):
    """Tokens could not be stored or read back; the message says why (never a token)."""

    code = "TOKEN_STORE_ERROR"


class TokenKeyMissing(TokenStoreError):
    """No usable encryption key is configured, so tokens are not stored at all."""

    code = "TOKEN_KEY_MISSING"


def _derive(key: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"authz", info=info).derive(
        key.encode("utf-8")
    )


def grant_digest(code: str) -> str:
    """What is kept of a provisioning grant code: its SHA-256 (hex), never the code."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class Sealer:
    """AES-256-GCM under a key derived from AUTHZ_TOKEN_KEY, bound to a resource id.

    ``what`` names the sealed things in messages (``OAuth tokens``, ``the webhook secret``);
    ``aad_prefix`` keeps each kind of sealed value apart from the others.
    """

    def __init__(self, key: str, *, what: str, aad_prefix: bytes) -> None:
        self.what = what
        self._aad_prefix = aad_prefix
        self._aead: AESGCM | None = None
        self.key_id = ""
        self._key_problem = ""
        if not key:
            self._key_problem = (
                "no token encryption key is configured (set AUTHZ_TOKEN_KEY or "
                f"AUTHZ_TOKEN_KEY_FILE); refusing to keep {what} unencrypted"
            )
        elif len(key) < MIN_KEY_LENGTH:
            self._key_problem = (
                f"the token encryption key (AUTHZ_TOKEN_KEY) is shorter than {MIN_KEY_LENGTH} "
                "characters; use a long random string"
            )
        else:
            self._aead = AESGCM(_derive(key, b"oauth-token-encryption"))
            self.key_id = _derive(key, b"oauth-token-key-id")[:8].hex()

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def cipher(self) -> AESGCM:
        """The cipher; TokenKeyMissing (before anything is spent or stored) without a key."""
        if self._aead is None:
            raise TokenKeyMissing(self._key_problem)
        return self._aead

    def _aad(self, resource_id: str) -> bytes:
        return self._aad_prefix + resource_id.encode("utf-8")

    def seal(self, resource_id: str, plaintext: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of ``plaintext``, bound to ``resource_id``."""
        if not resource_id:
            raise ValueError("resource_id is required")
        cipher = self.cipher()
        nonce = os.urandom(12)  # 96 random bits, fresh for every write
        return nonce, cipher.encrypt(nonce, plaintext, self._aad(resource_id))

    def read(self, db: Database, table: str, resource_id: str) -> bytes | None:
        """The plaintext sealed in ``table``'s row of ``resource_id`` (columns ``key_id``,
        ``nonce``, ``ciphertext``); None when there is no row."""
        self.cipher()
        row = db.execute(
            f"SELECT key_id, nonce, ciphertext FROM {table} WHERE resource_id = ?",
            (resource_id,),
        ).fetchone()
        return None if row is None else self.open(resource_id, *row)

    def open(self, resource_id: str, key_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
        cipher = self.cipher()
        if key_id != self.key_id:
            raise TokenStoreError(
                f"{self.what} of add-on {resource_id} were stored under another encryption key "
                f"(key id {key_id}, configured {self.key_id}); re-provision or restore the key"
            )
        try:
            return cipher.decrypt(bytes(nonce), bytes(ciphertext), self._aad(resource_id))
        except InvalidTag:
            raise TokenStoreError(
                f"{self.what} of add-on {resource_id} failed authentication (tampered or moved)"
            ) from None


class OAuthTokenStore:
    """Per-add-on OAuth tokens (SQLite or PostgreSQL), sealed with AES-256-GCM."""

    def __init__(self, db: StoreLike, key: str, *, clock: Clock = system_clock) -> None:
        self._db = ensure_schema(db)
        self._clock = clock
        self._sealer = Sealer(key, what="OAuth tokens", aad_prefix=_AAD_PREFIX)

    @property
    def enabled(self) -> bool:
        """Whether a usable key is configured (otherwise every operation raises)."""
        return self._sealer.enabled

    def require_key(self) -> None:
        """Raise TokenKeyMissing unless tokens can be stored (before a grant is spent)."""
        self._sealer.cipher()

    def put(self, resource_id: str, tokens: OAuthTokens, *, grant_sha256: str = "") -> None:
        """Store (or replace) an add-on's tokens, encrypted under a fresh nonce, with the digest
        of the grant code they were exchanged for (:func:`grant_digest`)."""
        nonce, ciphertext = self._seal(resource_id, tokens)
        self._db.execute(
            f"INSERT INTO {_TABLE} "
            "(resource_id, key_id, nonce, ciphertext, expires_at, updated_at, grant_sha256) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (resource_id) DO UPDATE SET key_id = excluded.key_id, "
            "nonce = excluded.nonce, ciphertext = excluded.ciphertext, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at, "
            "grant_sha256 = excluded.grant_sha256",
            (
                resource_id,
                self._sealer.key_id,
                nonce,
                ciphertext,
                float(tokens.expires_at),
                self._clock(),
                grant_sha256 or None,
            ),
        )

    def replace(self, resource_id: str, tokens: OAuthTokens) -> bool:
        """Replace an add-on's stored tokens (a refresh); False, storing nothing, when none are
        stored any more (the add-on was deprovisioned while the refresh was under way)."""
        nonce, ciphertext = self._seal(resource_id, tokens)
        updated = self._db.execute(
            f"UPDATE {_TABLE} SET key_id = ?, nonce = ?, ciphertext = ?, expires_at = ?, "
            "updated_at = ? WHERE resource_id = ?",
            (
                self._sealer.key_id,
                nonce,
                ciphertext,
                float(tokens.expires_at),
                self._clock(),
                resource_id,
            ),
        )
        return updated.rowcount == 1

    def _seal(self, resource_id: str, tokens: OAuthTokens) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of the token pair, bound to ``resource_id``."""
        plaintext = json.dumps(
            {
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "expires_at": tokens.expires_at,
                "user_id": tokens.user_id,
            }
        ).encode("utf-8")
        return self._sealer.seal(resource_id, plaintext)

    def get(self, resource_id: str) -> OAuthTokens | None:
        """An add-on's tokens, or None when none are stored."""
        plaintext = self._sealer.read(self._db, _TABLE, resource_id)
        if plaintext is None:
            return None
        doc: dict[str, Any] = json.loads(plaintext)
        return OAuthTokens(
            access_token=doc["access_token"],
            refresh_token=doc["refresh_token"],
            expires_at=float(doc["expires_at"]),
            user_id=doc.get("user_id", ""),
        )

    def from_grant(self, resource_id: str, code: str) -> bool:
        """Whether the stored tokens were exchanged for this very grant code (a redelivered
        provisioning call); compared in constant time."""
        row = self._db.execute(
            f"SELECT grant_sha256 FROM {_TABLE} WHERE resource_id = ?", (resource_id,)
        ).fetchone()
        if row is None or not row[0]:
            return False
        return hmac.compare_digest(str(row[0]).encode(), grant_digest(code).encode())

    def delete(self, resource_id: str) -> bool:
        """Forget an add-on's tokens (deprovisioning). True when a row was removed."""
        deleted = self._db.execute(f"DELETE FROM {_TABLE} WHERE resource_id = ?", (resource_id,))
        return deleted.rowcount > 0

    def has(self, resource_id: str) -> bool:
        """Whether tokens are stored for an add-on (no decryption, works without a key)."""
        row = self._db.execute(
            f"SELECT 1 FROM {_TABLE} WHERE resource_id = ?", (resource_id,)
        ).fetchone()
        return row is not None


class TokenManager:
    """A valid access token per add-on: stored, refreshed ahead of expiry, single-flight."""

    def __init__(
        self,
        store: OAuthTokenStore,
        client: PlatformClient,
        clock: Clock = system_clock,
        refresh_margin: float = 300.0,
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self._store = store
        self._client = client
        self._clock = clock
        self._margin = float(refresh_margin)
        self._inflight: dict[str, asyncio.Task[OAuthTokens]] = {}

    async def register_grant(self, resource_id: str, code: str) -> OAuthTokens:
        """Exchange a provisioning grant code (at once: it expires in minutes) and store it.

        Heroku delivers provisioning at least once: when the exchange is refused (the code was
        already used by the first delivery) and tokens are stored for this add-on, those are
        kept and returned.
        """
        self._store.require_key()  # refuse before spending the single-use code
        try:
            tokens = await self._client.exchange_grant(code)
        except PlatformError as exc:
            stored = self._store.get(resource_id) if exc.failure == "unauthorized" else None
            if stored is None:
                raise
            return stored
        self._store.put(resource_id, tokens, grant_sha256=grant_digest(code))
        return tokens

    async def with_token(self, resource_id: str, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(access_token)`` with the add-on's token; when Heroku refuses the token (401:
        revoked or expired early), refresh once (shared with concurrent callers) and retry once."""
        token = await self.access_token(resource_id)
        try:
            return await call(token)
        except PlatformError as exc:
            if exc.failure != "unauthorized":
                raise
        return await call(await self.on_unauthorized(resource_id, failed_token=token))

    def _stored(self, resource_id: str) -> OAuthTokens:
        tokens = self._store.get(resource_id)
        if tokens is None:
            raise PlatformError("no_tokens", f"no OAuth tokens stored for add-on {resource_id}")
        return tokens

    async def access_token(self, resource_id: str) -> str:
        """The add-on's access token, refreshed first when it expires within the margin."""
        task = self._inflight.get(resource_id)
        if task is not None:
            return (await asyncio.shield(task)).access_token
        tokens = self._stored(resource_id)
        if self._clock() < tokens.expires_at - self._margin:
            return tokens.access_token
        return (await self._refresh(resource_id)).access_token

    async def on_unauthorized(self, resource_id: str, failed_token: str | None = None) -> str:
        """Heroku refused an access token: refresh once and return the new one.

        When ``failed_token`` is given and another caller already replaced it, the stored
        token is returned without a second refresh.
        """
        task = self._inflight.get(resource_id)
        if task is not None:
            return (await asyncio.shield(task)).access_token
        if failed_token is not None:
            current = self._stored(resource_id)
            if not hmac.compare_digest(current.access_token.encode(), failed_token.encode()):
                return current.access_token
        return (await self._refresh(resource_id)).access_token

    async def _refresh(self, resource_id: str) -> OAuthTokens:
        task = self._inflight.get(resource_id)
        if task is None:
            task = asyncio.create_task(self._do_refresh(resource_id))
            self._inflight[resource_id] = task
            task.add_done_callback(lambda t: self._forget(resource_id, t))
        # Shielded: a caller giving up (its deadline) must not abort a refresh half way.
        return await asyncio.shield(task)

    def _forget(self, resource_id: str, task: asyncio.Task[OAuthTokens]) -> None:
        if self._inflight.get(resource_id) is task:
            del self._inflight[resource_id]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is not logged as lost

    async def _do_refresh(self, resource_id: str) -> OAuthTokens:
        current = self._stored(resource_id)
        fresh = await self._client.refresh(current.refresh_token)
        # Only over the stored row: a deprovisioning during the refresh deleted it for good.
        if not self._store.replace(resource_id, fresh):
            raise PlatformError(
                "no_tokens",
                f"the OAuth tokens of add-on {resource_id} were deleted during a refresh "
                "(deprovisioned)",
            )
        return fresh
