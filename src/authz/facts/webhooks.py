"""Heroku add-on webhooks: each add-on's subscription and signing secret, and what a delivery says.

Sources: heroku/webhooks-docs README ("Using Webhooks as an Add-on Partner", the text of the Dev
Center article of that name): a partner subscribes with ``POST /addons/{id}/webhooks`` and the
add-on's own token; ``include`` names event types from "Partner Event Includes"; ``level`` is
``notify`` (one attempt) or ``sync`` (retried "180 times over roughly seven days", in order);
every delivery carries ``Heroku-Webhook-Hmac-SHA256``, the base64 HMAC-SHA256 of the raw body
under the subscription's ``secret``; the body's ``id`` is the event's and stays the same across
attempts, while ``webhook_metadata.attempt.id`` changes with each attempt; a receiver answers
2xx (204 is ideal), and the ``url`` "should include the UUID identity of add-on instance for
disambiguation".

Choices made here, where those documents leave it open:

- ``include`` is :data:`INCLUDES`: every partner event type that can change who may use an
  add-on or what it is. ``api:collaborator`` (people added to or removed from the app, their role
  and permissions), ``api:app`` (renames, transfers to another owner), ``api:addon`` (plan
  changes, deprovisioning) and ``api:addon-attachment``. The others (builds, releases, dynos,
  domains, certificates) change neither. There is no event type for team membership at all, so a
  change of team membership reaches authz only when the cached access list expires (the TTL).
- ``level`` is ``sync``: a delivery lost while authz restarts would otherwise leave a removed
  collaborator in for a whole TTL. Heroku retries until the receiver answers 2xx; the receiver
  therefore answers as soon as the signature is checked and the event recorded, and acts after.
  Retries repeat the event id: :data:`DEDUP_RETENTION` covers Heroku's seven days of retries.
- The secret is 32 random bytes (``secrets.token_urlsafe``), one per add-on, chosen by authz (so
  it never travels back in a response header) and sealed at rest like the OAuth tokens.
- The receiver's URL is ``{AUTHZ_PUBLIC_URL}/heroku/webhooks/{resource id}``: the path says whose
  secret to verify with before anything in the body is read.
- No ``authorization`` value is sent: the signature already proves the sender, and a second
  shared secret would be one more to keep.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from authz.clock import Clock, system_clock
from authz.errors import Refusal
from authz.facts.oauth_tokens import Sealer, TokenStoreError
from authz.store import StoreLike, ensure_schema

__all__ = [
    "DEDUP_RETENTION",
    "INCLUDES",
    "LEVEL",
    "RECEIVER_PATH",
    "SIGNATURE_HEADER",
    "Subscription",
    "WebhookEvent",
    "WebhookSubscriptions",
    "receiver_url",
    "signature",
]

INCLUDES: Final = ("api:addon", "api:addon-attachment", "api:app", "api:collaborator")
LEVEL: Final = "sync"
SIGNATURE_HEADER: Final = "Heroku-Webhook-Hmac-SHA256"
RECEIVER_PATH: Final = "/heroku/webhooks"
DEDUP_RETENTION: Final = 8 * 86400.0
"""Seconds an event id is remembered: Heroku's sync retries run for about seven days."""
MAX_EVENT_ID = 128

log = logging.getLogger("authz.facts.webhooks")

_TABLE: Final = "heroku_webhooks"
# The table is created by schema migration 7 (authz.store.migrations).
_AAD_PREFIX: Final = b"authz/heroku-webhook-secret/v1:"
_NO_SECRET: Final = secrets.token_bytes(32)
"""Verifies a delivery for an add-on without a subscription, so that answer takes as long as
any other refusal (the signature check does not tell which add-ons are subscribed)."""


def signature(secret: str, body: bytes) -> str:
    """``Heroku-Webhook-Hmac-SHA256``: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(_mac(secret.encode("utf-8"), body)).decode("ascii")


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def receiver_url(public_url: str, resource_id: str) -> str:
    """Where Heroku delivers an add-on's events (public_url has no trailing slash)."""
    return f"{public_url}{RECEIVER_PATH}/{resource_id}"


@dataclass(frozen=True)
class Subscription:
    """An add-on's subscription as stored; the secret is not part of it."""

    resource_id: str
    webhook_id: str
    url: str
    created_at: float


