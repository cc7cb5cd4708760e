"""`authz db migrate`: bring the state store and the audit log to the current schema."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from authz.cli.common import ExitCode, add_command, fail


def cmd_migrate(args: argparse.Namespace) -> int:
    from authz.audit.errors import AuditError
    from authz.audit.schema import migrate_audit
    from authz.config import ConfigError, Settings
    from authz.store import StoreError, is_postgres_url, migrate, open_store

    if args.database_url and not is_postgres_url(args.database_url):
        return fail(
            args, "--database-url must be a postgresql:// (or postgres://) URL", ExitCode.USAGE
        )
    try:
        settings = Settings.from_env()
        if args.database_url:
            settings = replace(settings, database_url=args.database_url)
        with open_store(settings.state_target) as db:
            applied = migrate(db)
            where = db.location
        audit_applied = migrate_audit(settings.audit_target)
    except ConfigError as exc:
        return fail(args, str(exc), ExitCode.USAGE)
    except (StoreError, AuditError) as exc:
        return fail(args, str(exc), ExitCode.ERROR)
    print(f"{where}: applied schema versions {applied}" if applied else f"{where}: up to date")
    print(
        f"audit log: applied schema versions {audit_applied}"
        if audit_applied
        else "audit log: up to date"
    )
    return ExitCode.OK


def register(commands: Any) -> None:
    db = add_command(commands, "db", help="the shared store", example="authz db migrate")
    group = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    migrate = add_command(
        group,
        "migrate",
        help="apply schema migrations (the server also does)",
        description="Create or upgrade the state store and the audit log: the SQLite files "
        "under AUTHZ_DATA_DIR, or the PostgreSQL database of AUTHZ_DATABASE_URL / DATABASE_URL.",
        example="DATABASE_URL=postgresql://authz@db.internal/authz authz db migrate",
        func=cmd_migrate,
    )
    migrate.add_argument(
        "--database-url",
        metavar="URL",
        help="default AUTHZ_DATABASE_URL / DATABASE_URL (prefer them: a URL on the command line "
        "shows its password in the process list)",
    )
    copy = add_command(
        group,
        "copy",
        help="copy a SQLite data directory into an empty PostgreSQL database",
        description=(
            "Copy AUTHZ_DATA_DIR's state.db and audit.db, row for row, into the empty PostgreSQL "
            "database replicas share; the source's audit log must verify first and the copy "
            "must verify with the same head. Stop the server first."
        ),
        example="DATABASE_URL=postgresql://authz@db.internal/authz authz db copy --data-dir data",
        func=cmd_copy,
    )
    copy.add_argument("--data-dir", help="the SQLite files (default AUTHZ_DATA_DIR or ./data)")
    copy.add_argument(
        "--database-url", help="the empty database (default AUTHZ_DATABASE_URL / DATABASE_URL)"
    )


def cmd_copy(args: argparse.Namespace) -> int:
    import sqlite3
    from pathlib import Path

    from authz.audit.errors import AuditError
    from authz.config import ConfigError, Settings
    from authz.dbcopy import CopyError, copy_to_postgres
    from authz.store import StoreError, is_postgres_url, redact_url

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return fail(args, str(exc), ExitCode.USAGE)
    data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir
    url = args.database_url or settings.database_url
    if not url or not is_postgres_url(url):
        return fail(
            args,
            "name the PostgreSQL database: --database-url postgresql://... or DATABASE_URL",
            ExitCode.USAGE,
        )
    try:
        report = copy_to_postgres(data_dir, url)
    except (CopyError, StoreError, AuditError, sqlite3.Error) as exc:
        return fail(args, str(exc), ExitCode.ERROR)
    for table, rows in report.tables.items():
        print(f"{table}: {rows} rows")
    print(
        f"copied into {redact_url(url)}; audit log head {report.audit_head} "
        f"({report.checked} records verified)"
    )
    return ExitCode.OK
