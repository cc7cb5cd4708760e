"""Heroku add-on SSO: verify the form Heroku's dashboard posts to the add-on's ``sso_url``.

A pure function of (form, salts, now): no clock, no I/O, no logging. What it does not do, and the
caller must: check that the resource is provisioned (:mod:`authz.facts.addons`), claim the replay
key (:mod:`authz.facts.replay`), and then issue a session (:mod:`authz.facts.sessions`).

Token formulas (all digests lower-case hex; ``salt`` is the manifest's ``sso_salt``)::

    user_scoped_resource_token = sha256(resource_id:salt:timestamp:user_id:email)
    resource_token             = sha1(resource_id:salt:timestamp)
    token (legacy v1)          = sha1(id:salt:timestamp)            -- always refused

Choices made here, where Heroku's documentation is silent:

- Heroku posts every token with every v3 request and recommends ``user_scoped_resource_token``
  (https://devcenter.heroku.com/articles/add-on-single-sign-on), so a v3 form without it was
  altered. By default (``allow_sha1=False``) a form without a SHA-256 token is refused with
  ``SSO_SHA256_REQUIRED`` whatever else it carries.
- When ``user_scoped_resource_token`` is present it must verify; a wrong SHA-256 token is never
  rescued by a correct SHA-1 ``resource_token`` in the same form (that would be a downgrade).
  An empty field counts as absent (HTML forms post empty inputs).
- The SHA-1 ``resource_token`` does not cover ``user_id`` or ``email``: anyone holding a valid SHA-1
  form for a resource (for example any collaborator of its app) can change ``user_id`` before
  posting it and log in as another member. ``allow_sha1=True`` accepts such forms anyway (the
  caller decides per add-on; see :mod:`authz.login`); they are marked ``token_kind="sha1"`` so
  policies, sessions and the audit log can tell them apart.
- The replay key names the form, not the token that was verified: the resource, the timestamp
  and the user. A form carrying both tokens is therefore usable once, whichever token is checked,
  and two users opening the same add-on in the same second (same SHA-1 token) do not collide.
- ``resource_id`` and ``user_id`` may not contain ``:``. The digest joins fields with ``:``, so a
  ``user_id`` containing one could borrow characters from ``email`` and still verify.
- No field we read may be longer than 1024 characters or contain control characters.
- The token is checked before the timestamp, so a genuine but old form is reported as stale (the
  useful diagnosis) and a forged one as a bad token whatever its timestamp says.
- A stale timestamp is one more than ``max_age`` seconds old (exactly ``max_age`` is accepted);
  the replay window therefore ends at ``timestamp + max_age``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from authz.config import MAX_SSO_FUTURE_SECONDS, MAX_SSO_PAST_SECONDS
from authz.errors import Refusal

__all__ = [
    "SSO_BAD_TOKEN",
    "SSO_FUTURE_TIMESTAMP",
    "SSO_LEGACY_TOKEN",
    "SSO_MALFORMED",
    "SSO_MISSING_FIELD",
    "SSO_NO_SALT",
    "SSO_SHA256_REQUIRED",
    "SSO_STALE_TIMESTAMP",
    "SsoError",
    "SsoLogin",
    "TokenKind",
    "resource_token",
    "sha256_required",
    "user_scoped_resource_token",
    "verify_sso_form",
]

SSO_MISSING_FIELD: Final = "SSO_MISSING_FIELD"
SSO_MALFORMED: Final = "SSO_MALFORMED"
SSO_LEGACY_TOKEN: Final = "SSO_LEGACY_TOKEN"
SSO_BAD_TOKEN: Final = "SSO_BAD_TOKEN"
SSO_STALE_TIMESTAMP: Final = "SSO_STALE_TIMESTAMP"
SSO_FUTURE_TIMESTAMP: Final = "SSO_FUTURE_TIMESTAMP"
SSO_NO_SALT: Final = "SSO_NO_SALT"
SSO_SHA256_REQUIRED: Final = "SSO_SHA256_REQUIRED"

TokenKind = Literal["sha256", "sha1"]

MAX_FIELD_LENGTH: Final = 1024
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # ASCII digits only: int() would also take " 1_0 ", "١٢"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SHA1_HEX = re.compile(r"[0-9a-f]{40}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REOPEN = "ask the user to open the add-on again from the Heroku dashboard"

# Every form field this module reads; nothing else in the form is looked at.
FORM_FIELDS: Final = (
    "resource_id",
    "timestamp",
    "user_id",
    "email",
    "app",
    "context_app",
    "user_scoped_resource_token",
    "resource_token",
    "id",
    "token",
)


class SsoError(Refusal):
    """An SSO form was refused.

    ``code`` is one of the ``SSO_*`` constants; ``message`` is written for a support engineer and
    never contains a salt or a token; ``invalid_argument`` is True when the form itself is broken
    (a missing or malformed field) rather than unauthenticated.
    """


@dataclass(frozen=True)
class SsoLogin:
    """A verified Heroku SSO login. Identity is ``user_id``; ``email`` is for display only."""

    resource_id: str
    user_id: str
    email: str
    app: str
    context_app: str
    timestamp: int
    token_kind: TokenKind
    replay_key: str
    """sha256 over the resource id, timestamp and user id: one key per form, whichever token
    verified it; claim it once."""
    expires_at: float
    """``timestamp + max_age``: the end of the window in which this form could be replayed."""
    salt_position: int = 1
    """Which of the configured salts verified the form, 1 for the first: a rotation is finished
    when no login uses the old one (the metric authz_sso_logins_total). Never the salt."""


def user_scoped_resource_token(
    resource_id: str, salt: str, timestamp: str, user_id: str, email: str
) -> str:
    """Heroku's current SSO token: lower-case hex SHA-256."""
    message = f"{resource_id}:{salt}:{timestamp}:{user_id}:{email}"
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


