"""Decision ids: UUIDv7 in the canonical form, strictly increasing within a process."""

from __future__ import annotations

import subprocess
import sys
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


def test_random_bits_are_never_handed_out_twice_not_even_across_a_fork() -> None:
    """Ids take their random bits from a pool read from the kernel; a forked child drops the
    pool it inherited, or parent and child would give ids with the same random bits."""
    script = (
        "import os, sys\n"
        "from authz.ids import new_decision_ids\n"
        "new_decision_ids(1)  # the pool is filled\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(write, ' '.join(new_decision_ids(20)).encode()); os._exit(0)\n"
        "os.close(write); os.wait()\n"
        "child = os.read(read, 1 << 16).decode().split()\n"
        "print(' '.join(child + new_decision_ids(20)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ids = out.stdout.split()
    assert len(ids) == 40
    random_parts = {text[19:] for text in ids}  # the variant and 62 random bits
    assert len(random_parts) == 40
    assert len({text[19:] for text in new_decision_ids(600)}) == 600  # past one pool of 512
