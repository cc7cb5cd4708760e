"""The app access-list cache, and the plain-dict access fact that policies see.

Heroku's rule for add-on partners: never keep a list of authorized users longer than 5 minutes.
:class:`AccessCache` keeps one :class:`~authz.facts.heroku.AccessList` per app and guarantees:

- a fresh entry (younger than ``ttl``) is returned at once;
- an entry still in use within ``(1 - refresh_ahead) * ttl`` seconds of its expiry triggers ONE
  background refresh, so busy apps rarely wait for Heroku (callers never wait for that refresh);
- a missing or expired entry is fetched once however many callers ask at the same moment
  (single-flight); each caller waits at most its ``deadline`` and then gets
  :class:`AccessUnavailable`; the fetch itself keeps running and later callers join it;
- an entry older than ``max_age`` (at most 300 s) is never returned, whatever happens upstream;
  by default not even one older than ``ttl`` (``stale_if_error=True`` allows serving an expired
  entry younger than ``max_age`` while Heroku is failing);
- after a failure (5xx, 429, bad reply, unreachable, ...) the app is left alone for a backoff
  window that doubles with each consecutive failure (capped at ``backoff_cap``) and is at least
  the Retry-After Heroku asked for; inside the window callers fail fast with the last reason;
- :meth:`AccessCache.invalidate` drops an app's entry at once; a fetch already in flight at that
  moment can no longer insert its (possibly older) result: a generation counter per app says so;
- the TTL adapts to Heroku's rate-limit budget: Heroku gives each account one pool of 4500 request
  tokens refilled at about 75 a minute (Dev Center "Platform API Reference", Rate Limits), and
  every add-on of the partner draws on it. While the last ``RateLimit-Remaining`` seen is at or
  above ``budget_comfortable`` the TTL is ``ttl``; below it the TTL grows linearly toward
  ``max_age`` (reached at ``budget_floor``), so busy apps ask Heroku less often instead of running
  the budget dry and failing decisions. Each entry gets only a random share in ``[1 - jitter, 1]``
  (fixed when it is stored) of that extension, so entries fetched together do not all expire and
  refresh together. Neither ever lets an entry be served past ``max_age`` (300 s); with a
  comfortable budget every entry lives exactly ``ttl``.

Ages are measured by the cache's own clock from the moment the fetch *started*, so an entry is
never younger than the data in it. The cache runs on one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from authz.clock import Clock, system_clock
from authz.errors import AuthzError
from authz.facts.heroku import AccessList, AppMember, PlatformClient, PlatformError
from authz.facts.oauth_tokens import TokenManager

__all__ = [
    "MAX_AGE",
    "AccessCache",
    "AccessUnavailable",
    "PlatformAccessFetcher",
    "app_permissions",
]

APP_PERMISSIONS: Final = ("view", "deploy", "operate", "manage")
"""Heroku Enterprise app permissions (Dev Center "App Permissions and Allowed Actions")."""
FULL_ACCESS_ROLES: Final = frozenset({"owner", "admin", "team_owner", "team_admin"})
MAX_AGE: Final = 300.0
"""Heroku: every cached access-list entry is invalidated at least every 5 minutes."""

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], Awaitable[AccessList]]
"""fetch(app_id, resource_id): one upstream fetch sequence for an app, via one of its add-ons."""


class AccessUnavailable(AuthzError):
    """The app's access list could not be had in time; ``reason`` says why (no secrets)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Entry:
    access: AccessList
    born: float  # cache clock when the fetch that produced it started
    spread: float = 1.0  # the entry's share of a budget-driven TTL extension, in [1 - jitter, 1]


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    reason: str = ""


