"""Decision ids: UUIDv7 in the canonical form, strictly increasing within a process."""

from __future__ import annotations

import time
import uuid

from authz.ids import new_decision_id, new_decision_ids


def test_decision_ids_are_canonical_uuidv7_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_decision_id() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower case, 8-4-4-4-12
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after + 1  # a borrowed millisecond at most
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_batch_of_ids_continues_the_sequence() -> None:
    first = new_decision_id()
    batch = new_decision_ids(300)
    last = new_decision_id()
    assert [first, *batch, last] == sorted({first, *batch, last})
    assert all(uuid.UUID(text).version == 7 for text in batch)
