"""Identifiers that sort by time."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_POOL_BYTES = 4096
"""Random bytes read from the kernel at once: one system call per 512 ids rather than per
request (a system call on the decision path costs more than its own time, in what it evicts)."""
_pool = b""
_pool_at = 0


def _forget_pool() -> None:
    """A forked child must not hand out the random bits its parent also holds."""
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def _random_bytes(n: int) -> bytes:
    """`n` bytes from the kernel's CSPRNG, each handed out once. Called with _lock held."""
    global _pool, _pool_at
    if _pool_at + n > len(_pool):
        _pool, _pool_at = os.urandom(max(_POOL_BYTES, n)), 0
    out = _pool[_pool_at : _pool_at + n]
    _pool_at += n
    return out


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
            stamps.append((ms, _seq))
        noise = _random_bytes(8 * count).hex()
    # The canonical 8-4-4-4-12 form, as str(uuid.UUID(int=...)) writes it: 48 bits of
    # milliseconds, version 7 and the counter, then the variant (0b10) over 62 random bits.
    ids = []
    head_ms, head = -1, ""
    for i, (ms, seq) in enumerate(stamps):
        if ms != head_ms:  # a batch's ids nearly always share their millisecond
            stamp = f"{ms:012x}"
            head_ms, head = ms, f"{stamp[:8]}-{stamp[8:]}-7"
        r = 16 * i
        ids.append(
            f"{head}{seq:03x}-{_VARIANT[noise[r]]}{noise[r + 1 : r + 4]}-{noise[r + 4 : r + 16]}"
        )
    return ids


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""A random hex digit's two low bits under the variant's two high bits (0b10)."""
