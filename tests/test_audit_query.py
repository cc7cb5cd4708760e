"""Reviewing the log: filters, get, stats, time parsing; records come back exactly as written.

The tests taking `log_path` or `target` run on both backends (SQLite file, PostgreSQL schema).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.audit import (
    AuditLog,
    AuditLogNotFound,
    get,
    get_entry,
    parse_duration,
    parse_time,
    query,
    stats,
    verify,
)
from authz.audit.testing import make_record
from tests.pg import BACKENDS, use_backend

NOW = 1_700_000_000.0
HOUR = 3600.0

DENY_SUSPENDED = ("base", "deny-suspended", "DENY", "the add-on is suspended")
OWNER_READS = ("base", "owner-reads", "ALLOW", "owners may read")
ADMIN_ALL = ("admin", "staff-all", "ALLOW", "staff may do anything")


Target = Path | str


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with use_backend(request.param, tmp_path) as chosen:
        yield tmp_path / "audit.db" if chosen.name == "sqlite" else chosen.target


@pytest.fixture(scope="module", params=BACKENDS)
def log_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("audit")
    with use_backend(request.param, directory) as chosen:
        yield _fill(directory / "audit.db" if chosen.name == "sqlite" else chosen.target)


def _fill(path: Target) -> Target:
    records: list[dict[str, Any]] = [
        # hours ago, principal, action, resource, app, effect, rules, kind
        make_record(time=NOW - 30 * 24 * HOUR, principal=("user", "old"), rules=[OWNER_READS]),
        make_record(time=NOW - 5 * HOUR, principal=("user", "alice"), rules=[OWNER_READS]),
        make_record(
            time=NOW - 3 * HOUR,
            principal=("user", "bob"),
            email="bob@example.com",
            effect="DENY",
            rules=[],
            action="account.update",
        ),
        make_record(
            time=NOW - 2 * HOUR,
            principal=("user", "bob"),
            email="bob@example.com",
            effect="DENY",
            rules=[DENY_SUSPENDED, OWNER_READS],
            resource=("addon", "a-2"),
            app_id="app-2",
        ),
        make_record(
            time=NOW - 1.5 * HOUR,
            principal=("service", "bob"),
            rules=[ADMIN_ALL],
            action="plan.change",
            resource=("addon", "a-2"),
            app_id="app-2",
        ),
        make_record(
            time=NOW - 0.5 * HOUR,
            kind="sso",
            principal=("user", "carol"),
            email="carol@example.com",
            effect="DENY",
            rules=[],
            action="sso.login",
            resource=("addon", "a-3"),
            app_id="app-3",
        ),
    ]
    with AuditLog(path) as log:
        for rec in records:
            log.record_blocking(rec)
    return path


def ids_of(records: list[dict[str, Any]]) -> list[str]:
    return [r["principal"]["id"] + "@" + str(round((NOW - r["time"]) / HOUR, 1)) for r in records]


def test_query_everything_newest_first(log_path: Target) -> None:
    assert ids_of(query(log_path)) == [
        "carol@0.5",
        "bob@1.5",
        "bob@2.0",
        "bob@3.0",
        "alice@5.0",
        "old@720.0",
    ]
    assert len(query(log_path, limit=2)) == 2


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"since": "4h"}, ["carol@0.5", "bob@1.5", "bob@2.0", "bob@3.0"]),
        ({"since": "4h", "until": "1h"}, ["bob@1.5", "bob@2.0", "bob@3.0"]),
        ({"since": NOW - 2 * HOUR}, ["carol@0.5", "bob@1.5", "bob@2.0"]),
        ({"principal": "bob"}, ["bob@1.5", "bob@2.0", "bob@3.0"]),
        ({"principal": "user:bob"}, ["bob@2.0", "bob@3.0"]),
        ({"principal": "service:bob"}, ["bob@1.5"]),
        ({"resource": "addon:a-2"}, ["bob@1.5", "bob@2.0"]),
        ({"resource": "a-3"}, ["carol@0.5"]),
        ({"app": "app-2"}, ["bob@1.5", "bob@2.0"]),
        ({"action": "account.update"}, ["bob@3.0"]),
        ({"action": "account.*"}, ["bob@2.0", "bob@3.0", "alice@5.0", "old@720.0"]),
        ({"effect": "deny"}, ["carol@0.5", "bob@2.0", "bob@3.0"]),
        ({"effect": "DENY", "since": "2.5h"}, ["carol@0.5", "bob@2.0"]),
        ({"rule": "owner-reads"}, ["bob@2.0", "alice@5.0", "old@720.0"]),
        ({"rule": "base/deny-suspended"}, ["bob@2.0"]),
        ({"rule": "admin/owner-reads"}, []),
        ({"kind": "sso"}, ["carol@0.5"]),
        ({"principal": "nobody"}, []),
    ],
)
def test_query_filters(log_path: Target, filters: dict[str, Any], expected: list[str]) -> None:
    assert ids_of(query(log_path, now=NOW, **filters)) == expected


def test_query_rejects_bad_filters(log_path: Target) -> None:
    with pytest.raises(ValueError, match="ALLOW or DENY"):
        query(log_path, effect="maybe")
    with pytest.raises(ValueError, match="cannot read time"):
        query(log_path, since="last tuesday")


def test_missing_log_is_an_error_not_an_empty_answer(tmp_path: Path) -> None:
    with pytest.raises(AuditLogNotFound, match="no audit log"):
        query(tmp_path / "nope" / "audit.db")
    assert not (tmp_path / "nope").exists()
    with use_backend("postgresql", tmp_path) as empty:
        with pytest.raises(AuditLogNotFound, match="no audit log in"):
            query(empty.target)
        with pytest.raises(AuditLogNotFound, match="no audit log in"):
            stats(empty.target)


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("account.*", ["account.read", "account.", "account.a.b"], ["accountXread", "account"]),
        ("*.login", ["session.login", ".login"], ["session.login2", "session_login"]),
        ("a?c", ["abc", "a.c"], ["ac", "abbc"]),
        ("plan.[ab]*", ["plan.a", "plan.bx"], ["plan.c"]),
        ("plan.[^ab]", ["plan.c"], ["plan.a", "plan.cc"]),
        ("x[]]y", ["x]y"], ["xy"]),
        ("a(b)+c|d$.", ["a(b)+c|d$."], ["abc", "abbc", "d", "a(b)+c|d$x"]),
        ("a[bc", [], ["a[bc", "ab"]),  # an unterminated set matches nothing
        ("back\\slash*", ["back\\slash", "back\\slashes"], ["backslash"]),
    ],
)
def test_glob_filters_match_the_same_on_both_backends(
    target: Target, pattern: str, matches: list[str], misses: list[str]
) -> None:
    """--action globs: SQLite's GLOB, and on PostgreSQL the same pattern as a regex."""
    with AuditLog(target) as log:
        for action in matches + misses:
            log.record_blocking(make_record(action=action))
    found = {r["action"] for r in query(target, action=pattern, limit=None)}
    assert found == set(matches)


