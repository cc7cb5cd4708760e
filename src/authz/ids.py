"""Identifiers that sort by time."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_RANDOM_BITS = (1 << 62) - 1


def new_decision_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter, then random bits.

    The counter keeps ids from one process strictly increasing within a millisecond,
    so sorting by id sorts by time.
    """
    return new_decision_ids(1)[0]


def new_decision_ids(count: int) -> list[str]:
    """`count` decision ids in increasing order, as `count` calls of new_decision_id would give
    them (one clock reading, one lock and one read of random bytes for all: a batch's ids)."""
    global _last_ms, _seq
    stamps = []
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        for _ in range(count):
            ms = now_ms
            if ms <= _last_ms:
                ms = _last_ms
                _seq += 1
                if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                    ms += 1
                    _seq = 0
            else:
                _seq = 0
            _last_ms = ms
            stamps.append((ms << 80) | (0x7 << 76) | (_seq << 64) | (0b10 << 62))
    noise = os.urandom(8 * count)
    ids = []
    for i, stamp in enumerate(stamps):
        value = stamp | int.from_bytes(noise[8 * i : 8 * i + 8], "big") & _RANDOM_BITS
        # The canonical 8-4-4-4-12 form, as str(uuid.UUID(int=value)) writes it.
        digits = f"{value:032x}"
        ids.append(f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}")
    return ids