def resource_token(resource_id: str, salt: str, timestamp: str) -> str:
    """Heroku's v3 SSO token: lower-case hex SHA-1 (does not cover the user)."""
    return hashlib.sha1(f"{resource_id}:{salt}:{timestamp}".encode()).hexdigest()


def verify_sso_form(
    form: Mapping[str, str],
    *,
    salts: Sequence[str],
    now: float,
    max_age: float = MAX_SSO_PAST_SECONDS,
    max_future: float = MAX_SSO_FUTURE_SECONDS,
    allow_sha1: bool = False,
) -> SsoLogin:
    """Verify a Heroku SSO form and return who logged in, or raise :class:`SsoError`.

    ``salts`` are every ``sso_salt`` currently accepted (more than one while rotating);
    ``now`` is Unix seconds. ``max_age`` and ``max_future`` may only be lowered from Heroku's
    300 s and 60 s; a larger value (or a negative one) raises ValueError. ``allow_sha1`` accepts
    a form that carries only the SHA-1 ``resource_token`` (which does not cover the user).
    """
    if not (0 < max_age <= MAX_SSO_PAST_SECONDS):
        raise ValueError(f"max_age={max_age!r} must be more than 0 and at most 300 seconds")
    if not (0 <= max_future <= MAX_SSO_FUTURE_SECONDS):
        raise ValueError(f"max_future={max_future!r} must be between 0 and 60 seconds")
    if not math.isfinite(now):
        raise ValueError(f"now={now!r} must be a finite number of Unix seconds")

    usable_salts = [s for s in salts if isinstance(s, str) and s]
    if not usable_salts:
        raise SsoError(
            SSO_NO_SALT,
            "no SSO salt is configured, so every Heroku SSO login is refused; set AUTHZ_SSO_SALT "
            "to the add-on manifest's sso_salt",
        )

    fields = _read_fields(form)

    sha256_token = fields["user_scoped_resource_token"]
    sha1_token = fields["resource_token"]
    kind: TokenKind
    if sha256_token:
        kind, token = "sha256", sha256_token
    elif sha1_token:
        if not allow_sha1:
            raise sha256_required(
                "this service accepts SHA-1 forms only with AUTHZ_SSO_ALLOW_SHA1=legacy-addons"
            )
        kind, token = "sha1", sha1_token
    elif fields["token"] or fields["id"]:
        raise SsoError(
            SSO_LEGACY_TOKEN,
            "the SSO form uses Heroku's deprecated v1 id/token fields, which are not accepted; "
            "the add-on manifest must use SSO API v3 (user_scoped_resource_token)",
        )
    else:
        raise _missing("user_scoped_resource_token")

    required = ("resource_id", "timestamp", "user_id") + (("email",) if kind == "sha256" else ())
    for name in required:
        if not fields[name]:
            raise _missing(name)
    resource_id, raw_timestamp, user_id = (
        fields["resource_id"],
        fields["timestamp"],
        fields["user_id"],
    )
    email = fields["email"]

    if not _TIMESTAMP.fullmatch(raw_timestamp):
        raise SsoError(
            SSO_MALFORMED,
            "the SSO field 'timestamp' is not whole Unix seconds (ASCII digits only)",
            invalid_argument=True,
        )
    for name, value in (("resource_id", resource_id), ("user_id", user_id)):
        if ":" in value:
            raise SsoError(
                SSO_MALFORMED, f"the SSO field {name!r} may not contain ':'", invalid_argument=True
            )
    token = token.lower()
    pattern, digits = (_SHA256_HEX, 64) if kind == "sha256" else (_SHA1_HEX, 40)
    if not pattern.fullmatch(token):
        field = "user_scoped_resource_token" if kind == "sha256" else "resource_token"
        raise SsoError(
            SSO_MALFORMED,
            f"the SSO field {field!r} is not a {digits}-digit hex digest",
            invalid_argument=True,
        )

    # Every salt is tried and every comparison is constant-time; no early exit.
    matched = 0  # the position of the first salt that verifies the token
    for position, salt in enumerate(usable_salts, start=1):
        if kind == "sha256":
            expected = user_scoped_resource_token(resource_id, salt, raw_timestamp, user_id, email)
        else:
            expected = resource_token(resource_id, salt, raw_timestamp)
        if hmac.compare_digest(expected, token) and not matched:
            matched = position
    if not matched:
        field = "user_scoped_resource_token" if kind == "sha256" else "resource_token"
        raise SsoError(
            SSO_BAD_TOKEN,
            f"the SSO {field} does not match any of the {len(usable_salts)} configured SSO "
            "salt(s): either AUTHZ_SSO_SALT differs from the add-on manifest's sso_salt or the "
            "form was altered after Heroku signed it",
        )

    timestamp = int(raw_timestamp)
    age = now - timestamp
    if age > max_age:
        raise SsoError(
            SSO_STALE_TIMESTAMP,
            f"the SSO timestamp is {_seconds(age)} s old; Heroku SSO forms are valid for "
            f"{_seconds(max_age)} s — {_REOPEN}",
        )
    if -age > max_future:
        raise SsoError(
            SSO_FUTURE_TIMESTAMP,
            f"the SSO timestamp is {_seconds(-age)} s in the future; at most "
            f"{_seconds(max_future)} s of clock skew is accepted — check this server's clock "
            f"(NTP), then {_REOPEN}",
        )

    replay_key = hashlib.sha256(
        f"heroku-sso-replay:v2:{resource_id}:{raw_timestamp}:{user_id}".encode()
    ).hexdigest()
    return SsoLogin(
        resource_id=resource_id,
        user_id=user_id,
        email=email,
        app=fields["app"],
        context_app=fields["context_app"],
        timestamp=timestamp,
        token_kind=kind,
        replay_key=replay_key,
        expires_at=float(timestamp) + max_age,
        salt_position=matched,
    )


