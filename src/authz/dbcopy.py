"""Move a SQLite data directory into an empty PostgreSQL database, losing nothing.

What one process kept in AUTHZ_DATA_DIR (``state.db``: the add-on registry, sessions, the SSO
replay guard, the encrypted OAuth tokens; ``audit.db``: the audit log) is copied row for row
into the database replicas share (DATABASE_URL), so that add-ons keep their Platform API tokens
(the grant provisioning delivered can be exchanged only once), users stay logged in, and the
audit log goes on as the same hash chain: its entries keep their seq, hash and shared parts
(``authz audit verify --expect`` with a checkpoint taken before the move proves it). Tokens
stay encrypted as they were: keep the same AUTHZ_TOKEN_KEY.

The source's audit log must verify first. Both sides are then brought to the current schema
(what a starting server would do); the target must hold no rows, and every table of the source
must exist there. The rows are copied in one transaction, so a failure leaves none behind, and
the copy must verify with the source's head. Stop the server (every writer of the SQLite
files) first: rows written meanwhile would be missed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.audit.chain import checkpoint, verify
from authz.audit.schema import HEAD, audit_db_path, migrate_audit
from authz.store import (
    Database,
    migrate,
    open_store,
)

STATE_DB = "state.db"
BOOKKEEPING = frozenset({"schema_migrations"})
"""Tables each side keeps for itself (its schema version), never copied."""
ROWS_PER_INSERT = 200


class CopyError(Exception):
    """The copy cannot be made; the message says why and what to do. Nothing was written."""


@dataclass
class CopyReport:
    tables: dict[str, int] = field(default_factory=dict)
    """Rows copied per table."""
    audit_head: str = ""
    """The audit log's head after the copy (SEQ:HASH), the same as the source's."""
    checked: int = 0
    """Audit records the verification walked."""


def copy_to_postgres(data_dir: Path, url: str) -> CopyReport:
    """Copy AUTHZ_DATA_DIR's state.db and audit.db into the empty database at `url`."""
    state_path, audit_path = Path(data_dir) / STATE_DB, audit_db_path(data_dir)
    for path in (state_path, audit_path):
        if not path.is_file():
            raise CopyError(f"no {path.name} in {data_dir} (check --data-dir / AUTHZ_DATA_DIR)")
    with open_store(state_path) as source:
        migrate(source)
    migrate_audit(audit_path)
    before = verify(audit_path)
    if not before.ok:
        raise CopyError(
            f"the audit log in {data_dir} does not verify ({before.message}); nothing was "
            "copied. Find out why (authz audit verify) before moving it"
        )
    report = CopyReport()
    with open_store(url) as target:
        migrate(target)
        migrate_audit(url)
        with target.transaction(lock="authz:db-copy"):
            for path in (state_path, audit_path):
                with contextlib.closing(_read_only(path)) as db:
                    for table in _tables(db):
                        report.tables[table] = _copy_table(db, target, table)
    after = verify(url)
    if not after.ok or (after.head_seq, after.head_hash) != (before.head_seq, before.head_hash):
        raise CopyError(
            f"the copy is committed but its audit log does not verify as the source does "
            f"({after.message}); drop that database and copy again"
        )
    report.audit_head = str(checkpoint(url))
    report.checked = after.checked
    return report


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [name for (name,) in rows if name not in BOOKKEEPING]


def _copy_table(source: sqlite3.Connection, target: Database, table: str) -> int:
    columns = [row[1] for row in source.execute(f'PRAGMA table_info("{table}")')]
    present = _target_columns(target, table)
    if not present:
        raise CopyError(f"the target database has no table {table}: is it another schema?")
    missing = [c for c in columns if c not in present]
    if missing:
        raise CopyError(f"the target's {table} has no column {', '.join(missing)}")
    _require_empty(target, table)
    if table == HEAD:  # one row, the chain head, which the new log starts at genesis
        target.execute(f"DELETE FROM {HEAD}")
    names = ", ".join(columns)
    copied = 0
    for rows in _chunks(source.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid')):
        marks = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * len(rows))
        params = [value for row in rows for value in row]
        target.execute(f"INSERT INTO {table} ({names}) VALUES {marks}", params)
        copied += len(rows)
    return copied


def _target_columns(target: Database, table: str) -> set[str]:
    rows = target.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        (table,),
    )
    return {name for (name,) in rows}


def _require_empty(target: Database, table: str) -> None:
    if table == HEAD:
        seq = target.execute(f"SELECT max(seq) FROM {HEAD}").scalar()
        empty = not seq
    else:
        empty = target.execute(f"SELECT count(*) FROM {table}").scalar() == 0
    if not empty:
        raise CopyError(
            f"the target database is not empty ({table} has rows): copy into a fresh "
            "database, so that nothing there is mixed with or hidden by the copy"
        )


def _chunks(rows: Iterator[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_INSERT:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