class WebhookSubscriptions:
    """One subscription per add-on in ``heroku_webhooks``, the secret sealed (AUTHZ_TOKEN_KEY)."""

    def __init__(self, db: StoreLike, key: str, *, clock: Clock = system_clock) -> None:
        self._db = ensure_schema(db)
        self._clock = clock
        self._sealer = Sealer(key, what="the webhook secret", aad_prefix=_AAD_PREFIX)

    @property
    def enabled(self) -> bool:
        return self._sealer.enabled

    def put(self, resource_id: str, webhook_id: str, url: str, secret: str) -> Subscription:
        nonce, ciphertext = self._sealer.seal(resource_id, secret.encode("utf-8"))
        subscription = Subscription(resource_id, webhook_id, url, self._clock())
        self._db.execute(
            f"INSERT INTO {_TABLE} "
            "(resource_id, webhook_id, url, key_id, nonce, ciphertext, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (resource_id) DO UPDATE SET webhook_id = excluded.webhook_id, "
            "url = excluded.url, key_id = excluded.key_id, nonce = excluded.nonce, "
            "ciphertext = excluded.ciphertext, created_at = excluded.created_at",
            (
                resource_id,
                webhook_id,
                url,
                self._sealer.key_id,
                nonce,
                ciphertext,
                subscription.created_at,
            ),
        )
        return subscription

    def get(self, resource_id: str) -> Subscription | None:
        """The add-on's subscription (no decryption, works without a key)."""
        row = self._db.execute(
            f"SELECT resource_id, webhook_id, url, created_at FROM {_TABLE} WHERE resource_id = ?",
            (resource_id,),
        ).fetchone()
        return None if row is None else Subscription(*row)

    def delete(self, resource_id: str) -> bool:
        """Forget an add-on's subscription and its secret. True when a row was removed."""
        deleted = self._db.execute(f"DELETE FROM {_TABLE} WHERE resource_id = ?", (resource_id,))
        return deleted.rowcount > 0

    def verify(self, resource_id: str, body: bytes, header: str | None) -> bool:
        """Whether ``header`` is the signature of ``body`` under the add-on's secret.

        Constant time in the signature. False for a missing or malformed header and for an
        add-on without a subscription (or whose secret cannot be read), never an exception.
        """
        key = self._secret(resource_id)
        expected = _mac(key or _NO_SECRET, body)
        try:
            given = base64.b64decode((header or "").strip(), validate=True)
        except ValueError:
            given = b""
        return hmac.compare_digest(expected, given) and key is not None and header is not None

    def readable(self, resource_id: str) -> bool:
        """Whether the add-on's secret can be read with the configured key."""
        return self._secret(resource_id) is not None

    def _secret(self, resource_id: str) -> bytes | None:
        if not self._sealer.enabled:
            return None
        try:
            return self._sealer.read(self._db, _TABLE, resource_id)
        except TokenStoreError as exc:  # the message names the add-on and key ids, no secret
            log.warning("cannot verify a webhook delivery: %s", exc)
            return None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class WebhookEvent:
    """What one delivery says (the fields authz acts on; the rest of the body is ignored)."""

    event_id: str
    include: str
    """``api:collaborator``, ``api:app``, ``api:addon``, ``api:addon-attachment``, ..."""
    action: str
    """``create``, ``update`` or ``destroy``."""
    data: Mapping[str, Any] = field(default_factory=dict)
    previous_data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: bytes) -> WebhookEvent:
        """The event of a (verified) delivery body; WEBHOOK_MALFORMED when it is not one."""
        try:
            doc = json.loads(body)
        except ValueError:
            raise _malformed("the body is not JSON") from None
        if not isinstance(doc, dict):
            raise _malformed("the body is not a JSON object")
        meta = doc.get("webhook_metadata")
        meta_event = meta.get("event") if isinstance(meta, dict) else None
        meta_event = meta_event if isinstance(meta_event, dict) else {}
        event_id = doc.get("id") or meta_event.get("id")
        if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID:
            raise _malformed(f"the event 'id' is missing or longer than {MAX_EVENT_ID} characters")
        include = meta_event.get("include")
        if not isinstance(include, str):
            resource = doc.get("resource")
            include = f"api:{resource}" if isinstance(resource, str) else ""
        action = doc.get("action")
        data = doc.get("data")
        previous = doc.get("previous_data")
        if not include or not isinstance(action, str) or not isinstance(data, dict):
            raise _malformed("an event needs 'resource' (or its include), 'action' and 'data'")
        return cls(
            event_id,
            include,
            action,
            data,
            previous if isinstance(previous, dict) else {},
        )


def _malformed(problem: str) -> Refusal:
    return Refusal(
        "WEBHOOK_MALFORMED",
        f"the webhook delivery is signed but is not a Heroku event: {problem}",
        invalid_argument=True,
    )
