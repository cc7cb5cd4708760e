"""Both backends for store tests: a SQLite file, or a throwaway PostgreSQL database.

A test module declares the fixture itself (deliberately not in conftest.py)::

    from tests.pg import BACKENDS, Backend, use_backend

    @pytest.fixture(params=BACKENDS)
    def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
        with use_backend(request.param, tmp_path) as chosen:
            yield chosen

and a test taking ``backend: Backend`` runs once per backend (ids ``sqlite`` and ``postgresql``).

PostgreSQL tests share one database per test run, ``authz_test_<random>``, created through the
server named by ``AUTHZ_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
postgres``) and dropped at exit, and each test gets a fresh schema (``search_path`` in the URL), so
every test starts empty. When no server answers, the PostgreSQL cases are skipped with the reason
(``pytest -ra`` lists it); ``AUTHZ_TEST_POSTGRES_URL=off`` skips them on purpose.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from authz.store import Database, open_store, redact_url

ENV = "AUTHZ_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")


@dataclass
class Server:
    """The throwaway database of this test run, or why there is none."""

    url: str | None
    skip_reason: str = ""
    admin: Any = None  # an autocommit psycopg connection to the throwaway database


_lock = threading.Lock()
_server: Server | None = None


def postgres() -> Server:
    """The throwaway database of this test run (created on first use)."""
    global _server
    with _lock:
        if _server is None:
            _server = _create()
        return _server


def _create() -> Server:
    admin_url = os.environ.get(ENV, "").strip() or DEFAULT_ADMIN_URL
    if admin_url.lower() in ("off", "0", "no", "false"):
        return Server(None, f"PostgreSQL tests disabled ({ENV}={admin_url})")
    import psycopg
    from psycopg import sql

    try:
        server = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return Server(
            None,
            f"PostgreSQL tests skipped: no server at {redact_url(admin_url)} ({reason}); "
            f"start one (.ci/run does) or point {ENV} at one",
        )
    name = f"authz_test_{secrets.token_hex(6)}"
    try:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        server.close()
        return Server(None, f"PostgreSQL tests skipped: cannot create a test database ({exc})")
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    created = Server(url, "", psycopg.connect(url, autocommit=True, connect_timeout=3))
    creator = os.getpid()

    def drop() -> None:
        if os.getpid() != creator:  # a forked child must never drop the parent's database
            return
        created.admin.close()
        try:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        finally:
            server.close()

    atexit.register(drop)
    return created


@dataclass
class Backend:
    """One backend for one test: every ``open()`` is a new Database on the same (at first
    empty) store, as another process or replica would have; all are closed after the test."""

    name: Literal["sqlite", "postgresql"]
    target: str
    opened: list[Database] = field(default_factory=list)

    def open(self) -> Database:
        db = open_store(self.target)
        self.opened.append(db)
        return db

    def close_all(self) -> None:
        for db in reversed(self.opened):
            db.close()
        self.opened.clear()


@contextmanager
def use_backend(name: str, directory: Path) -> Iterator[Backend]:
    """An empty store on backend ``name`` for one test (skips when PostgreSQL is unavailable)."""
    if name == "sqlite":
        chosen = Backend("sqlite", str(directory / "authz.db"))
        try:
            yield chosen
        finally:
            chosen.close_all()
        return
    server = postgres()
    if server.url is None:
        pytest.skip(server.skip_reason)
    schema = f"t_{secrets.token_hex(6)}"
    server.admin.execute(f'CREATE SCHEMA "{schema}"')
    chosen = Backend("postgresql", f"{server.url}?options={quote(f'-c search_path={schema}')}")
    try:
        yield chosen
    finally:
        chosen.close_all()
        server.admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def tables(db: Database) -> list[str]:
    """The tables of the store (PostgreSQL: of the test's schema)."""
    if db.dialect == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    else:
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
    return [row[0] for row in db.execute(query)]


def count(db: Database, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").scalar())


def dump(db: Database) -> str:
    """Every row of every table as text: what a copy of the database would give away."""
    lines = []
    for table in tables(db):
        for row in db.execute(f"SELECT * FROM {table}"):
            lines.append(f"{table}: {row!r}")
            lines.extend(value.decode("latin-1") for value in row if isinstance(value, bytes))
    return "\n".join(lines)
