"""GET /healthz (liveness) and GET /readyz (readiness), open to every client.

/healthz answers 200 while the process serves. /readyz answers 200 when this process can answer
decisions (a policy set is loaded, the state store answers, the audit log can be read) and 503
otherwise, naming the part that is not usable. It is open to anyone, so it does not show an
error's text, which may name internal hosts: the server log has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authz.audit.log import AuditLog
from authz.audit.query import get_entry
from authz.policy.holder import PolicyHolder
from authz.store import Database
from authz.web.auth import Access
from authz.web.routing import RouteGroup, WebParts, route

log = logging.getLogger("authz.web")

PROBE_TIMEOUT = 2.0
"""Seconds a store or the audit log has to answer a readiness probe."""
REUSE_FOR = 1.0
"""Seconds one round of probes answers every /readyz (so a flood of probes costs nothing)."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    """For the server log."""
    shown: str = ""
    """For /readyz, which anyone may read (the detail when empty)."""


class Readiness:
    """Whether this process can answer decisions: policies, the state store, the audit log."""

    def __init__(self, policies: PolicyHolder, state: Database, audit: AuditLog) -> None:
        self.policies = policies
        self.state = state
        self.audit = audit
        self._lock = asyncio.Lock()
        self._checked_at = -REUSE_FOR
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, asyncio.Future[Any]] = {}

    async def checks(self) -> dict[str, Check]:
        async with self._lock:
            if time.monotonic() - self._checked_at >= REUSE_FOR:
                checks = {
                    "policies": self._policies(),
                    "store": await self._probe("store", self._read_store),
                    "audit": await self._audit(),
                }
                for name, check in checks.items():
                    if check != self._checks.get(name, Check(True, "")) and not check.ok:
                        log.warning("not ready: %s: %s", name, check.detail)
                self._checks, self._checked_at = checks, time.monotonic()
            return self._checks

    def _policies(self) -> Check:
        current = self.policies.current
        detail = f"revision {current.revision} ({current.rule_count} rules)"
        if self.policies.last_refused_errors:
            detail += "; the latest change was refused (authz policy status says why)"
        return Check(True, detail)

    def _read_store(self) -> None:
        self.state.execute("SELECT 1")

    async def _audit(self) -> Check:
        if self.audit.mode == "off":
            return Check(True, "off (AUTHZ_AUDIT_MODE=off)")
        # The writer's own connection is its thread's; a probe reads the log on one of its own.
        return await self._probe("audit", lambda: get_entry(self.audit.target, ""))

    async def _probe(self, name: str, read: Callable[[], object]) -> Check:
        """`read()` in a thread, at most one at a time per part: a probe that hangs is waited
        for by the next ones rather than joined by more threads."""
        probe = self._probes.get(name)
        if probe is None or probe.done():
            probe = self._probes[name] = asyncio.ensure_future(asyncio.to_thread(read))
        try:
            await asyncio.wait_for(asyncio.shield(probe), PROBE_TIMEOUT)
        except TimeoutError:
            return Check(False, f"no answer within {PROBE_TIMEOUT:g} s")
        except Exception as exc:
            return Check(False, f"unusable: {exc}", "unusable (the server log says why)")
        return Check(True, "ok")


def routes(parts: WebParts) -> RouteGroup:
    readiness = Readiness(parts.policies, parts.state, parts.audit)

    async def healthz(request: Request, caller: str) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request, caller: str) -> Response:
        checks = await readiness.checks()
        ready = all(check.ok for check in checks.values())
        body = {
            "ready": ready,
            "checks": {name: check.shown or check.detail for name, check in checks.items()},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return RouteGroup(
        "health",
        [
            route("/healthz", healthz, access=Access.OPEN),
            route("/readyz", readyz, access=Access.OPEN),
        ],
    )
