"""Every decision the server answers is in the audit log exactly once, with its facts; on both
backends (DATA_DIR/audit.db, or the PostgreSQL database of DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from authz.audit.chain import verify
from authz.audit.query import query
from authz.config import Settings
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService
from tests.pg import BACKENDS, use_backend


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None (SQLite under AUTHZ_DATA_DIR) or a PostgreSQL URL for the whole service."""
    with use_backend(request.param, tmp_path / "db") as chosen:
        yield None if chosen.name == "sqlite" else chosen.target


def assert_audit_where_configured(svc: RunningService, database_url: str | None) -> None:
    expected = database_url or svc.service.settings.data_dir / "audit.db"
    assert svc.service.audit.target == expected, (
        "the service must keep its audit log in DATABASE_URL when set "
        "(authz.server.app: AuditLog(audit_target(settings.data_dir, settings.database_url)))"
    )


def request(i: int) -> pb.CheckRequest:
    return pb.CheckRequest(
        principal=pb.Principal(type="service", id=f"svc-{i % 7}"),
        action="account.login_password" if i % 2 else "dashboard.view",
        resource=pb.Resource(type="account", id=f"acct-{i}"),
        request_id=f"req-{i}",
    )


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_concurrent_decisions_are_recorded_exactly_once(
    start: Callable[..., RunningService],
    base_settings: Settings,
    mode: str,
    database_url: str | None,
) -> None:
    svc = start(base_settings, audit_mode=mode, database_url=database_url)
    assert_audit_where_configured(svc, database_url)
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    with ThreadPoolExecutor(16) as pool:
        singles = list(pool.map(lambda i: stub.Check(request(i)).decision_id, range(300)))
    batch = stub.CheckBatch(
        pb.CheckBatchRequest(
            principal=pb.Principal(type="service", id="svc-batch"),
            items=[
                pb.CheckItem(
                    action="dashboard.view", resource=pb.Resource(type="account", id=f"b{i}")
                )
                for i in range(10)
            ],
            request_id="batch-1",
        )
    )
    answered = singles + [r.decision_id for r in batch.results]
    svc.stop()  # flushes an async log
    records = query(svc.service.audit.path, limit=None)
    assert sorted(r["decision_id"] for r in records) == sorted(answered)
    assert verify(svc.service.audit.path).ok
    by_id = {r["decision_id"]: r for r in records}
    one = by_id[singles[1]]
    assert one["request_id"] == "req-1"
    assert one["effect"] == "DENY"
    assert one["matched_rules"][0]["rule_id"] == "no-password-login"
    assert one["policy_revision"] == svc.service.policies.current.revision
    assert one["caller"] == "anonymous"
    assert one["input"]["action"] == "account.login_password"
    assert {by_id[r.decision_id]["request_id"] for r in batch.results} == {"batch-1"}


def test_query_decisions_streams_filtered_records(
    start: Callable[..., RunningService], base_settings: Settings, database_url: str | None
) -> None:
    svc = start(base_settings, database_url=database_url)
    assert_audit_where_configured(svc, database_url)
    stub = pb_grpc.AuthorizationServiceStub(svc.channel)
    ids = [stub.Check(request(i)).decision_id for i in range(6)]
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    denied = list(
        admin.QueryDecisions(
            admin_pb2.QueryDecisionsRequest(action="account.login_password", limit=50)
        )
    )
    assert sorted(r.decision_id for r in denied) == sorted(ids[1::2])
    assert all(r.effect == pb.EFFECT_DENY for r in denied)
    assert denied[0].matched_rules[0].rule_id == "no-password-login"
    assert denied[0].record.fields["request_id"].string_value.startswith("req-")
    by_effect = {
        effect: list(admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(effect=effect, limit=50)))
        for effect in (pb.EFFECT_ALLOW, pb.EFFECT_DENY)
    }
    assert by_effect[pb.EFFECT_ALLOW] == []  # services are allowed nothing by the shipped policies
    assert sorted(r.decision_id for r in by_effect[pb.EFFECT_DENY]) == sorted(ids)
    with pytest.raises(grpc.RpcError) as info:
        list(admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=-1)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
