"""The one shape of a refusal: a stable machine-readable code and a message for a person."""

from __future__ import annotations


class Refusal(Exception):
    """Refused on purpose. `code` is stable (e.g. SSO_REPLAYED, ADDON_UNKNOWN); `message` says what
    happened and what to do, and never holds a secret; `invalid_argument` is True when the request
    itself is malformed rather than not allowed."""

    def __init__(self, code: str, message: str, invalid_argument: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.invalid_argument = invalid_argument

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
