"""Choosing the backend: a PostgreSQL URL, or else a SQLite file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from authz.store.base import Database, StoreError, StoreUnavailable
from authz.store.sqlite import open_sqlite
from authz.store.urls import is_postgres_url, normalise_postgres_url, redact_url

__all__ = [
    "database_url_from_env",
    "is_postgres_url",
    "normalise_postgres_url",
    "open_store",
    "redact_url",
]


def database_url_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The PostgreSQL URL the service should use, or None for the embedded SQLite default.

    ``AUTHZ_DATABASE_URL`` wins over ``DATABASE_URL`` (Heroku Postgres sets the latter). Either
    may instead name a file holding the URL with ``_FILE`` appended (a URL usually carries a
    password). ``AUTHZ_DATABASE_URL`` must be a PostgreSQL URL; a ``DATABASE_URL`` that is not
    one (it may belong to something else) is ignored. ``postgres://`` is normalised to
    ``postgresql://``. Raises :class:`StoreError` (naming the variable, never its value).
    """
    env = os.environ if env is None else env
    for name, required in (("AUTHZ_DATABASE_URL", True), ("DATABASE_URL", False)):
        value = _read(env, name).strip()
        if not value:
            continue
        if is_postgres_url(value):
            return normalise_postgres_url(value)
        if required:
            raise StoreError(
                f"{name} must be a postgresql:// (or postgres://) URL; unset it to use the "
                "SQLite files under AUTHZ_DATA_DIR"
            )
    return None


def _read(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    file_name = env.get(f"{name}_FILE", "")
    if value and file_name:
        raise StoreError(f"both {name} and {name}_FILE are set; keep one")
    if value or not file_name:
        return value
    try:
        return Path(file_name).read_text().strip()
    except OSError as exc:
        raise StoreError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from None


def open_store(
    target: str | os.PathLike[str],
    *,
    pooled: bool = True,
    min_connections: int = 1,
    max_connections: int = 8,
    timeout: float = 10.0,
    application_name: str = "authz",
    session: Mapping[str, str] | None = None,
    busy_timeout: float = 5.0,
) -> Database:
    """Open a database: PostgreSQL for a ``postgresql://``/``postgres://`` URL, else the SQLite
    file at that path (created if needed, WAL). Does not migrate: call
    :func:`authz.store.migrate` next.

    PostgreSQL is reached through a connection pool of ``min_connections``..``max_connections``,
    or with ``pooled=False`` one dedicated connection (a writer that must hold its own, or a
    short-lived tool), which applies the ``session`` settings on every (re)connection. SQLite
    waits up to ``busy_timeout`` seconds for another connection's lock. Raises
    :class:`authz.store.StoreUnavailable` when PostgreSQL cannot be reached within ``timeout``
    seconds (the message names the server, never the password).
    """
    if is_postgres_url(target):
        url = normalise_postgres_url(str(target))
        if not pooled:
            return _dedicated(url, timeout, application_name, session)
        from authz.store.postgres import PostgresDatabase

        return PostgresDatabase(
            url,
            min_size=min_connections,
            max_size=max_connections,
            timeout=timeout,
            connect_timeout=max(1, int(timeout)),
            application_name=application_name,
        )
    text = os.fspath(target)
    if "://" in text:
        raise StoreError(
            f"unsupported database URL {redact_url(text)}: use postgresql://... or a file path"
        )
    return open_sqlite(text, busy_timeout_ms=int(busy_timeout * 1000))


def _dedicated(
    url: str, timeout: float, application_name: str, session: Mapping[str, str] | None
) -> Database:
    import psycopg

    from authz.store.postgres import PostgresConnection

    try:
        return PostgresConnection(
            url, connect_timeout=timeout, application_name=application_name, session=session
        )
    except psycopg.Error as exc:
        reason = (str(exc).strip() or type(exc).__name__).replace("\n", " ")
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}"
        ) from None