def sha256_required(why: str) -> SsoError:
    """The refusal of a form that lacks a SHA-256 token; ``why`` says why SHA-1 was not enough."""
    return SsoError(
        SSO_SHA256_REQUIRED,
        "the SSO form has no SHA-256 user_scoped_resource_token, and its SHA-1 resource_token "
        "does not cover the user (anyone who can open the add-on could name another user with "
        f"it); {why} — Heroku sends user_scoped_resource_token with every SSO API v3 request, "
        "so the form was altered on its way or the add-on manifest predates API v3",
    )


def _read_fields(form: Mapping[str, str]) -> dict[str, str]:
    """The fields this module reads, absent ones as "", after type, length and character checks."""
    fields: dict[str, str] = {}
    for name in FORM_FIELDS:
        value = form.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise SsoError(SSO_MALFORMED, f"the SSO field {name!r} is not text", True)
        if len(value) > MAX_FIELD_LENGTH:
            raise SsoError(
                SSO_MALFORMED,
                f"the SSO field {name!r} is longer than {MAX_FIELD_LENGTH} characters",
                invalid_argument=True,
            )
        if _CONTROL.search(value):
            raise SsoError(
                SSO_MALFORMED,
                f"the SSO field {name!r} contains control characters",
                invalid_argument=True,
            )
        fields[name] = value
    return fields


def _missing(name: str) -> SsoError:
    return SsoError(
        SSO_MISSING_FIELD,
        f"the SSO form has no {name!r} field; Heroku always sends it, so the request did not come "
        f"from Heroku's add-on SSO or was cut short — {_REOPEN}",
        invalid_argument=True,
    )


def _seconds(value: float) -> str:
    rounded = round(value)
    return str(rounded) if abs(value - rounded) < 0.05 else f"{value:.1f}"
