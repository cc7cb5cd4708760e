"""The one RFC 3339 form authz writes: microseconds, UTC, a Z."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from authz.clock import rfc3339


def test_rfc3339_writes_microseconds_in_utc_with_a_z() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1764586500.25) == "2025-12-01T10:55:00.250000Z"
    chosen = random.Random(7)
    for _ in range(2000):
        moment = round(chosen.uniform(0, 4.1e9), chosen.choice((0, 3, 6)))
        expected = datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert rfc3339(moment) == expected
        assert datetime.fromisoformat(rfc3339(moment)).timestamp() == round(moment, 6)