class AccessCache:
    """Per-app access lists: TTL ≤ 300 s, single-flight, refresh-ahead, backoff on failure."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float,
        clock: Clock = system_clock,
        max_age: float = MAX_AGE,
        refresh_ahead: float = 0.8,
        stale_if_error: bool = False,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        max_retry_after: float = MAX_AGE,
        fetch_timeout: float = 30.0,
        max_entries: int = 10_000,
        budget_comfortable: int = 1500,
        budget_floor: int = 150,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < max_age <= MAX_AGE:
            raise ValueError(f"max_age must be more than 0 and at most {MAX_AGE:g} seconds")
        if not 0 < ttl <= max_age:
            raise ValueError(
                f"ttl={ttl:g} must be more than 0 and at most max_age={max_age:g} seconds "
                "(Heroku: cached access lists are invalidated at least every 5 minutes)"
            )
        if not 0 < refresh_ahead <= 1:
            raise ValueError("refresh_ahead must be in (0, 1]; 1 turns refresh-ahead off")
        if backoff_base <= 0 or backoff_cap < backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_cap")
        if fetch_timeout <= 0 or max_entries < 1:
            raise ValueError("fetch_timeout and max_entries must be positive")
        if not 0 <= budget_floor < budget_comfortable:
            raise ValueError("need 0 <= budget_floor < budget_comfortable")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self._fetch = fetch
        self._ttl = float(ttl)
        self._clock = clock
        self._max_age = float(max_age)
        self._refresh_ahead = float(refresh_ahead)
        self._budget_comfortable = int(budget_comfortable)
        self._budget_floor = int(budget_floor)
        self._jitter = float(jitter)
        self._rng = rng or random.Random()
        self._remaining: int | None = None  # the last RateLimit-Remaining Heroku reported
        self._stale_if_error = stale_if_error
        self._backoff_base = float(backoff_base)
        self._backoff_cap = float(backoff_cap)
        self._max_retry_after = float(max_retry_after)
        self._fetch_timeout = float(fetch_timeout)
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[AccessList]] = {}
        self._generation: dict[str, int] = {}
        self._backoff: dict[str, _Backoff] = {}
        # Counters for authz.metrics (read any time; written on the cache's event loop).
        self.hits = 0
        """Lookups answered from a fresh entry."""
        self.misses = 0
        """Lookups without a fresh entry: they waited for a fetch, or failed fast in backoff."""
        self.refreshes = 0
        """Refresh-ahead fetches started in the background (nobody waits for them)."""
        self.fetch_failures = 0
        """Fetches that failed (Heroku down, slow, rate-limited or answering garbage)."""

    @property
    def ttl(self) -> float:
        """The configured TTL, used while Heroku's rate-limit budget is comfortable."""
        return self._ttl

    @property
    def effective_ttl(self) -> float:
        """The TTL for the budget last reported: ``ttl`` up to ``max_age`` as it runs low."""
        remaining = self._remaining
        if remaining is None or remaining >= self._budget_comfortable:
            return self._ttl
        if remaining <= self._budget_floor:
            return self._max_age
        low = (self._budget_comfortable - remaining) / (
            self._budget_comfortable - self._budget_floor
        )
        return self._ttl + low * (self._max_age - self._ttl)

    @property
    def ratelimit_remaining(self) -> int | None:
        return self._remaining

    def _entry_ttl(self, entry: _Entry) -> float:
        extension = self.effective_ttl - self._ttl
        return min(self._max_age, self._ttl + extension * entry.spread)

    def __len__(self) -> int:
        return len(self._entries)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, app_id: str, resource_id: str, *, deadline: float) -> AccessList:
        """The app's access list, fetched through ``resource_id``'s add-on when needed.

        Waits at most ``deadline`` seconds (real time) for Heroku, then raises
        :class:`AccessUnavailable`. Never returns an entry older than ``max_age``.
        """
        if not app_id:
            raise AccessUnavailable("no app id")
        now = self._clock()
        entry = self._entries.get(app_id)
        if entry is not None:
            age = now - entry.born
            ttl = self._entry_ttl(entry)
            if 0 <= age < ttl:
                # The refresh-ahead window is a fixed number of seconds before expiry (a share
                # of the configured ttl), so a stretched TTL stretches the refresh interval too.
                refresh_at = ttl - (1 - self._refresh_ahead) * self._ttl
                if age >= refresh_at and not self._busy(app_id, now):
                    self._start(app_id, resource_id)  # refresh-ahead, nobody waits for it
                    self.refreshes += 1
                self.hits += 1
                return entry.access
            if not self._servable_stale(entry, now):
                # Expired (or the clock went backwards): never served again.
                del self._entries[app_id]
                entry = None

        self.misses += 1
        task = self._inflight.get(app_id)
        if task is None:
            backoff = self._backoff.get(app_id)
            if backoff is not None and now < backoff.until:
                if entry is not None:
                    return entry.access
                wait = backoff.until - now
                raise AccessUnavailable(
                    f"{backoff.reason} (not asking Heroku again for {wait:.1f}s)",
                    retry_after=wait,
                )
            task = self._start(app_id, resource_id)

        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, deadline))
        except TimeoutError:
            failure = AccessUnavailable(
                f"Heroku did not answer within the {deadline:g}s deadline (fetch continues)"
            )
        except AccessUnavailable as exc:
            failure = exc
        if entry is not None and self._servable_stale(entry, self._clock()):
            return entry.access
        raise failure

    def _servable_stale(self, entry: _Entry, now: float) -> bool:
        return self._stale_if_error and 0 <= now - entry.born < self._max_age

    def _busy(self, app_id: str, now: float) -> bool:
        """A fetch is in flight, or the app is in a backoff window."""
        if app_id in self._inflight:
            return True
        backoff = self._backoff.get(app_id)
        return backoff is not None and now < backoff.until

    # -- invalidation ----------------------------------------------------------------------

    def invalidate(self, app_id: str) -> bool:
        """Drop an app's entry now; a fetch in flight cannot re-insert. True if one was held."""
        self._generation[app_id] = self._generation.get(app_id, 0) + 1
        self._inflight.pop(app_id, None)  # later callers start a fetch of their own
        return self._entries.pop(app_id, None) is not None

    def clear(self) -> None:
        for app_id in list(self._entries) + list(self._inflight):
            self.invalidate(app_id)

    async def aclose(self) -> None:
        """Cancel fetches in flight (shutdown)."""
        tasks = list(self._inflight.values())
        self.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- fetching ----------------------------------------------------------------------------

    def _start(self, app_id: str, resource_id: str) -> asyncio.Task[AccessList]:
        generation = self._generation.get(app_id, 0)
        task = asyncio.create_task(
            self._run(app_id, resource_id, generation, self._clock()),
            name=f"access-list:{app_id}",
        )
        self._inflight[app_id] = task
        task.add_done_callback(lambda t: self._done(app_id, t))
        return task

    def _done(self, app_id: str, task: asyncio.Task[AccessList]) -> None:
        if self._inflight.get(app_id) is task:
            del self._inflight[app_id]
        if not task.cancelled():
            task.exception()  # retrieved: a failed refresh-ahead nobody awaited is not "lost"

    async def _run(self, app_id: str, resource_id: str, generation: int, born: float) -> AccessList:
        retry_after: float | None = None
        try:
            access = await asyncio.wait_for(self._fetch(app_id, resource_id), self._fetch_timeout)
        except PlatformError as exc:
            reason, retry_after = str(exc), exc.retry_after
            if exc.failure == "rate_limited":
                self._remaining = 0  # the account's budget is spent: stretch every TTL
        except AccessUnavailable as exc:
            reason, retry_after = exc.reason, exc.retry_after
        except TimeoutError:
            reason = f"fetching the access list took longer than {self._fetch_timeout:g}s"
        except Exception as exc:
            log.warning("access list fetch for app %s failed", app_id, exc_info=True)
            reason = f"access list fetch failed ({type(exc).__name__})"
        else:
            access = replace(access, fetched_at=born)
            if access.ratelimit_remaining is not None:
                self._remaining = access.ratelimit_remaining
            self._backoff.pop(app_id, None)
            if self._generation.get(app_id, 0) == generation:
                spread = 1.0 - self._jitter * self._rng.random()
                self._entries[app_id] = _Entry(access, born, spread)
                self._evict()
            return access
        self.fetch_failures += 1
        wait = self._record_failure(app_id, reason, retry_after)
        raise AccessUnavailable(reason, retry_after=wait)

    def _record_failure(self, app_id: str, reason: str, retry_after: float | None) -> float:
        backoff = self._backoff.setdefault(app_id, _Backoff())
        backoff.failures += 1
        delay = min(self._backoff_cap, self._backoff_base * 2.0 ** (backoff.failures - 1))
        if retry_after:
            delay = max(delay, min(retry_after, self._max_retry_after))
        backoff.until = self._clock() + delay
        backoff.reason = reason
        return delay

    def _evict(self) -> None:
        if len(self._entries) <= self._max_entries:
            return
        now = self._clock()
        for app_id, entry in list(self._entries.items()):
            if not 0 <= now - entry.born < self._entry_ttl(entry):
                del self._entries[app_id]
        overflow = len(self._entries) - self._max_entries
        if overflow > 0:
            oldest = sorted(self._entries, key=lambda a: self._entries[a].born)[:overflow]
            for app_id in oldest:
                del self._entries[app_id]