def test_get_returns_the_record_exactly(log_path: Target) -> None:
    newest = query(log_path, limit=1)[0]
    assert get(log_path, newest["decision_id"]) == newest
    entry = get_entry(log_path, newest["decision_id"])
    assert entry is not None and entry.seq == 6 and len(entry.hash) == 64
    assert get(log_path, "no-such-id") is None


def test_stats(log_path: Target) -> None:
    result = stats(log_path, since="24h", now=NOW)
    assert result["total"] == 5
    assert result["since"] == NOW - 24 * HOUR
    assert result["by_effect"] == {"ALLOW": 2, "DENY": 3}
    assert result["by_kind"] == {"check": 4, "sso": 1}
    assert result["by_action"] == {"account.read": 2, "account.update": 1, "plan.change": 1} | {
        "sso.login": 1
    }
    assert result["by_rule"] == {"base/owner-reads": 2, "admin/staff-all": 1} | {
        "base/deny-suspended": 1
    }
    assert result["by_principal_type"] == {"user": 4, "service": 1}
    assert result["top_denied_principals"] == [
        {"principal": "user:bob", "email": "bob@example.com", "count": 2},
        {"principal": "user:carol", "email": "carol@example.com", "count": 1},
    ]
    assert stats(log_path)["total"] == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - 1800),
        ("1h", NOW - 3600),
        ("7d", NOW - 7 * 86400),
        ("90d", NOW - 90 * 86400),
        ("2w", NOW - 14 * 86400),
        ("1.5h", NOW - 5400),
        ("now", NOW),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T22:13:20", NOW),
        ("2023-11-14", NOW - (22 * 3600 + 13 * 60 + 20)),
        ("1700000000", NOW),
        (1_700_000_000, NOW),
    ],
)
def test_parse_time(text: str | float, expected: float) -> None:
    assert parse_time(text, now=NOW) == pytest.approx(expected)


def test_parse_time_uses_the_clock_and_refuses_nonsense() -> None:
    assert parse_time("1h", clock=lambda: 10_000.0) == 6400.0
    for bad in ("yesterday", "1y", "", "h1"):
        with pytest.raises(ValueError, match="cannot read time"):
            parse_time(bad, now=NOW)


def test_parse_duration() -> None:
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("45s") == 45
    assert parse_duration("120") == 120
    with pytest.raises(ValueError, match="cannot read duration"):
        parse_duration("soon")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_records_round_trip_exactly_and_chain(target: Target) -> None:
    path = target
    written = 0
    with AuditLog(path) as log:

        @settings(max_examples=60, deadline=None)
        @given(
            context=json_values,
            email=st.text(max_size=30),
            principal_id=st.text(min_size=1, max_size=20),
            time=st.floats(min_value=0, max_value=4e9),
        )
        def check(context: Any, email: str, principal_id: str, time: float) -> None:
            nonlocal written
            rec = make_record(time=time, email=email, principal=("user", principal_id))
            rec["input"]["context"] = context
            log.record_blocking(rec)
            written += 1
            assert get(path, rec["decision_id"]) == rec
            found = query(path, principal=principal_id, limit=None)
            assert rec["decision_id"] in {r["decision_id"] for r in found}

        check()
    report = verify(path)
    assert report.ok and report.checked == written
