"""Add-on webhooks: subscriptions, events, and signed deliveries to the partner's receiver.

Sources: Dev Center "Using Webhooks as an Add-on Partner" and "Webhook Events"; Heroku's own
heroku/webhooks-docs (README "Partner Event Includes", the text the Dev Center article grew from);
the Platform API schema definitions ``add-on-webhook``, ``app-webhook``, ``app-webhook-delivery``,
``app-webhook-event``.

- Subscribe with ``POST /addons/{id}/webhooks`` ``{include, level, url, secret?, authorization?}``
  (no other field: the schema says ``additionalProperties: false``), with the add-on's own token.
- Event types offered to add-on partners (heroku/webhooks-docs README): ``api:addon-attachment``,
  ``api:addon``, ``api:app``, ``api:build``, ``api:collaborator``, ``api:domain``, ``api:dyno``,
  ``api:formation``, ``api:release``, ``api:sni-endpoint``, ``api:ssl-endpoint``. So collaborator
  events ARE offered to add-on partners. There is no team or team-member event type at all: team
  membership changes reach a partner only through the access-list TTL.
- The simulator emits the four that change who may use an add-on or what it is: ``api:addon``
  (plan change, deprovision), ``api:addon-attachment`` (destroyed at deprovision), ``api:app``
  (rename, transfer) and ``api:collaborator`` (added, role or permissions changed, removed). It
  accepts subscriptions to the others but never has such events to send.
- Each delivery is an HTTP POST of the event JSON with ``Heroku-Webhook-Hmac-SHA256`` = base64
  HMAC-SHA256 of the raw body under the subscription's ``secret`` and, when one was given,
  ``Authorization`` = the subscription's ``authorization``. Without a ``secret`` Heroku generates
  one and returns it once, in the ``Heroku-Webhook-Secret`` response header.
- ``notify`` makes one attempt; ``sync`` retries until a 2xx, "180 times over roughly seven days,
  delay increasing exponentially until it reaches an hour" (heroku/webhooks-docs), and deliveries of
  one subscription stay in order (a retrying delivery holds back the later ones).

Choices made where Heroku's documentation is silent, written down here:

- Retry delays run in real time, ``retry_base`` seconds doubling up to ``retry_cap`` (defaults
  1 s and 3600 s; tests shrink both), at most ``max_attempts`` (180) attempts.
- A delivery attempt waits ``timeout`` seconds (10) for the receiver; redirects are not followed;
  any status outside 2xx, a timeout or a refused connection is a failed attempt.
- The simulator also sends ``Heroku-Webhook-Id: <delivery id>`` (the documents read show only the
  two headers above; receivers should deduplicate on the body's event ``id``, which stays the same
  across attempts, while ``webhook_metadata.attempt.id`` changes with each attempt).
- ``http://`` receiver URLs are accepted (loopback development); Heroku requires ``https``.
- Events go to the add-on's subscriptions when they concern the add-on itself (``api:addon``,
  ``api:addon-attachment``) or the app the add-on belongs to at that moment (``api:app``,
  ``api:collaborator``). Deprovisioning deletes the add-on's subscriptions after its last events.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from authz.devtools.heroku_sim.http import Reply
from authz.devtools.heroku_sim.world import Addon, World, WorldEvent, timestamp

PARTNER_INCLUDES = (
    "api:addon-attachment",
    "api:addon",
    "api:app",
    "api:build",
    "api:collaborator",
    "api:domain",
    "api:dyno",
    "api:formation",
    "api:release",
    "api:sni-endpoint",
    "api:ssl-endpoint",
)
SIMULATED_INCLUDES = ("api:addon", "api:addon-attachment", "api:app", "api:collaborator")
LEVELS = ("notify", "sync")
HEROKU_MEDIA = "application/vnd.heroku+json; version=3"


def signature(secret: str, body: bytes) -> str:
    """``Heroku-Webhook-Hmac-SHA256``: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass
class Subscription:
    id: str
    addon_id: str
    include: list[str]
    level: str
    url: str
    secret: str
    authorization: str | None
    created_at: str
    updated_at: str


@dataclass
class Event:
    id: str
    include: str
    addon_id: str
    payload: dict[str, Any]
    created_at: str


@dataclass
class Delivery:
    id: str
    event: Event
    subscription: Subscription
    created_at: str
    updated_at: str
    status: str = "pending"
    num_attempts: int = 0
    due: float = 0.0  # monotonic time of the next attempt
    next_attempt_at: str | None = None
    last_attempt: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


