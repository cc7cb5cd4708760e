"""Issue 12 item 5, audit write amplification: what a batch shares is stored once, the bytes a
request adds to the log are a small multiple of its size, one caller's flood does not hold up
another caller's records, and reading the log streams.

Every test taking `target` runs on both backends (SQLite file, PostgreSQL schema).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.audit import AuditLog, aiter_query, get_entry, iter_query, prune, query, verify
from authz.audit.record import PART_MIN_BYTES
from authz.audit.testing import execute_sql, fetch_all, hold_write_lock, make_record
from authz.cli.main import main as authz_main
from authz.config import Settings
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService
from tests.pg import BACKENDS, Backend, use_backend

Target = Path | str
NOW = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture
def target(backend: Backend, tmp_path: Path) -> Target:
    return tmp_path / "audit.db" if backend.name == "sqlite" else backend.target


def big_principal(user: str = "u-1", keys: int = 40) -> dict[str, Any]:
    """A principal whose attributes encode to a few kB: well over PART_MIN_BYTES."""
    attributes = {f"attr{i:03}": f"{user}-value-{i}-" + "x" * 80 for i in range(keys)}
    return {"type": "user", "id": user, "attributes": attributes, "auth": {"method": "none"}}


def split_record(full: dict[str, Any]) -> dict[str, Any]:
    """A full record as the decision path hands it to the log: without the shared principal."""
    own = copy.deepcopy(full)
    del own["input"]["principal"]
    return own


def batch(
    principal: dict[str, Any],
    context: dict[str, Any],
    item_contexts: list[dict[str, Any]],
    **fields: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(the full records, the records without what they share, the shared values)."""
    full, own = [], []
    for item_context in item_contexts:
        record = make_record(**fields)
        record["input"]["principal"] = principal
        record["input"]["context"] = {**context, **item_context}
        full.append(record)
        stripped = split_record(record)
        if item_context:
            stripped["input"]["context"] = item_context
        else:
            del stripped["input"]["context"]
        own.append(stripped)
    return full, own, {"input.principal": principal, "input.context": context}


def stored_bytes(target: Target, where: str = "", params: tuple[Any, ...] = ()) -> int:
    """Bytes of record JSON, plus those of the shared parts the records name (each once)."""
    texts = [r[0] for r in fetch_all(target, f"SELECT record FROM audit_log {where}", params)]
    hashes = {h for text in texts for h in (json.loads(text).get("parts") or {}).values()}
    parts = sum(
        fetch_all(target, "SELECT length(body) FROM audit_part WHERE hash = ?", (h,))[0][0]
        for h in hashes
    )
    return sum(len(text) for text in texts) + parts


def test_a_batch_stores_what_it_shares_once_and_reads_back_whole(target: Target) -> None:
    principal = big_principal()
    context = {"ip": "203.0.113.9", "note": "n" * 600}
    full, own, shared = batch(principal, context, [{}, {"step": 2}, {"ip": "198.51.100.1"}] * 7)
    with AuditLog(target) as log:
        asyncio.run(log.record_many(own, shared))
        # The next request of the same caller shares the same principal: stored once in all.
        again_full, again, again_shared = batch(principal, {}, [{}, {}])
        asyncio.run(log.record_many(again, again_shared))

    assert fetch_all(target, "SELECT count(*) FROM audit_part") == [(2,)]
    # Each record names its parts by hash, inside the chained JSON; none holds the big text.
    texts = [r[0] for r in fetch_all(target, "SELECT record FROM audit_log ORDER BY seq")]
    assert all("x" * 80 not in text and "n" * 600 not in text for text in texts)
    assert set(json.loads(texts[0])["parts"]) == {"input.principal", "input.context"}
    assert set(json.loads(texts[-1])["parts"]) == {"input.principal"}  # {} is small: copied
    (last_use,) = fetch_all(target, "SELECT max(last_seq) FROM audit_part_use")
    assert last_use == (23,)  # the part's use moved on to the second request's records
    # Readers see the records exactly as the decision path made them.
    expected = full + again_full
    assert query(target, limit=None, oldest_first=True) == expected
    entry = get_entry(target, full[1]["decision_id"])
    assert entry is not None and entry.record == full[1]
    assert set(entry.parts) == {"input.principal", "input.context"}
    assert verify(target).ok


def test_small_shared_values_are_copied_into_each_record(target: Target) -> None:
    principal = {"type": "user", "id": "u-2", "attributes": {"plan": "pro"}}
    full, own, shared = batch(principal, {"ip": "192.0.2.1"}, [{}, {"x": 1}])
    assert len(json.dumps(principal)) < PART_MIN_BYTES
    with AuditLog(target) as log:
        asyncio.run(log.record_many(own, shared))
    assert fetch_all(target, "SELECT count(*) FROM audit_part") == [(0,)]
    stored = [json.loads(r[0]) for r in fetch_all(target, "SELECT record FROM audit_log")]
    assert sorted(stored, key=lambda r: r["decision_id"]) == sorted(
        full, key=lambda r: r["decision_id"]
    )


