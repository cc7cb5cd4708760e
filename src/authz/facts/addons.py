"""The add-on registry: which Heroku app owns each provisioned add-on resource.

Heroku delivers provisioning at least once, so :meth:`AddonRegistry.register` is idempotent on the
resource uuid. Choices made here, where Heroku's documentation is silent:

- Resource ids must be canonical UUIDs (8-4-4-4-12 hex); upper case is accepted and stored lower.
- A deprovisioned uuid is never provisioned again: Heroku never reuses uuids, so a provisioning
  request for one is a late retry or a mistake, and silently resurrecting the resource would hand
  its dashboard to whoever has access to the app named in that request.
- For the same reason the owning ``app_id`` of a resource never changes through ``register``;
  a different ``app_id`` is refused (``ADDON_APP_CONFLICT``). The app *name* may change (renames).
- ``deprovision`` of an already deprovisioned resource succeeds and changes nothing (Heroku may
  deliver the DELETE twice).
- App renames reach every provisioned add-on of the app at once (``rename_app``): Heroku announces
  them per app (``api:app`` webhook events), and the app id, the owning key, never changes.
- The registry also remembers when an add-on first sent a verified SHA-256 SSO token
  (``sso_sha256_since``): from then on a SHA-1-only form for it is a downgrade (authz.login).

Every change reads the row and writes it in one transaction locked on the resource id, so
concurrent deliveries (also to different replicas sharing a PostgreSQL database) change it once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Final, Literal

from authz.clock import Clock
from authz.errors import Refusal
from authz.store import Database, StoreLike, ensure_schema

__all__ = [
    "ADDON_APP_CONFLICT",
    "ADDON_DEPROVISIONED",
    "ADDON_MALFORMED",
    "ADDON_UNKNOWN",
    "Addon",
    "AddonRegistry",
    "AddonState",
    "RegistryError",
    "canonical_resource_id",
    "require_provisioned",
]

ADDON_MALFORMED: Final = "ADDON_MALFORMED"
ADDON_UNKNOWN: Final = "ADDON_UNKNOWN"
ADDON_DEPROVISIONED: Final = "ADDON_DEPROVISIONED"
ADDON_APP_CONFLICT: Final = "ADDON_APP_CONFLICT"

AddonState = Literal["provisioned", "deprovisioned"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_FIELD_LENGTH = 1024
_TABLE = "addons"
_INSERTED = "resource_id, app_id, app_name, plan, region, state, created_at, updated_at"
_COLUMNS = f"{_INSERTED}, sso_sha256_since"
# The table is created by schema migration 1, sso_sha256_since by 5 (authz.store.migrations).


class RegistryError(Refusal):
    """A registry operation was refused; ``code`` is one of the ``ADDON_*`` constants.

    ``invalid_argument`` is True when the request itself is malformed (not a UUID, empty app id).
    """


@dataclass(frozen=True)
class Addon:
    resource_id: str
    app_id: str
    app_name: str
    plan: str
    region: str
    state: AddonState
    created_at: float
    updated_at: float
    sso_sha256_since: float | None = None
    """When a verified SHA-256 SSO token was first seen for this add-on (None: never)."""


class AddonRegistry:
    """Provisioned add-on resources in the ``addons`` table (SQLite or PostgreSQL)."""

    def __init__(self, db: StoreLike, clock: Clock) -> None:
        self._db = ensure_schema(db)
        self._clock = clock

    def register(
        self, resource_id: str, app_id: str, app_name: str, plan: str, region: str
    ) -> tuple[Addon, bool]:
        """Record a provisioned resource; returns it and whether this call changed anything.

        The same delivery again changes nothing (and keeps ``created_at``); a new plan, region or
        app name updates the row. A deprovisioned uuid or a different ``app_id`` is refused.
        """
        resource_id = canonical_resource_id(resource_id)
        _text("app_id", app_id, required=True)
        _text("app_name", app_name)
        _text("plan", plan, required=True)
        _text("region", region)
        with self._transaction(resource_id) as conn:
            now = self._clock()
            current = _select(conn, resource_id)
            if current is None:
                addon = Addon(resource_id, app_id, app_name, plan, region, "provisioned", now, now)
                conn.execute(
                    f"INSERT INTO {_TABLE} ({_INSERTED}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        addon.resource_id,
                        addon.app_id,
                        addon.app_name,
                        addon.plan,
                        addon.region,
                        addon.state,
                        addon.created_at,
                        addon.updated_at,
                    ),
                )
                return addon, True
            require_provisioned(current)
            if current.app_id != app_id:
                raise RegistryError(
                    ADDON_APP_CONFLICT,
                    f"add-on {resource_id} belongs to app {current.app_id}, but the request names "
                    f"app {app_id}; the app that owns an add-on never changes, so the request was "
                    "refused (check where it came from)",
                )
            if (current.app_name, current.plan, current.region) == (app_name, plan, region):
                return current, False
            conn.execute(
                f"UPDATE {_TABLE} SET app_name = ?, plan = ?, region = ?, updated_at = ? "
                "WHERE resource_id = ?",
                (app_name, plan, region, now, resource_id),
            )
            updated = replace(current, app_name=app_name, plan=plan, region=region, updated_at=now)
            return updated, True

    def deprovision(self, resource_id: str) -> Addon:
        """Mark a resource deprovisioned (idempotent); unknown ids raise ``ADDON_UNKNOWN``."""
        resource_id = canonical_resource_id(resource_id)
        with self._transaction(resource_id) as conn:
            current = _require_known(conn, resource_id)
            if current.state == "deprovisioned":
                return current
            now = self._clock()
            conn.execute(
                f"UPDATE {_TABLE} SET state = 'deprovisioned', updated_at = ? "
                "WHERE resource_id = ?",
                (now, resource_id),
            )
            return replace(current, state="deprovisioned", updated_at=now)

    def get(self, resource_id: str) -> Addon | None:
        """The resource, provisioned or deprovisioned; None if unknown (or not a UUID at all)."""
        if not isinstance(resource_id, str) or not _UUID.fullmatch(resource_id.lower()):
            return None
        return _select(self._db, resource_id.lower())

    def change_plan(self, resource_id: str, plan: str) -> Addon:
        """Record a plan change (Heroku's ``PUT {base}/{uuid}``) for a provisioned resource."""
        resource_id = canonical_resource_id(resource_id)
        _text("plan", plan, required=True)
        with self._transaction(resource_id) as conn:
            current = _require_known(conn, resource_id)
            require_provisioned(current)
            if current.plan == plan:
                return current
            now = self._clock()
            conn.execute(
                f"UPDATE {_TABLE} SET plan = ?, updated_at = ? WHERE resource_id = ?",
                (plan, now, resource_id),
            )
            return replace(current, plan=plan, updated_at=now)

    def rename_app(self, app_id: str, app_name: str) -> int:
        """Record an app's new name (Heroku's ``api:app`` update, or ``GET /addons/{id}``) on
        every provisioned add-on of that app; returns how many rows changed."""
        _text("app_id", app_id, required=True)
        _text("app_name", app_name, required=True)
        return self._db.execute(
            f"UPDATE {_TABLE} SET app_name = ?, updated_at = ? "
            "WHERE app_id = ? AND state = 'provisioned' AND app_name <> ?",
            (app_name, self._clock(), app_id, app_name),
        ).rowcount

    def note_sha256_sso(self, resource_id: str) -> bool:
        """Remember that Heroku sent this add-on a verified SHA-256 SSO token; True the first time.

        One conditional statement, so the first time is recorded exactly once however many
        replicas see it, and it is never cleared.
        """
        resource_id = canonical_resource_id(resource_id)
        return (
            self._db.execute(
                f"UPDATE {_TABLE} SET sso_sha256_since = ? "
                "WHERE resource_id = ? AND sso_sha256_since IS NULL",
                (self._clock(), resource_id),
            ).rowcount
            == 1
        )

    @contextmanager
    def _transaction(self, resource_id: str) -> Iterator[Database]:
        """A write transaction locked on the resource: a read followed by a write cannot
        interleave with another call, process or replica working on the same add-on; inside a
        transaction the caller already holds, a savepoint instead."""
        with self._db.transaction(lock=f"addon:{resource_id}") as tx:
            yield tx


def _select(conn: Database, resource_id: str) -> Addon | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE resource_id = ?", (resource_id,)
    ).fetchone()
    return None if row is None else Addon(*row)


