"""The add-on lifecycle: provisioning, plan changes, deprovisioning, and Heroku's webhook events.

A use case beside authz.decide and authz.login: the gRPC AdminService and the HTTP routes
(authz.web.heroku) both call :class:`Provisioning`, and it calls the stores (off the event loop,
authz.offload), the Platform API and the access-list invalidation bus.

What Heroku does (Dev Center "Add-on Partner API Reference", v3; "Platform API for Partners";
heroku/webhooks-docs "Using Webhooks as an Add-on Partner"):

- The provisioning call carries ``uuid``, ``name``, ``plan``, ``region``, ``callback_url``,
  ``oauth_grant {code, expires_at, type}``, ``options``, ``log_input_url``, ``log_drain_token``:
  no app id. The partner exchanges the grant at once (it expires minutes later, and works once)
  and reads ``GET /addons/{uuid}`` to learn the app. Heroku delivers at least once, and the
  ``uuid`` tells a retry from a new add-on.
- A plan change is ``PUT {base_url}/{uuid}`` ``{plan}``; deprovisioning is
  ``DELETE {base_url}/{uuid}``. Both may also arrive twice.

Choices made here, where those documents are silent:

- **A redelivered provisioning call** (the same grant code) is recognised by the digest of the
  code kept with the tokens (authz.facts.oauth_tokens): the code is not spent again, and the
  call succeeds as the first did (re-reading the add-on from Heroku).
- **A different grant for a registered add-on** is exchanged, and replaces the stored tokens
  once ``GET /addons/{uuid}`` with the new token shows this add-on on its registered app. That
  is how tokens are recovered after AUTHZ_TOKEN_KEY was lost. A grant Heroku refuses leaves the
  stored tokens in place (a late duplicate of an older delivery); one whose token cannot read
  this add-on is refused (``ADDON_GRANT_MISMATCH``) and changes nothing.
- **app_id and app_name** are optional; when given they must be what Heroku answers
  (``ADDON_APP_MISMATCH`` otherwise, registering nothing: a freshly exchanged grant's tokens are
  kept under the uuid, so a corrected retry with the same grant completes). Without a grant an
  add-on can only be registered with an explicit app_id (no Platform API: decisions then deny
  with "no access list").
- **The plan** is kept as the plan's slug (``basic``), as the provisioning and plan-change calls
  send it; ``service:plan`` (how ``GET /addons`` and webhook events name it) is cut to the slug,
  so policies see one spelling in ``resource.addon.plan``.
- **name, callback_url, options, log_input_url, log_drain_token** are accepted and not kept:
  authz uses none of them, and sends its Platform API token only to AUTHZ_HEROKU_API_URL, never
  to a URL that a request names.
- **Webhooks** (authz.facts.webhooks) are subscribed at registration when AUTHZ_PUBLIC_URL is
  set. A subscription that fails does not fail the provisioning (Heroku would undo the add-on
  for it, and the access-list TTL still bounds staleness): it is logged, and the next
  registration of the add-on (a Heroku retry, or an admin repeating it) tries again.
- **Deprovisioning** revokes the add-on's sessions first (at once), then unsubscribes its webhooks
  with the add-on's own token (so before the tokens go; Heroku also drops an add-on's
  subscriptions with it, so a refusal there is only logged), then deletes the tokens and the
  subscription's secret, then drops the app's cached access list on every replica.
- **Webhook events** are acted on after the receiver has answered: collaborator and attachment
  events drop the app's access list (on every replica), app events record a rename and drop the
  list (a transfer changes the owner), add-on events apply a plan change or deprovision. An event
  is acted on only for the add-on whose secret signed it, and only while it is provisioned.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from authz.clock import Clock, system_clock
from authz.errors import AuthzError, ErrorKind, Refusal
from authz.facts.addons import (
    ADDON_UNKNOWN,
    Addon,
    AddonRegistry,
    RegistryError,
    canonical_resource_id,
    require_provisioned,
)
from authz.facts.heroku import AccessList, AddonInfo, PlatformClient, PlatformError
from authz.facts.invalidation import AccessInvalidations
from authz.facts.oauth_tokens import OAuthTokens, OAuthTokenStore, TokenManager, grant_digest
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from authz.facts.webhooks import (
    DEDUP_RETENTION,
    INCLUDES,
    LEVEL,
    WebhookEvent,
    WebhookSubscriptions,
    new_secret,
    receiver_url,
)
from authz.offload import offload

__all__ = [
    "AddonStatus",
    "Deprovisioned",
    "Provisioning",
    "ProvisioningRequest",
    "Registered",
    "WebhookUnverified",
    "plan_slug",
    "renaming",
]

log = logging.getLogger("authz.provisioning")

OAUTH_NOT_CONFIGURED: Final = "OAUTH_NOT_CONFIGURED"
OAUTH_GRANT_FAILED: Final = "OAUTH_GRANT_FAILED"
ADDON_APP_UNKNOWN: Final = "ADDON_APP_UNKNOWN"
ADDON_APP_MISMATCH: Final = "ADDON_APP_MISMATCH"
ADDON_GRANT_MISMATCH: Final = "ADDON_GRANT_MISMATCH"
ADDON_DISCOVERY_FAILED: Final = "ADDON_DISCOVERY_FAILED"
PROVISIONING_MALFORMED: Final = "PROVISIONING_MALFORMED"
WEBHOOK_EVENT_KEY: Final = "heroku-webhook"
"""Replay-guard key prefix of webhook events (authz.facts.replay keeps SSO forms too)."""
EVENT_DRAIN_SECONDS: Final = 5.0
"""At shutdown, how long events already accepted may take to finish before they are cancelled."""


class WebhookUnverified(Refusal):
    """A webhook delivery without a valid signature of a subscribed add-on: nothing is done."""

    def __init__(self) -> None:
        super().__init__(
            "WEBHOOK_SIGNATURE_INVALID",
            "the delivery's Heroku-Webhook-Hmac-SHA256 header is missing or is not the "
            "signature of this body for this add-on; nothing was done",
        )


def plan_slug(plan: str) -> str:
    """``authz:basic`` → ``basic``; a slug stays as it is."""
    return plan.partition(":")[2] if ":" in plan else plan


@dataclass(frozen=True)
class ProvisioningRequest:
    """What Heroku's provisioning call says, as RegisterAddon and the HTTP route take it."""

    resource_id: str
    plan: str
    region: str = ""
    oauth_grant_code: str = ""
    name: str = ""
    callback_url: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    app_id: str = ""
    """Optional: checked against Heroku's answer when there is a grant, else taken as it is."""
    app_name: str = ""

    @classmethod
    def from_heroku(cls, body: Any) -> ProvisioningRequest:
        """Heroku's v3 provisioning body, verbatim. Fields Heroku may add are ignored (the
        reference: "Request bodies MAY contain additional elements ... treated as valid")."""
        if not isinstance(body, dict):
            raise _malformed("the body must be Heroku's provisioning JSON object")
        grant = body.get("oauth_grant")
        if grant is None:
            code = ""
        elif not isinstance(grant, dict) or not isinstance(grant.get("code"), str):
            raise _malformed("oauth_grant must be an object with the grant's 'code'")
        elif grant.get("type", "authorization_code") != "authorization_code":
            raise _malformed("oauth_grant.type must be 'authorization_code'")
        else:
            code = grant["code"]
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise _malformed("options must be an object")
        return cls(
            resource_id=_field(body, "uuid", required=True),
            plan=_field(body, "plan", required=True),
            region=_field(body, "region"),
            oauth_grant_code=code,
            name=_field(body, "name"),
            callback_url=_field(body, "callback_url"),
            options=options,
        )


