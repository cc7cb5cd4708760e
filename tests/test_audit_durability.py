"""A durable record survives the process being killed right after `await record()` returned."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import authz
from authz.audit import verify

SRC = Path(authz.__file__).resolve().parent.parent

CHILD = """
import asyncio, sys
from authz.audit import AuditLog
from authz.audit.testing import make_record

async def worker(log):
    while True:
        rec = make_record()
        await log.record(rec)
        # Only now may the decision be answered; tell the parent it was.
        sys.stdout.write(rec["decision_id"] + "\\n")
        sys.stdout.flush()

async def main():
    log = AuditLog(sys.argv[1], mode="durable").start()
    await asyncio.gather(*(worker(log) for _ in range(16)))

asyncio.run(main())
"""


def test_acknowledged_records_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while len(acknowledged) < 500:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"child stopped early: {child.stderr.read().decode()}")  # type: ignore[union-attr]
            acknowledged.append(line.decode().strip())
            assert time.monotonic() < deadline, "child too slow"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: commits and prints are in flight
        rest, _ = child.communicate(timeout=10)
    # Lines the child finished printing before it died count too; a torn last line does not.
    complete = rest.decode().split("\n")[:-1]
    acknowledged.extend(line for line in complete if line)
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as conn:
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM audit_log")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged decisions were lost"
    report = verify(path)
    assert report.ok, report.message
    assert report.checked == len(stored) >= len(acknowledged)
