"""Opening the embedded SQLite databases the same way everywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def open_database(path: Path | str, *, busy_timeout_ms: int = 5000) -> sqlite_utils.Database:
    """Open (creating if needed) a SQLite file in WAL mode, usable from any one thread at a time.

    WAL lets readers (audit queries, a second process) run while the writer commits;
    synchronous=FULL makes a commit durable against power loss, which the audit log promises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return sqlite_utils.Database(conn)