class Webhooks:
    """Subscriptions and a delivery thread; world-facing methods run under the world lock."""

    def __init__(
        self,
        world: World,
        *,
        retry_base: float = 1.0,
        retry_cap: float = 3600.0,
        max_attempts: int = 180,
        timeout: float = 10.0,
    ) -> None:
        if retry_base <= 0 or retry_cap < retry_base or max_attempts < 1 or timeout <= 0:
            raise ValueError("need 0 < retry_base <= retry_cap, max_attempts >= 1, timeout > 0")
        self.world = world
        self.retry_base, self.retry_cap = float(retry_base), float(retry_cap)
        self.max_attempts, self.timeout = int(max_attempts), float(timeout)
        self.subscriptions: dict[str, Subscription] = {}
        self.events: dict[str, Event] = {}
        self.deliveries: dict[str, Delivery] = {}
        self._queues: dict[str, deque[Delivery]] = {}  # per subscription, in order
        self._wake = threading.Condition(world.lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        world.listeners.append(self.on_event)

    # -- the API (the caller has checked the token belongs to this add-on) -----------------

    def create(self, addon: Addon, doc: Any) -> tuple[dict[str, Any], dict[str, str]]:
        fields = self._validate(doc, partial=False)
        generated = "secret" not in fields or fields["secret"] is None
        secret = secrets.token_hex(30) if generated else str(fields["secret"])
        now = self.world.now()
        sub = Subscription(
            id=str(uuid.uuid4()),
            addon_id=addon.id,
            include=list(fields["include"]),
            level=str(fields["level"]),
            url=str(fields["url"]),
            secret=secret,
            authorization=fields.get("authorization"),
            created_at=now,
            updated_at=now,
        )
        self.subscriptions[sub.id] = sub
        headers = {"Heroku-Webhook-Secret": secret} if generated else {}
        return self.json(sub), headers

    def update(self, addon: Addon, webhook_id: str, doc: Any) -> dict[str, Any]:
        sub = self.find(addon, webhook_id)
        fields = self._validate(doc, partial=True)
        for key, value in fields.items():
            setattr(sub, key, list(value) if key == "include" else value)
        sub.updated_at = self.world.now()
        return self.json(sub)

    def find(self, addon: Addon, webhook_id: str) -> Subscription:
        sub = self.subscriptions.get(webhook_id)
        if sub is None or sub.addon_id != addon.id:
            raise Reply(404, "not_found", "Couldn't find that webhook.")
        return sub

    def delete(self, addon: Addon, webhook_id: str) -> dict[str, Any]:
        sub = self.find(addon, webhook_id)
        del self.subscriptions[sub.id]
        return self.json(sub)

    def delete_all(self, addon_id: str) -> int:
        gone = [s for s in self.subscriptions.values() if s.addon_id == addon_id]
        for sub in gone:
            del self.subscriptions[sub.id]
        return len(gone)

    def listing(self, addon: Addon) -> list[dict[str, Any]]:
        subs = [s for s in self.subscriptions.values() if s.addon_id == addon.id]
        return [self.json(s) for s in sorted(subs, key=lambda s: s.id)]

    def json(self, sub: Subscription) -> dict[str, Any]:
        addon = self.world.addons[sub.addon_id]
        return {
            "addon": {"id": addon.id, "name": addon.name},
            "created_at": sub.created_at,
            "id": sub.id,
            "include": list(sub.include),
            "level": sub.level,
            "updated_at": sub.updated_at,
            "url": sub.url,
        }

    def delivery_json(self, d: Delivery) -> dict[str, Any]:
        return {
            "created_at": d.created_at,
            "event": {"id": d.event.id, "include": d.event.include},
            "id": d.id,
            "last_attempt": d.last_attempt,
            "next_attempt_at": d.next_attempt_at,
            "num_attempts": d.num_attempts,
            "status": d.status,
            "updated_at": d.updated_at,
            "webhook": {"id": d.subscription.id, "level": d.subscription.level},
        }

    def event_json(self, e: Event) -> dict[str, Any]:
        return {
            "created_at": e.created_at,
            "id": e.id,
            "include": e.include,
            "payload": {
                k: e.payload[k]
                for k in ("action", "actor", "data", "previous_data", "resource", "version")
            },
            "updated_at": e.created_at,
        }

    def _validate(self, doc: Any, *, partial: bool) -> dict[str, Any]:
        def invalid(message: str) -> Reply:
            return Reply(422, "invalid_params", message)

        if not isinstance(doc, dict):
            raise invalid("The request body must be a JSON object.")
        allowed = {"include", "level", "url", "secret", "authorization"}
        extra = sorted(set(doc) - allowed)
        if extra:
            raise invalid(f"Unknown parameters: {', '.join(extra)}.")
        missing = [] if partial else [k for k in ("include", "level", "url") if k not in doc]
        if missing:
            raise invalid(f"Missing required parameters: {', '.join(missing)}.")
        if "include" in doc:
            include = doc["include"]
            if not isinstance(include, list) or not include:
                raise invalid("include must be a non-empty list of event types.")
            unknown = [i for i in include if i not in PARTNER_INCLUDES]
            if unknown:
                raise invalid(
                    f"Unknown or unavailable event types: {unknown}. Add-on partners may "
                    f"include {', '.join(PARTNER_INCLUDES)}."
                )
        if "level" in doc and doc["level"] not in LEVELS:
            raise invalid("level must be notify or sync.")
        if "url" in doc:
            url = doc["url"]
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise invalid("url must be an http(s) URL.")
        for key in ("secret", "authorization"):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                raise invalid(f"{key} must be a string or null.")
        return dict(doc)

    # -- events ----------------------------------------------------------------------------

    def on_event(self, event: WorldEvent) -> None:
        """Called under the world lock for each change: record and queue its deliveries."""
        targets = []
        for sub in self.subscriptions.values():
            addon = self.world.addons.get(sub.addon_id)
            if addon is None or event.include not in sub.include:
                continue
            if event.addon_id is not None:
                if event.addon_id == addon.id:
                    targets.append(sub)
            elif event.app_id == addon.app_id:
                targets.append(sub)
        if not targets:
            return
        now = self.world.now()
        event_id = str(uuid.uuid4())
        payload = {
            "action": event.action,
            "actor": event.actor,
            "created_at": now,
            "id": event_id,
            "data": event.data,
            "previous_data": event.previous_data,
            "published_at": None,
            "resource": event.include.removeprefix("api:"),
            "sequence": None,
            "updated_at": now,
            "version": HEROKU_MEDIA,
        }
        for sub in targets:
            stored = Event(event_id, event.include, sub.addon_id, payload, now)
            self.events[f"{sub.addon_id}/{event_id}"] = stored
            delivery = Delivery(str(uuid.uuid4()), stored, sub, now, now, due=time.monotonic())
            self.deliveries[delivery.id] = delivery
            self._queues.setdefault(sub.id, deque()).append(delivery)
        self._wake.notify_all()

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- delivery --------------------------------------------------------------------------

    def start(self) -> None:
        with self._wake:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="heroku-sim-webhooks")
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._wake.notify_all()
        if thread is not None:
            thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
            while True:
                with self._wake:
                    delivery = self._next_due()
                    while delivery is None and not self._stopping:
                        self._wake.wait(timeout=self._wait_time())
                        delivery = self._next_due()
                    if self._stopping:
                        return
                    assert delivery is not None
                    body, headers = self._attempt_request(delivery)
                code, error_class = self._post(http, delivery.subscription.url, body, headers)
                with self._wake:
                    self._record(delivery, code, error_class)

    def _next_due(self) -> Delivery | None:
        now = time.monotonic()
        heads = [q[0] for q in self._queues.values() if q]
        due = [d for d in heads if d.due <= now]
        return min(due, key=lambda d: d.due) if due else None

    def _wait_time(self) -> float | None:
        heads = [q[0] for q in self._queues.values() if q]
        if not heads:
            return None
        return max(0.0, min(d.due for d in heads) - time.monotonic())

    def _attempt_request(self, d: Delivery) -> tuple[bytes, dict[str, str]]:
        attempt_id = str(uuid.uuid4())
        d.attempts.append({"id": attempt_id})
        body_doc = {
            **d.event.payload,
            "webhook_metadata": {
                "attempt": {"id": attempt_id},
                "delivery": {"id": d.id},
                "event": {"id": d.event.id, "include": d.event.include},
                "webhook": {"id": d.subscription.id},
            },
        }
        body = json.dumps(body_doc).encode()
        headers = {
            "Content-Type": "application/json",
            "Heroku-Webhook-Hmac-SHA256": signature(d.subscription.secret, body),
            "Heroku-Webhook-Id": d.id,
        }
        if d.subscription.authorization:
            headers["Authorization"] = d.subscription.authorization
        return body, headers

    def _post(
        self, http: httpx.Client, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        try:
            response = http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, type(exc).__name__
        return response.status_code, None

    def _record(self, d: Delivery, code: int | None, error_class: str | None) -> None:
        now = self.world.now()
        ok = code is not None and 200 <= code < 300
        d.num_attempts += 1
        d.last_attempt = {
            "id": d.attempts[-1]["id"],
            "code": code,
            "error_class": error_class,
            "status": "succeeded" if ok else "failed",
            "created_at": now,
            "updated_at": now,
        }
        d.updated_at = now
        queue = self._queues.get(d.subscription.id)
        done = ok or d.subscription.level == "notify" or d.num_attempts >= self.max_attempts
        if done:
            d.status = "succeeded" if ok else "failed"
            d.next_attempt_at = None
            if queue and queue[0] is d:
                queue.popleft()
        else:
            delay = min(self.retry_cap, self.retry_base * 2.0 ** (d.num_attempts - 1))
            d.status = "retrying"
            d.due = time.monotonic() + delay
            d.next_attempt_at = timestamp(self.world.clock() + delay)
        self._wake.notify_all()
