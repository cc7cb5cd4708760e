"""Heroku add-on SSO login: verify the form, then let the policies decide, then issue a session.

The policy decision (`session.login` on `addon:<resource_id>`) goes through the one decision path
(Decider.check), so a login is evaluated and audited like every other decision; refusals that
happen before the policies are consulted are audited too.

SHA-1 forms (AUTHZ_SSO_ALLOW_SHA1): Heroku's SHA-1 ``resource_token`` does not cover the user, so
a form carrying only it lets anyone who can open the add-on name another user. ``never`` (the
default) refuses every such form. ``legacy-addons`` accepts one only for an add-on that has never
sent a verified SHA-256 token: the registry remembers the first SHA-256 login of each add-on (in
the shared store, so across replicas and restarts), and from then on that add-on's SHA-1-only
forms are refused as downgrades.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from authz.clock import Clock, system_clock
from authz.config import SHA1_NEVER, Settings
from authz.decide import Decider, Entity, Item, Subject, sso_subject
from authz.errors import Refusal
from authz.facts.addons import AddonRegistry
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import Session, SessionStore
from authz.facts.sso import SsoError, sha256_required, verify_sso_form
from authz.policy.inputs import ADDON, HEROKU_USER, principal_input

LOGIN_ACTION = "session.login"


class LoginRefused(Refusal):
    """A login was refused, and the refusal was recorded as decision `decision_id`."""

    def __init__(
        self, code: str, message: str, decision_id: str, invalid_argument: bool = False
    ) -> None:
        super().__init__(code, message, invalid_argument)
        self.decision_id = decision_id


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str
    session: Session
    decision_id: str
    salt_position: int = 1  # which AUTHZ_SSO_SALT verified the form (metrics)


class SsoLogins:
    def __init__(
        self,
        decider: Decider,
        settings: Settings,
        *,
        registry: AddonRegistry,
        replay: ReplayGuard,
        sessions: SessionStore,
        clock: Clock = system_clock,
    ) -> None:
        self.decider = decider
        self.settings = settings
        self.registry = registry
        self.replay = replay
        self.sessions = sessions
        self.clock = clock

    async def exchange(
        self, form: Mapping[str, str], *, request_id: str = "", caller: str = ""
    ) -> LoginResult:
        claimed_user = _clip(form.get("user_id", ""))
        claimed_resource = _clip(form.get("resource_id", ""))
        try:
            login = verify_sso_form(
                form,
                salts=self.settings.sso_salts,
                now=self.clock(),
                max_age=self.settings.sso_max_age,
                max_future=self.settings.sso_max_future,
                allow_sha1=self.settings.sso_allow_sha1 != SHA1_NEVER,
            )
        except SsoError as exc:
            await self._refuse(
                exc.code,
                exc.message,
                claimed_user,
                claimed_resource,
                request_id,
                caller,
                invalid_argument=exc.invalid_argument,
            )
        call = self.decider.facts.call
        addon = await call(self.registry.get, login.resource_id)
        if addon is None:
            await self._refuse(
                "ADDON_UNKNOWN",
                "this add-on resource is not provisioned here (unknown resource_id)",
                login.user_id,
                login.resource_id,
                request_id,
                caller,
            )
        if addon.state != "provisioned":
            await self._refuse(
                "ADDON_DEPROVISIONED",
                "this add-on was deprovisioned; it can no longer be opened",
                login.user_id,
                login.resource_id,
                request_id,
                caller,
            )
        if login.token_kind == "sha256":
            if addon.sso_sha256_since is None:
                await call(self.registry.note_sha256_sso, login.resource_id)
        elif addon.sso_sha256_since is not None:
            # Heroku sends this add-on the SHA-256 token, so a form without it was altered.
            exc = sha256_required(
                "this add-on has sent Heroku's SHA-256 token before, so a form without it is a "
                "downgrade, refused even with AUTHZ_SSO_ALLOW_SHA1=legacy-addons"
            )
            await self._refuse(
                exc.code, exc.message, login.user_id, login.resource_id, request_id, caller
            )
        if not await call(self.replay.claim, login.replay_key, login.expires_at):
            await self._refuse(
                "SSO_REPLAYED",
                "this SSO form was already used; open the add-on again from the "
                "Heroku dashboard to get a fresh one",
                login.user_id,
                login.resource_id,
                request_id,
                caller,
            )
        subject = sso_subject(
            login.user_id,
            login.resource_id,
            "",
            self.clock(),
            login.email,
            token_kind=login.token_kind,
        )
        [outcome] = await self.decider.check(
            subject,
            [Item(LOGIN_ACTION, Entity(ADDON, login.resource_id))],
            request_id=request_id,
            caller=caller,
            kind="sso",
        )
        if not outcome.decision.allowed:
            raise LoginRefused(
                "LOGIN_DENIED", "; ".join(outcome.decision.reasons), outcome.decision_id
            )
        token, session = await call(
            partial(self.sessions.issue, token_kind=login.token_kind),
            login.user_id,
            login.resource_id,
            login.email,
        )
        return LoginResult(token, session, outcome.decision_id, login.salt_position)

    async def _refuse(
        self,
        code: str,
        message: str,
        user_id: str,
        resource_id: str,
        request_id: str,
        caller: str,
        *,
        invalid_argument: bool = False,
    ) -> Any:
        subject = Subject(principal_input(HEROKU_USER, user_id), {})
        decision_id = await self.decider.record_refusal(
            kind="sso",
            subject=subject,
            action=LOGIN_ACTION,
            resource=Entity(ADDON, resource_id),
            reason=f"{code}: {message}",
            request_id=request_id,
            caller=caller,
        )
        raise LoginRefused(code, message, decision_id, invalid_argument)


def _clip(value: str) -> str:
    """Unverified form values go to the audit log only as short, printable text."""
    return "".join(ch for ch in str(value)[:128] if ch.isprintable())
