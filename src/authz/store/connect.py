"""Choosing the backend: a PostgreSQL URL, or else a SQLite file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from authz.store.base import Database, StoreError
from authz.store.sqlite import open_sqlite

__all__ = [
    "database_url_from_env",
    "is_postgres_url",
    "normalise_postgres_url",
    "open_store",
    "redact_url",
]

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` is a ``postgresql://`` or ``postgres://`` URL (any letter case)."""
    return isinstance(target, str) and target.lower().startswith(_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) replaced by
    ``***``, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        query = [
            "password=***" if item.lower().startswith("password=") else item
            for item in parts.query.split("&")
        ]
        parts = parts._replace(query="&".join(query))
    return urlunsplit(parts)


def normalise_postgres_url(url: str) -> str:
    """``postgres://`` (Heroku's spelling) → ``postgresql://``; other URLs are returned as is."""
    if url.lower().startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    if url.lower().startswith("postgresql://"):
        return "postgresql://" + url[len("postgresql://") :]
    return url


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
    min_connections: int = 1,
    max_connections: int = 8,
    timeout: float = 10.0,
) -> Database:
    """Open the state database: PostgreSQL for a ``postgresql://``/``postgres://`` URL (through
    a connection pool of ``min_connections``..``max_connections``), else the SQLite file at that
    path (created if needed, WAL). Does not migrate: call :func:`authz.store.migrate` next.

    Raises :class:`authz.store.StoreUnavailable` when PostgreSQL cannot be reached within
    ``timeout`` seconds (the message names the server, never the password).
    """
    if is_postgres_url(target):
        from authz.store.postgres import PostgresDatabase

        url = normalise_postgres_url(str(target))
        return PostgresDatabase(
            url,
            min_size=min_connections,
            max_size=max_connections,
            timeout=timeout,
            connect_timeout=max(1, int(timeout)),
        )
    text = os.fspath(target)
    if "://" in text:
        raise StoreError(
            f"unsupported database URL {redact_url(text)}: use postgresql://... or a file path"
        )
    return open_sqlite(text)
