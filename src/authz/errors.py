"""The root of authz's domain errors, and the one shape of a refusal.

Every error a use case raises on purpose derives from :class:`AuthzError`, which says two things
the edges need and nothing about transports: a stable machine-readable ``code`` (e.g.
``SSO_REPLAYED``, ``ADDON_UNKNOWN``) and a ``kind`` that says what sort of failure it is. The
gRPC and HTTP edges turn both into a status in one table (authz.server.errors), the way httpx maps
transport exceptions at a single boundary; handlers never choose a status themselves.
"""

from __future__ import annotations

from typing import Final, Literal

ErrorKind = Literal["invalid", "refused", "unavailable", "not_found"]
"""- ``invalid``: the request itself is malformed (fix it and send it again);
- ``refused``: well-formed but refused on purpose (not allowed, or it conflicts with the state);
- ``unavailable``: a part authz depends on failed; the same request may succeed later;
- ``not_found``: it names something authz does not know."""
KINDS: Final = ("invalid", "refused", "unavailable", "not_found")


class AuthzError(Exception):
    """A domain error. Its message says what happened and what to do, and never holds a
    secret. Subclasses set ``code`` and ``kind`` (as class attributes, or per instance)."""

    code: str = "UNAVAILABLE"
    kind: ErrorKind = "unavailable"
    """Without a finer statement an error is taken for an outage: callers may retry, and
    nothing is allowed meanwhile (authz fails closed)."""


class Refusal(AuthzError):
    """Refused on purpose. ``code`` is stable (e.g. SSO_REPLAYED, ADDON_UNKNOWN); ``message`` says
    what happened and what to do, and never holds a secret; ``invalid_argument`` is True when the
    request itself is malformed rather than not allowed. ``kind`` may be given to say more
    (``not_found``, or ``unavailable`` for a refusal caused by an outage)."""

    def __init__(
        self,
        code: str,
        message: str,
        invalid_argument: bool = False,
        *,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind or ("invalid" if invalid_argument else "refused")
        self.invalid_argument = self.kind == "invalid"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