def _field(body: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _malformed(f"'{name}' must be a {'non-empty ' if required else ''}string")
    return value


def _malformed(problem: str) -> Refusal:
    return Refusal(PROVISIONING_MALFORMED, problem, invalid_argument=True)


@dataclass(frozen=True)
class AddonStatus:
    """An add-on as the admin API shows it."""

    addon: Addon
    has_oauth_tokens: bool
    webhook_subscribed: bool


@dataclass(frozen=True)
class Registered:
    status: AddonStatus
    changed: bool
    """False when the same provisioning arrived again and nothing changed."""


@dataclass(frozen=True)
class Deprovisioned:
    status: AddonStatus
    sessions_revoked: int


class Provisioning:
    """The add-on lifecycle over the registry, sessions, OAuth tokens and webhooks.

    ``client`` and ``tokens`` are None without Platform API credentials: add-ons can then be
    registered only with an explicit app id, and no webhooks are subscribed. ``public_url`` is
    where Heroku reaches the webhook receiver (Settings.public_url, its port resolved once the
    HTTP listener is bound); None subscribes nothing.
    """

    def __init__(
        self,
        *,
        registry: AddonRegistry,
        sessions: SessionStore,
        token_store: OAuthTokenStore,
        subscriptions: WebhookSubscriptions,
        replay: ReplayGuard,
        invalidations: AccessInvalidations | None = None,
        client: PlatformClient | None = None,
        tokens: TokenManager | None = None,
        public_url: str | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.token_store = token_store
        self.subscriptions = subscriptions
        self.replay = replay
        self.invalidations = invalidations
        self.client = client
        self.tokens = tokens
        self.public_url = public_url
        self.clock = clock
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._events: set[asyncio.Task[None]] = set()

    # -- provisioning --------------------------------------------------------------------------

    async def register(self, request: ProvisioningRequest) -> Registered:
        """Provision (or re-provision, idempotently) an add-on from Heroku's call."""
        rid = canonical_resource_id(request.resource_id)
        plan = plan_slug(request.plan)
        async with self._lock(rid):
            current = await offload(self.registry.get, rid)
            if current is not None:
                require_provisioned(current)  # before a grant is spent on it
            exchanged, proof = False, None
            if request.oauth_grant_code:
                exchanged, proof = await self._take_grant(rid, request.oauth_grant_code, current)
            heroku = proof or await self._discover(rid, fresh=exchanged)
            app_id, app_name = request.app_id, request.app_name
            if heroku is not None:
                _check_claims(rid, request, heroku)
                app_id, app_name = heroku.app_id, heroku.app_name
            elif not app_id:
                if current is None:
                    raise Refusal(
                        ADDON_APP_UNKNOWN,
                        "send oauth_grant_code (Heroku's oauth_grant.code) so authz can learn the "
                        "add-on's app from Heroku, or app_id when there is no grant",
                        invalid_argument=True,
                    )
                app_id, app_name = current.app_id, app_name or current.app_name
            addon, changed = await offload(
                self.registry.register, rid, app_id, app_name, plan, request.region
            )
            subscribed = await self._subscribe(rid)
            status = await self._status(addon, subscribed)
        log.info(
            "add-on %s provisioned on app %s (plan %s%s%s)",
            rid,
            app_id,
            plan,
            ", OAuth grant exchanged" if exchanged else "",
            ", webhooks subscribed" if subscribed else "",
        )
        return Registered(status, changed or exchanged)

    async def _take_grant(
        self, rid: str, code: str, current: Addon | None
    ) -> tuple[bool, AddonInfo | None]:
        """Exchange the grant unless it is the one the stored tokens came from.

        Returns (exchanged, what Heroku said of the add-on when that was needed to prove a new
        grant before it replaced stored tokens).
        """
        if self.tokens is None or self.client is None:
            raise Refusal(
                OAUTH_NOT_CONFIGURED,
                "an oauth_grant_code was sent but no Platform API client is configured "
                "(set AUTHZ_HEROKU_CLIENT_SECRET and AUTHZ_TOKEN_KEY)",
            )
        self.token_store.require_key()  # refuse before spending the single-use code
        if await offload(self.token_store.from_grant, rid, code):
            return False, None  # Heroku delivered the same provisioning call again
        stored = await offload(self.token_store.has, rid)
        try:
            fresh = await self.client.exchange_grant(code)
        except PlatformError as exc:
            if exc.failure == "unauthorized" and stored:
                log.info(
                    "add-on %s: Heroku refused a grant (used or expired); the stored tokens stay",
                    rid,
                )
                return False, None
            raise Refusal(
                OAUTH_GRANT_FAILED,
                "Heroku did not exchange the OAuth grant, so the add-on's app cannot be learnt "
                f"and nothing was registered: {exc}",
                kind=_kind_of(exc),
            ) from None
        if not stored:
            # Kept at once: the code is spent, and a retry must find the tokens it bought.
            await offload(self.token_store.put, rid, fresh, grant_sha256=grant_digest(code))
            return True, None
        # A new grant for an add-on with tokens replaces them once it proves to be this add-on's.
        proof = await self._addon_with(rid, fresh)
        if current is not None and proof.app_id != current.app_id:
            raise Refusal(
                ADDON_GRANT_MISMATCH,
                f"the OAuth grant is for an add-on of app {proof.app_id}, but add-on {rid} "
                f"belongs to app {current.app_id}; the stored tokens were kept",
            )
        await offload(self.token_store.put, rid, fresh, grant_sha256=grant_digest(code))
        return True, proof

    async def _addon_with(self, rid: str, tokens: OAuthTokens) -> AddonInfo:
        """GET /addons/{rid} with tokens not stored yet: they must show this very add-on."""
        assert self.client is not None
        try:
            info = await self.client.addon_info(rid, tokens.access_token)
        except PlatformError as exc:
            if exc.kind != "unavailable":
                raise _grant_mismatch(rid, exc) from None
            raise _discovery_failed(rid, exc) from None
        if info.resource_id != rid:
            raise _grant_mismatch(rid, None)
        return info

    async def _discover(self, rid: str, *, fresh: bool) -> AddonInfo | None:
        """What Heroku says of the add-on with its stored tokens (None without any).

        ``fresh``: the tokens were just bought with the request's grant; if they cannot read
        this add-on they belong to another, and are deleted again.
        """
        if self.tokens is None or self.client is None:
            return None
        if not await offload(self.token_store.has, rid):
            return None
        client = self.client
        try:
            info = await self.tokens.with_token(rid, lambda token: client.addon_info(rid, token))
        except PlatformError as exc:
            if fresh and exc.failure in ("forbidden", "not_found"):
                await offload(self.token_store.delete, rid)
                raise _grant_mismatch(rid, exc) from None
            raise _discovery_failed(rid, exc) from None
        if info.resource_id != rid:
            if fresh:
                await offload(self.token_store.delete, rid)
            raise _grant_mismatch(rid, None)
        return info

    # -- plan changes --------------------------------------------------------------------------

    async def change_plan(self, resource_id: str, plan: str) -> AddonStatus:
        """Heroku's plan change (``PUT {base_url}/{uuid}``, or an ``api:addon`` update event).
        Policies see it at once as ``resource.addon.plan``: the registry is read per decision."""
        rid = canonical_resource_id(resource_id)
        async with self._lock(rid):
            addon = await offload(self.registry.change_plan, rid, plan_slug(plan))
            status = await self._status(addon)
        log.info("add-on %s: plan is now %s", rid, addon.plan)
        return status

    # -- deprovisioning ------------------------------------------------------------------------

    async def deprovision(self, resource_id: str) -> Deprovisioned:
        """End an add-on: sessions at once, then its webhooks, tokens and cached access list.

        Repeatable (Heroku may send the DELETE twice): each step that is already done does
        nothing, and a step that failed the first time runs again.
        """
        rid = canonical_resource_id(resource_id)
        async with self._lock(rid):
            try:
                addon = await offload(self.registry.deprovision, rid)
            except RegistryError as exc:
                if exc.code == ADDON_UNKNOWN:
                    # Tokens a registration kept before it was refused go with the uuid.
                    await self._forget(rid)
                raise
            revoked = await offload(self.sessions.revoke_for_resource, rid)
            await self._unsubscribe(rid)
            await self._forget(rid)
            await self.invalidate(addon.app_id)
            status = await self._status(addon, False)
        log.info("add-on %s deprovisioned: %d session(s) revoked", rid, revoked)
        return Deprovisioned(status, revoked)

    async def _forget(self, rid: str) -> None:
        # Heroku's grant ends with the add-on: its Platform API tokens must not outlive it.
        await offload(self.token_store.delete, rid)
        await offload(self.subscriptions.delete, rid)

    # -- access lists --------------------------------------------------------------------------

    async def invalidate(self, app_id: str) -> bool:
        """Drop the app's cached access list here and on every replica."""
        if self.invalidations is None:
            return False
        return await self.invalidations.publish(app_id)

    # -- webhooks ------------------------------------------------------------------------------

    async def _subscribe(self, rid: str) -> bool:
        """Subscribe the add-on's webhooks (once); whether it is subscribed. Never raises."""
        if self.public_url is None or self.tokens is None or self.client is None:
            return False
        if not self.subscriptions.enabled or not await offload(self.token_store.has, rid):
            return False
        url = receiver_url(self.public_url, rid)
        known = await offload(self.subscriptions.get, rid)
        if known is not None and known.url == url:
            if await offload(self.subscriptions.readable, rid):
                return True
            known = None  # its secret is lost with an old AUTHZ_TOKEN_KEY: taken over below
        tokens, client, secret = self.tokens, self.client, new_secret()
        try:
            if known is not None:  # AUTHZ_PUBLIC_URL moved: the old subscription goes
                old = known.webhook_id
                await tokens.with_token(rid, lambda t: client.delete_webhook(rid, t, old))
            listed = await tokens.with_token(rid, lambda t: client.list_webhooks(rid, t))
            ours = [hook.webhook_id for hook in listed if hook.url == url]
            if ours:
                # Subscribed before its secret was kept (a crash in between): take it over.
                webhook_id = ours[0]
                hook = await tokens.with_token(
                    rid,
                    lambda t: client.update_webhook(
                        rid, t, webhook_id, include=INCLUDES, level=LEVEL, secret=secret
                    ),
                )
            else:
                hook = await tokens.with_token(
                    rid,
                    lambda t: client.create_webhook(
                        rid, t, include=INCLUDES, level=LEVEL, url=url, secret=secret
                    ),
                )
            await offload(self.subscriptions.put, rid, hook.webhook_id, url, secret)
        except AuthzError as exc:
            log.warning(
                "add-on %s: subscribing to its webhooks failed (%s); access changes reach authz "
                "within AUTHZ_ACCESS_TTL until a later registration of the add-on subscribes",
                rid,
                exc,
            )
            return False
        log.info("add-on %s: webhooks %s deliver to %s", rid, hook.webhook_id, url)
        return True

    async def _unsubscribe(self, rid: str) -> None:
        known = await offload(self.subscriptions.get, rid)
        if known is None or self.tokens is None or self.client is None:
            return
        tokens, client = self.tokens, self.client
        try:
            await tokens.with_token(rid, lambda t: client.delete_webhook(rid, t, known.webhook_id))
        except AuthzError as exc:
            log.info(
                "add-on %s: unsubscribing webhook %s failed (%s); Heroku drops an add-on's "
                "subscriptions with the add-on",
                rid,
                known.webhook_id,
                exc,
            )

    async def receive(self, resource_id: str, body: bytes, signature: str | None) -> bool:
        """A webhook delivery for ``resource_id``: verified, recorded, then acted on in the
        background. True when accepted, False for a repeat of an event already accepted
        (Heroku retries, and several replicas may each receive it). Raises WebhookUnverified
        (nothing is done) or WEBHOOK_MALFORMED (signed, but not an event)."""
        try:
            rid = canonical_resource_id(resource_id)
        except RegistryError:
            raise WebhookUnverified() from None
        if not await offload(self.subscriptions.verify, rid, body, signature):
            # Info, not warning: anyone may post here. A steady stream for a subscribed add-on
            # means its secret is lost (AUTHZ_TOKEN_KEY changed): registering it again renews it.
            log.info("add-on %s: a webhook delivery without a valid signature was refused", rid)
            raise WebhookUnverified()
        event = WebhookEvent.parse(body)
        key = f"{WEBHOOK_EVENT_KEY}:{rid}:{event.event_id}"
        first = await offload(self.replay.claim, key, self.clock() + DEDUP_RETENTION)
        if not first:
            log.info("add-on %s: webhook event %s again; already handled", rid, event.event_id)
            return False
        task = asyncio.get_running_loop().create_task(self._apply(rid, event))
        self._events.add(task)
        task.add_done_callback(self._events.discard)
        return True

    async def _apply(self, rid: str, event: WebhookEvent) -> None:
        try:
            done = await self._act(rid, event)
        except Exception as exc:  # logged here: nobody awaits this task
            log.warning(
                "add-on %s: webhook event %s (%s %s) failed: %s: %s; the access-list TTL bounds "
                "what it would have changed",
                rid,
                event.event_id,
                event.include,
                event.action,
                type(exc).__name__,
                exc,
            )
            return
        log.info(
            "add-on %s: webhook event %s (%s %s): %s",
            rid,
            event.event_id,
            event.include,
            event.action,
            done,
        )

    async def _act(self, rid: str, event: WebhookEvent) -> str:
        addon = await offload(self.registry.get, rid)
        if addon is None or addon.state != "provisioned":
            return "ignored, the add-on is not provisioned"
        data = event.data
        if event.include in ("api:collaborator", "api:addon-attachment"):
            await self.invalidate(addon.app_id)
            return f"access list of app {addon.app_id} dropped"
        if event.include == "api:app":
            if data.get("id") != addon.app_id:
                return "ignored, another app"
            name = data.get("name")
            if event.action != "destroy" and isinstance(name, str) and name:
                await offload(self.registry.rename_app, addon.app_id, name)
            await self.invalidate(addon.app_id)  # a transfer changes the owner
            return f"app {addon.app_id} recorded and its access list dropped"
        if event.include == "api:addon":
            if data.get("id") != rid:
                return "ignored, another add-on"
            if event.action == "destroy" or data.get("state") == "deprovisioned":
                gone = await self.deprovision(rid)
                return f"deprovisioned, {gone.sessions_revoked} session(s) revoked"
            plan = data.get("plan")
            name = plan.get("name") if isinstance(plan, dict) else None
            if isinstance(name, str) and name:
                changed = await self.change_plan(rid, name)
                return f"plan {changed.addon.plan}"
            return "nothing to change"
        return "ignored, not an event authz subscribes to"

    async def aclose(self) -> None:
        """Let accepted events finish (for a few seconds), then cancel what is left."""
        if self._events:
            _, pending = await asyncio.wait(set(self._events), timeout=EVENT_DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- helpers -------------------------------------------------------------------------------

    def _lock(self, rid: str) -> asyncio.Lock:
        """One lifecycle change at a time per add-on in this process (the registry's
        transactions serialise replicas)."""
        lock = self._locks.get(rid)
        if lock is None:
            lock = self._locks[rid] = asyncio.Lock()
        return lock

    async def _status(self, addon: Addon, subscribed: bool | None = None) -> AddonStatus:
        has_tokens = await offload(self.token_store.has, addon.resource_id)
        if subscribed is None:
            subscribed = await offload(self.subscriptions.get, addon.resource_id) is not None
        return AddonStatus(addon, has_tokens, subscribed)


def renaming(
    fetch: Callable[[str, str], Awaitable[AccessList]], registry: AddonRegistry
) -> Callable[[str, str], Awaitable[AccessList]]:
    """The access cache's ``fetch``, which also records the app's name as Heroku gives it, so a
    rename reaches the registry even when no webhook told of it (within a TTL at the latest)."""

    async def fetch_and_rename(app_id: str, resource_id: str) -> AccessList:
        access = await fetch(app_id, resource_id)
        if access.app_name:
            try:
                await offload(registry.rename_app, access.app_id, access.app_name)
            except Exception as exc:  # the access list stands; the name waits for next time
                log.warning("recording the name of app %s failed: %s", access.app_id, exc)
        return access

    return fetch_and_rename


def _check_claims(rid: str, request: ProvisioningRequest, heroku: AddonInfo) -> None:
    for name, claimed, actual in (
        ("app_id", request.app_id, heroku.app_id),
        ("app_name", request.app_name, heroku.app_name),
    ):
        if claimed and claimed != actual:
            raise Refusal(
                ADDON_APP_MISMATCH,
                f"the request names {name} {claimed!r}, but Heroku says add-on {rid} belongs to "
                f"{actual!r}; send Heroku's provisioning call as it came (it names no app), or "
                "the app Heroku names",
            )


def _kind_of(exc: AuthzError) -> ErrorKind:
    return "refused" if exc.kind in ("refused", "not_found") else exc.kind


def _grant_mismatch(rid: str, exc: PlatformError | None) -> Refusal:
    why = f" ({exc})" if exc is not None else ""
    return Refusal(
        ADDON_GRANT_MISMATCH,
        f"the OAuth grant's token cannot read add-on {rid}{why}: the grant belongs to another "
        "add-on, so nothing was registered with it",
    )


def _discovery_failed(rid: str, exc: PlatformError) -> Refusal:
    return Refusal(
        ADDON_DISCOVERY_FAILED,
        f"Heroku did not say which app add-on {rid} belongs to (GET /addons/{rid}: {exc}); "
        "nothing was registered, and the same call may be repeated",
        kind=_kind_of(exc),
    )