def write_shared(target: Target, time: float, principal: dict[str, Any], n: int = 3) -> list[str]:
    full, own, shared = batch(principal, {}, [{}] * n, time=time)
    with AuditLog(target) as log:
        asyncio.run(log.record_many(own, shared))
    return [r["decision_id"] for r in full]


def part_of(target: Target, decision_id: str) -> str:
    [(text,)] = fetch_all(
        target, "SELECT record FROM audit_log WHERE decision_id = ?", (decision_id,)
    )
    return str(json.loads(text)["parts"]["input.principal"])


@pytest.mark.parametrize(
    ("tamper", "found"),
    [
        ("UPDATE audit_part SET body = replace(body, 'value-7', 'value-8')", "edited"),
        ("DELETE FROM audit_part", "missing"),
        ("UPDATE audit_part_use SET last_seq = 1", "last used at seq 1"),
        ("DELETE FROM audit_part_use", "missing from audit_part_use"),
    ],
)
def test_verify_checks_every_shared_part(target: Target, tamper: str, found: str) -> None:
    ids = write_shared(target, NOW, big_principal())
    assert verify(target).ok
    execute_sql(target, tamper)
    report = verify(target)
    assert (report.ok, report.problem) == (False, "part"), report.message
    seq = 2 if "last_seq" in tamper else 1
    assert (report.seq, report.decision_id) == (seq, ids[seq - 1])
    assert found in report.message and "input.principal" in report.message


def test_a_missing_part_is_an_error_for_readers_not_a_silent_hole(target: Target) -> None:
    from authz.audit import AuditTampered

    write_shared(target, NOW, big_principal())
    execute_sql(target, "DELETE FROM audit_part")
    with pytest.raises(AuditTampered, match="shared part .* is missing"):
        query(target)


def test_prune_deletes_a_part_once_no_record_uses_it(target: Target) -> None:
    kept_principal, old_principal = big_principal("kept"), big_principal("old")
    write_shared(target, NOW - 10 * DAY, old_principal)
    write_shared(target, NOW - 9 * DAY, kept_principal)
    recent = write_shared(target, NOW - DAY, kept_principal)  # the same principal again
    assert fetch_all(target, "SELECT count(*) FROM audit_part") == [(2,)]
    assert prune(target, 5 * DAY, clock=lambda: NOW) == 6
    assert fetch_all(target, "SELECT hash FROM audit_part") == [(part_of(target, recent[0]),)]
    report = verify(target)
    assert report.ok, report.message
    assert [r["input"]["principal"] for r in query(target)] == [kept_principal] * 3


# -- through the server: bytes written for a large CheckBatch, and QueryDecisions ---------------


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    with use_backend(request.param, tmp_path / "db") as chosen:
        yield None if chosen.name == "sqlite" else chosen.target