def _require_known(conn: Database, resource_id: str) -> Addon:
    current = _select(conn, resource_id)
    if current is None:
        raise RegistryError(
            ADDON_UNKNOWN,
            f"add-on {resource_id} was never provisioned here (no provisioning request for this "
            "uuid reached the service)",
            kind="not_found",
        )
    return current


def require_provisioned(current: Addon) -> None:
    """ADDON_DEPROVISIONED unless the add-on is provisioned."""
    if current.state != "provisioned":
        raise RegistryError(
            ADDON_DEPROVISIONED,
            f"add-on {current.resource_id} was deprovisioned; Heroku never reuses add-on uuids, "
            "so it cannot be provisioned or changed again",
        )


def canonical_resource_id(value: str) -> str:
    """The add-on's uuid in lower case; ADDON_MALFORMED unless it is one."""
    if isinstance(value, str) and _UUID.fullmatch(value.lower()):
        return value.lower()
    raise RegistryError(
        ADDON_MALFORMED,
        "resource_id must be the add-on's Heroku uuid (8-4-4-4-12 hex digits)",
        invalid_argument=True,
    )


def _text(name: str, value: str, *, required: bool = False) -> None:
    if not isinstance(value, str) or len(value) > _MAX_FIELD_LENGTH:
        raise RegistryError(
            ADDON_MALFORMED,
            f"{name} must be text of at most {_MAX_FIELD_LENGTH} characters",
            invalid_argument=True,
        )
    if required and not value.strip():
        raise RegistryError(ADDON_MALFORMED, f"{name} must not be empty", invalid_argument=True)
    if not _storable(value):
        raise RegistryError(
            ADDON_MALFORMED,
            f"{name} must be valid Unicode text without NUL characters",
            invalid_argument=True,
        )


def _storable(value: str) -> bool:
    """Text both backends store as it is (PostgreSQL text holds no NUL; neither holds lone
    surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
