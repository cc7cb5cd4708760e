"""The typed decision record: built once by the decision path, read back typed (replay's reader),
with an explicit stage and refusal code, on both backends; records written by the previous
release read with the stage inferred; the no-op sink records nothing."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from authz.audit import (
    AuditLog,
    DecisionRecord,
    NopAuditLog,
    get,
    read_for_replay,
    verify,
)
from authz.audit.record import refusal_code_of
from authz.audit.testing import make_record
from authz.config import Settings
from authz.decide import Decider, Entity, FactSources, Item, direct_subject
from authz.facts.sessions import TOKEN_PREFIX
from authz.policy.holder import PolicyHolder
from tests.conftest import SHIPPED_POLICIES
from tests.pg import Backend

FIXTURE = Path(__file__).parent / "data" / "main-2026-12"
ADDON_ID = "01234567-89ab-cdef-0123-456789ab0001"


class Registry:
    def get(self, resource_id: str) -> Any:
        return SimpleNamespace(
            state="provisioned", app_id="app-1", app_name="shop", plan="basic", region="us"
        )


def settings_for(backend: Backend, tmp_path: Path) -> Settings:
    if backend.name == "sqlite":
        return Settings(data_dir=tmp_path)
    return Settings(data_dir=tmp_path, database_url=backend.target)


def record_decisions(log: Any) -> list[str]:
    decider = Decider(
        PolicyHolder.load(SHIPPED_POLICIES), facts=FactSources(addons=Registry()), audit=log
    )

    async def main() -> list[str]:
        service = direct_subject(Entity("service", "billing", {"password": "hunter2"}))
        outcomes = await decider.check(
            service,
            [Item("addon.read_data", Entity("addon", ADDON_ID))] * 2,
            context={"ip": "203.0.113.9"},
            request_id="req-1",
            caller="web",
        )
        refused = await decider.record_refusal(
            kind="sso",
            subject=direct_subject(Entity("heroku_user", "user-1")),
            action="session.login",
            resource=Entity("addon", ADDON_ID),
            reason="SSO_REPLAYED: this SSO form was already used",
            caller="heroku",
        )
        unknown = await decider.subject_from_session("no-such-token")
        [unknown_outcome] = await decider.check(
            unknown, [Item("dashboard.view", Entity("addon", ADDON_ID))], caller="web"
        )
        return [*(o.decision_id for o in outcomes), refused, unknown_outcome.decision_id]

    return asyncio.run(main())


def test_records_are_read_back_typed_with_their_stage(backend: Backend, tmp_path: Path) -> None:
    settings = settings_for(backend, tmp_path)
    with AuditLog(settings.audit_target) as log:
        ids = record_decisions(log)
    records = list(read_for_replay(settings))
    assert [r.decision_id for r in records] == ids  # oldest first, all of them
    evaluated, again, refused, unknown = records
    assert all(isinstance(r, DecisionRecord) for r in records)
    assert (evaluated.stage, evaluated.refusal_code, evaluated.kind) == ("evaluated", "", "check")
    assert evaluated.effect == "DENY" and evaluated.caller == "web"
    assert evaluated.principal_ref == "service:billing"
    assert evaluated.resource_ref == f"addon:{ADDON_ID}"
    # Shared parts are put back: the principal's attributes (redacted) and the context.
    assert evaluated.input["principal"]["attributes"] == {"password": "[redacted]"}
    assert evaluated.input["context"] == {"ip": "203.0.113.9"}
    assert "access" in evaluated.input and evaluated.duration_ms is not None
    assert again.input == evaluated.input
    assert (refused.stage, refused.refusal_code, refused.kind) == ("refused", "SSO_REPLAYED", "sso")
    assert (unknown.stage, unknown.refusal_code) == ("refused", "SESSION_UNKNOWN")
    assert verify(settings.audit_target).ok
    # The stored JSON names the stage; the dict readers still work as before.
    stored = get(settings.audit_target, refused.decision_id)
    assert stored is not None
    assert (stored["stage"], stored["refusal_code"]) == ("refused", "SSO_REPLAYED")
    assert DecisionRecord.from_dict(stored) == refused


def test_since_and_a_plain_target(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        for t in (100.0, 200.0, 300.0):
            log.record_blocking(make_record(time=t))
    assert [r.time for r in read_for_replay(path, since=200.0)] == [200.0, 300.0]


def test_session_tokens_are_redacted_from_a_typed_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    token = TOKEN_PREFIX + "A" * 43
    decider = Decider(PolicyHolder.load(SHIPPED_POLICIES), audit=AuditLog(path).start())

    async def main() -> None:
        await decider.check(
            direct_subject(Entity("service", "billing")),
            [Item("addon.read_data", Entity("addon", ADDON_ID), {"note": f"x {token} y"})],
            request_id=token,
        )

    try:
        asyncio.run(main())
    finally:
        decider.audit.close()  # type: ignore[attr-defined]
    text = "".join(row[0] for row in sqlite3.connect(path).execute("SELECT record FROM audit_log"))
    assert token[:12] not in text and "[redacted]" in text


def test_records_written_by_the_previous_release_get_their_stage_inferred(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "audit.db", tmp_path / "audit.db")
    records = list(read_for_replay(Settings(data_dir=tmp_path)))
    assert [r.decision_id[-3:] for r in records] == ["003", "004", "005", "010", "011", "012"]
    assert all(r.stage == "evaluated" for r in records)  # matched rules, or the default deny
    refusal = make_record(rules=(), effect="DENY")
    refusal["reasons"] = ["ADDON_DEPROVISIONED: the add-on was deprovisioned"]
    legacy = DecisionRecord.from_dict(refusal)
    assert (legacy.stage, legacy.refusal_code) == ("refused", "ADDON_DEPROVISIONED")
    assert refusal_code_of("no allow rule matched action 'x' (default deny)") == ""


def test_a_typed_record_keeps_what_a_newer_release_added() -> None:
    stored = {**make_record(), "stage": "evaluated", "verdict_source": "v2"}
    record = DecisionRecord.from_dict(stored)
    assert record.extra == {"verdict_source": "v2"}
    assert record.to_dict()["verdict_source"] == "v2"
    assert replace(record, effect="DENY").to_dict()["effect"] == "DENY"


def test_the_no_op_sink_records_nothing(tmp_path: Path) -> None:
    sink = NopAuditLog(tmp_path / "audit.db")
    decider = Decider(PolicyHolder.load(SHIPPED_POLICIES), audit=sink)
    assert Decider(PolicyHolder.load(SHIPPED_POLICIES)).audit.recording is False

    async def main() -> None:
        [outcome] = await decider.check(
            direct_subject(Entity("service", "billing")),
            [Item("addon.read_data", Entity("addon", ADDON_ID))],
        )
        assert outcome.decision.effect.value == "DENY"

    asyncio.run(main())
    assert sink.counters()["records_written"] == 0
    assert not (tmp_path / "audit.db").exists()


def test_the_log_refuses_a_malformed_typed_record(tmp_path: Path) -> None:
    from authz.audit import AuditRecordInvalid

    good = DecisionRecord.from_dict(make_record())
    with AuditLog(tmp_path / "audit.db") as log, pytest.raises(AuditRecordInvalid, match="effect"):
        log.record_blocking(replace(good, effect="MAYBE"))
