"""Persistence: one small interface per fact table, SQLite by default."""

from authz.store.sqlite import open_database

__all__ = ["open_database"]
