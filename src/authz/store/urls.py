"""Database URLs: which backend a target names, and how to show one without its password.

A leaf module: the backends and `connect` import it, it imports nothing of theirs.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["is_postgres_url", "normalise_postgres_url", "redact_url"]

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
