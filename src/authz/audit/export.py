"""Exporting decision records: JSON lines (each record whole) or CSV (one row per decision).

Both write every record they are given, as they come (the caller streams them from
`iter_query`), so an export of the whole log holds the whole log.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from authz.audit.explain import email_of, rules_of
from authz.clock import rfc3339

__all__ = ["CSV_COLUMNS", "write_csv", "write_json_lines"]

CSV_COLUMNS = (
    "decision_id",
    "time",
    "kind",
    "effect",
    "principal_type",
    "principal_id",
    "principal_email",
    "action",
    "resource_type",
    "resource_id",
    "app_id",
    "matched_rules",
    "policy_revision",
    "errors",
    "duration_ms",
    "caller",
    "request_id",
)


def write_json_lines(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """One whole record per line (keys sorted); returns how many were written."""
    written = 0
    for record in records:
        out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        written += 1
    return written


def write_csv(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """A header, then one row per record (CSV_COLUMNS); returns how many records were written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    written = 0
    for r in records:
        principal = r.get("principal") if isinstance(r.get("principal"), dict) else {}
        resource = r.get("resource") if isinstance(r.get("resource"), dict) else {}
        time = r.get("time")
        writer.writerow(
            [
                r.get("decision_id", ""),
                rfc3339(time) if isinstance(time, int | float) else "",
                r.get("kind", ""),
                r.get("effect", ""),
                principal.get("type", ""),
                principal.get("id", ""),
                email_of(r),
                r.get("action", ""),
                resource.get("type", ""),
                resource.get("id", ""),
                r.get("app_id", ""),
                rules_of(r),
                r.get("policy_revision", ""),
                " | ".join(str(e) for e in r.get("errors") or []),
                r.get("duration_ms", ""),
                r.get("caller", ""),
                r.get("request_id", ""),
            ]
        )
        written += 1
    return written