class PlatformAccessFetcher:
    """The cache's ``fetch``: a stored (refreshed) token, the recipe, one retry after a 401."""

    def __init__(self, client: PlatformClient, tokens: TokenManager) -> None:
        self._client = client
        self._tokens = tokens

    async def __call__(self, app_id: str, resource_id: str) -> AccessList:
        access = await self._tokens.with_token(
            resource_id, lambda token: self._client.fetch_access_list(resource_id, token)
        )
        if app_id and access.app_id != app_id:
            raise PlatformError(
                "app_mismatch",
                f"add-on {resource_id} belongs to app {access.app_id}, not {app_id}",
            )
        return access


def app_permissions(access: AccessList, member: AppMember | None) -> list[str]:
    """The user's effective Heroku app permissions on the add-on's app.

    - The app's owner and admins (app ``admin``, ``team_admin``, ``team_owner``) hold all four:
      "Team members with the admin role always have all permissions for all of the team's apps"
      (Dev Center "Using App Permissions in Enterprise Teams"); an owner holds every right.
    - Otherwise what Heroku lists for the user (collaborator ``permissions`` on team apps).
    - A personal app (no team) has no app permissions at all (the schema: permissions are "only
      applicable if the app is on a team"); its collaborators may do everything a collaborator
      can, so they hold all four. (Choice: Heroku's docs do not map personal-app collaborators
      onto permissions; this keeps personal apps working as they did before permissions.)
    - A team member without a collaborator entry holds none here (the role rule denies them).
    """
    if member is None:
        return []
    roles = set(member.roles)
    if roles & FULL_ACCESS_ROLES:
        return list(APP_PERMISSIONS)
    listed = set(member.permissions)
    if not listed and access.team_id is None and roles & {"collaborator", "member"}:
        return list(APP_PERMISSIONS)
    known = [p for p in APP_PERMISSIONS if p in listed]
    return known + sorted(listed - set(APP_PERMISSIONS))
