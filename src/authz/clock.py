"""Time as an injectable dependency, so facts and policies never read a clock of their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Returns Unix seconds. Production uses time.time; tests pass a controllable one."""

system_clock: Clock = time.time


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def rfc3339(ts: float) -> str:
    """Microsecond RFC 3339 in UTC with a Z, the form CEL's timestamp() reads."""
    # isoformat() writes the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") in a quarter less
    # time (formatted for every decision), ending "+00:00" where RFC 3339 may say "Z".
    return utc(ts).isoformat(timespec="microseconds")[:-6] + "Z"
