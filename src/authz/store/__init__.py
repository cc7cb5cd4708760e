"""Persistence behind one small interface: SQLite (default) and PostgreSQL.

```python
from authz.store import database_url_from_env, migrate, open_store

db = open_store(database_url_from_env() or data_dir / "state.db")
migrate(db)                       # the state set → versions applied now ([] when up to date)
migrate(db, AUDIT)                # another named set (authz.audit.migrations), same table
db.execute("SELECT COUNT(*) FROM sessions").scalar()
with db.transaction(lock="addon:" + resource_id):
    ...                           # read-then-write, serialised across replicas
db.close()
```

The fact stores (``authz.facts``) take a :class:`Database`; they also still accept the
``sqlite_utils.Database`` that :func:`open_database` returns.
"""

from authz.store.base import Database, Dialect, Result, StoreError, StoreUnavailable
from authz.store.connect import (
    database_url_from_env,
    is_postgres_url,
    normalise_postgres_url,
    open_store,
    redact_url,
)
from authz.store.migrations import (
    MIGRATIONS,
    STATE,
    Migration,
    MigrationSet,
    applied_versions,
    ensure_schema,
    latest_version,
    migrate,
)
from authz.store.sqlite import SqliteDatabase, StoreLike, as_database, open_database, open_sqlite

__all__ = [
    "MIGRATIONS",
    "STATE",
    "Database",
    "Dialect",
    "Migration",
    "MigrationSet",
    "Result",
    "SqliteDatabase",
    "StoreError",
    "StoreLike",
    "StoreUnavailable",
    "applied_versions",
    "as_database",
    "database_url_from_env",
    "ensure_schema",
    "is_postgres_url",
    "latest_version",
    "migrate",
    "normalise_postgres_url",
    "open_database",
    "open_sqlite",
    "open_store",
    "redact_url",
]