def text(i: int, size: int) -> str:
    words = f"word{i} lorem ipsum dolor sit amet consectetur {i * 7919} "
    return (words * (size // len(words) + 1))[:size]


def large_batch() -> pb.CheckBatchRequest:
    """~0.8 MB: a principal with ~300 kB of attributes, ~250 kB of batch context and 100 items
    with ~2.5 kB of their own each: what one non-admin caller may send."""
    principal = pb.Principal(type="user", id="u-flood")
    for i in range(75):
        principal.attributes[f"a{i:02}"] = text(i, 4000)
    request = pb.CheckBatchRequest(principal=principal, request_id="flood-1")
    for i in range(62):
        request.context[f"c{i:02}"] = text(i + 100, 4000)
    for i in range(100):
        item = request.items.add(action="dashboard.view")
        item.resource.type = "account"
        item.resource.id = f"acct-{i}"
        item.resource.attributes["profile"] = text(i + 200, 2000)
        item.context["step"] = text(i + 300, 500)
    return request


def test_a_large_batch_writes_a_small_multiple_of_its_size(
    start: Callable[..., RunningService], base_settings: Settings, database_url: str | None
) -> None:
    svc = start(base_settings, database_url=database_url)
    request = large_batch()
    size = request.ByteSize()
    assert 750_000 < size < 900_000
    results = pb_grpc.AuthorizationServiceStub(svc.channel).CheckBatch(request).results
    assert len(results) == 100

    target = svc.service.audit.target
    written = stored_bytes(target, "WHERE request_id = ?", ("flood-1",))
    print(
        f"CheckBatch of {size} bytes: {written} bytes of records and parts ({written / size:.2f}x)"
    )
    assert written <= 4 * size
    assert svc.service.audit.bytes_written == written  # what the writer counts is what is stored

    # Every reader sees each decision whole, as the server decided it.
    attributes = {k: v for k, v in request.principal.attributes.items()}
    context = {k: v for k, v in request.context.items()}
    records = query(target, limit=None, oldest_first=True)
    assert [r["decision_id"] for r in records] == [r.decision_id for r in results]
    for i, record in enumerate(records):
        assert record["input"]["principal"]["attributes"] == attributes
        assert record["input"]["context"] == {**context, "step": request.items[i].context["step"]}
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    streamed = list(admin.QueryDecisions(admin_pb2.QueryDecisionsRequest(limit=1000)))
    assert len(streamed) == 100
    principal = streamed[0].record.fields["input"].struct_value.fields["principal"]
    assert (
        principal.struct_value.fields["attributes"].struct_value.fields["a07"].string_value
        == (attributes["a07"])
    )
    assert verify(target).ok


# -- the per-caller budget --------------------------------------------------------------------


def fat(caller: str, request_id: str, size: int = 10_000) -> dict[str, Any]:
    record = make_record(caller=caller, request_id=request_id)
    record["input"]["context"] = {"blob": "b" * size}
    return record


def test_one_callers_flood_does_not_hold_up_another_caller(target: Target) -> None:
    """A caller floods the log (50 requests of 10 records of 10 kB, 5 MB) while the writer is
    stuck; another caller's record arrives behind the flood. Once the writer moves, the other
    record is committed after at most the flooder's budget of bytes, not after the whole flood,
    and while the flood is still being written."""
    budget = 256 << 10
    log = AuditLog(target, caller_budget=budget, max_batch_bytes=128 << 10, commit_timeout=30)
    log.start()

    async def main() -> tuple[int, int]:
        with hold_write_lock(target):
            flood = [
                asyncio.create_task(log.record_many([fat("hog", f"hog-{i}") for _ in range(10)]))
                for i in range(50)
            ]
            await asyncio.sleep(0.2)  # every flood request queues what it may, then waits
            light = asyncio.create_task(log.record(make_record(caller="light")))
            await asyncio.sleep(0.2)
        await light
        flood_done = sum(task.done() for task in flood)
        await asyncio.gather(*flood)
        return flood_done, len(flood)

    try:
        flood_done, flood_total = asyncio.run(main())
    finally:
        log.close()
    assert flood_done < flood_total  # the light caller was answered mid-flood
    [(light_seq,)] = fetch_all(target, "SELECT seq FROM audit_log WHERE caller = 'light'")
    ahead = stored_bytes(target, "WHERE caller = 'hog' AND seq < ?", (light_seq,))
    print(f"flood bytes committed ahead of the other caller's record: {ahead}")
    assert ahead <= budget + 20_000  # its budget, and at most one more record
    assert stored_bytes(target, "WHERE caller = 'hog'") > 4_000_000
    assert verify(target).ok


# -- reading streams ----------------------------------------------------------------------------


def many_small_keys(user: str) -> dict[str, Any]:
    """~200 kB of JSON that takes ten times as much memory once decoded."""
    return {"type": "user", "id": user, "attributes": {f"k{j}": j for j in range(15_000)}}


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_reading_the_log_streams_with_bounded_memory(target: Target) -> None:
    with AuditLog(target) as log:

        async def fill() -> None:
            for i in range(40):  # 40 requests, each with a principal of its own
                _, own, shared = batch(many_small_keys(f"u{i}"), {}, [{}])
                await log.record_many(own, shared)

        asyncio.run(fill())

    with peak_memory() as listed:
        assert len(query(target, limit=None)) == 40
    with peak_memory() as streamed:
        assert sum(1 for _ in iter_query(target, limit=None)) == 40

    async def consume() -> int:
        count = 0
        async for _ in aiter_query(target, limit=None):
            count += 1
        return count

    with peak_memory() as streamed_async:
        assert asyncio.run(consume()) == 40
    print(f"peak: list {listed[0]}, iter {streamed[0]}, async {streamed_async[0]}")
    assert streamed[0] * 4 < listed[0]
    assert streamed_async[0] * 2 < listed[0]

    if isinstance(target, Path):  # `authz audit query --json` writes as it reads
        argv = ["query", "--json", "--limit", "0", "--data-dir", str(target.parent)]
        with (
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
            peak_memory() as printed,
        ):
            assert authz_main(["audit", *argv]) == 0
        assert printed[0] * 2 < listed[0]
