"""CPU per decision that the audit record costs (issue 19: goal ≤ 50 µs, chain hash included).

The real decision path (`Decider.check` on the shipped policies: an SSO member opening the
dashboard, warm facts) runs with a no-op audit sink, then with an `AuditLog` in durable and in
async mode on a fresh SQLite file (or the PostgreSQL database of ``--database-url``), with
``--concurrency`` requests in flight so commits group as under load. The process's CPU time
(every thread: the event loop and the writer) per decision, less the no-op run's, is what the
record costs; the writer thread's own share is shown apart. Two runs in between split the loop's
share: ``built``, where the decision path builds its records and a sink drops them, and
``encoded``, where the sink also encodes them as the log does (`prepare_many`: checks, canonical
JSON, shared parts) before dropping them; durable's cost beyond ``encoded`` is handing the
records to the writer, waiting for the commit, and the writer's own work. Rounds are interleaved
and the median is reported. The event loop's own thread is shown apart too, and with ``--steps``
the CPU its `evaluate_many` calls take (timed by wrapping authz.decide's `evaluate_many` with a
per-thread CPU clock, about 1 µs per call): the same evaluation costs more while the writer
works.

    python -m authz.bench.audit_record                    # SQLite, 20,000 decisions per run
    python -m authz.bench.audit_record --decisions 5000 --rounds 3 --json
    python -m authz.bench.audit_record --database-url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit import open_audit_log, verify
from authz.audit.log import NopAuditLog
from authz.audit.record import prepare_many
from authz.bench.engine import ShippedWorld
from authz.clock import system_clock
from authz.decide import Item, Subject

MODES = ("off", "built", "encoded", "durable", "async")


class _Dropping(NopAuditLog):
    """The audit sink of the ``built`` run: the decision path builds its records (`recording`
    is True), and they are dropped."""

    recording = True

    async def record(self, rec: Any) -> None:
        await self.record_many((rec,))


class _Encoding(_Dropping):
    """The audit sink of the ``encoded`` run: records are encoded as `AuditLog` encodes them
    before queueing (`prepare_many`), then dropped."""

    async def record_many(self, recs: Any, shared: Any = None) -> None:
        prepare_many(recs, system_clock, shared)


def _sink(mode: str, target: Path | str) -> Any:
    if mode == "built":
        return _Dropping()
    if mode == "encoded":
        return _Encoding()
    return open_audit_log(target, mode=mode).start()  # type: ignore[arg-type]


def _thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds a live thread has used (0 when there is none)."""
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, AttributeError):
        return 0.0


async def _drive(check: Callable[[], Any], decisions: int, concurrency: int, batch: int) -> None:
    per_task = max(1, decisions // (concurrency * batch))

    async def worker() -> None:
        for _ in range(per_task):
            await check()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


_evaluate_cpu: float | None = None
"""With --steps (time_evaluate): seconds of the loop thread's CPU in evaluate so far."""


def time_evaluate() -> None:
    """Count the CPU of every `evaluate_many` that authz.decide makes, in _evaluate_cpu."""
    from authz import decide

    global _evaluate_cpu
    _evaluate_cpu = 0.0
    evaluate = decide.evaluate_many

    def timed(*args: Any, **kwargs: Any) -> Any:
        global _evaluate_cpu
        started = time.thread_time()
        try:
            return evaluate(*args, **kwargs)
        finally:
            _evaluate_cpu = (_evaluate_cpu or 0.0) + time.thread_time() - started

    decide.evaluate_many = timed  # type: ignore[assignment]


def run_once(
    world: ShippedWorld,
    subject: Subject,
    mode: str,
    target: Path | str,
    *,
    decisions: int,
    concurrency: int,
    batch: int,
) -> dict[str, float]:
    """One run: µs of CPU per decision (process and writer thread) and decisions per second."""
    sink = _sink(mode, target)
    world.decider.audit = sink
    items = [Item("dashboard.view", world.service.__class__("addon", world.addon.resource_id))]
    items = items * batch

    async def check() -> Any:
        return await world.decider.check(
            subject, items, context={"ip": "203.0.113.9"}, request_id="bench", caller="bench"
        )

    per_task = max(1, decisions // (concurrency * batch))
    done = per_task * concurrency * batch
    gc.collect()
    writer = getattr(sink, "_thread", None)
    cpu0, writer0, wall0 = time.process_time(), _thread_cpu(writer), time.perf_counter()
    loop0, evaluated0 = time.thread_time(), _evaluate_cpu or 0.0
    asyncio.run(_drive(check, decisions, concurrency, batch))  # the loop runs on this thread
    loop1, evaluated1 = time.thread_time(), _evaluate_cpu or 0.0
    writer1 = _thread_cpu(writer)  # before close(): the thread's clock goes when it ends
    sink.close()  # async mode: the queue drains here, and that CPU counts too
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return {
        "cpu_us": (cpu1 - cpu0) * 1e6 / done,
        "writer_us": (writer1 - writer0) * 1e6 / done,
        "loop_us": (loop1 - loop0) * 1e6 / done,
        "evaluate_us": (evaluated1 - evaluated0) * 1e6 / done,
        "per_s": done / (wall1 - wall0),
        "decisions": done,
        "records_written": float(getattr(sink, "records_written", 0)),
        "commits": float(getattr(sink, "commits", 0)),
    }


def measure(
    policy_dir: Path,
    *,
    decisions: int,
    concurrency: int,
    batch: int,
    rounds: int,
    database_url: str | None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="authz-bench-audit-") as tmp:
        world = ShippedWorld(policy_dir, Path(tmp))
        try:
            subject = world.subject("member")
            target: Path | str = database_url or Path(tmp) / "audit.db"
            runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
            run_once(world, subject, "off", target, decisions=500, concurrency=4, batch=1)  # warm
            for _ in range(rounds):
                for mode in MODES:
                    runs[mode].append(
                        run_once(
                            world,
                            subject,
                            mode,
                            target,
                            decisions=decisions,
                            concurrency=concurrency,
                            batch=batch,
                        )
                    )
            report = verify(target)
        finally:
            world.close()
    out: dict[str, Any] = {
        "decisions_per_run": runs["off"][0]["decisions"],
        "concurrency": concurrency,
        "batch": batch,
        "rounds": rounds,
        "backend": "postgresql" if database_url else "sqlite",
        "verify_ok": report.ok,
        "records_verified": report.checked,
    }
    off = statistics.median(r["cpu_us"] for r in runs["off"])
    for mode in MODES:
        rs = runs[mode]
        cpu = statistics.median(r["cpu_us"] for r in rs)
        out[mode] = {
            "cpu_us_per_decision": round(cpu, 1),
            "audit_us_per_decision": round(cpu - off, 1) if mode != "off" else 0.0,
            "writer_us_per_decision": round(statistics.median(r["writer_us"] for r in rs), 1),
            "loop_us_per_decision": round(statistics.median(r["loop_us"] for r in rs), 1),
            "evaluate_us_per_decision": (
                round(statistics.median(r["evaluate_us"] for r in rs), 1)
                if _evaluate_cpu is not None
                else None  # evaluate was not timed (no --steps)
            ),
            "decisions_per_s": round(statistics.median(r["per_s"] for r in rs)),
            "records_per_commit": round(
                statistics.median(r["records_written"] / max(1.0, r["commits"]) for r in rs), 1
            ),
        }
    return out


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m authz.bench.audit_record", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--policies", default="policies", help="policy directory (default %(default)s)"
    )
    parser.add_argument(
        "--decisions", type=int, default=20_000, help="per run (default %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--batch", type=int, default=1, help="items per request (CheckBatch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL database instead of a SQLite file")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--steps", action="store_true", help="also time evaluate on the loop thread (see above)"
    )
    args = parser.parse_args(argv)
    if args.steps:
        time_evaluate()
    result = measure(
        Path(args.policies),
        decisions=args.decisions,
        concurrency=args.concurrency,
        batch=args.batch,
        rounds=args.rounds,
        database_url=args.database_url,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result["verify_ok"] else 1
    print(
        f"audit record cost, {result['backend']}: {result['decisions_per_run']} decisions per run, "
        f"{result['concurrency']} in flight, {result['batch']} per request, median of "
        f"{result['rounds']} interleaved rounds"
    )
    print(
        f"{'mode':8} {'CPU µs/dec':>11} {'audit µs/dec':>13} {'writer µs/dec':>14} "
        f"{'loop µs/dec':>12} {'evaluate µs/dec':>16} {'dec/s':>8} {'per commit':>11}"
    )
    for mode in MODES:
        r = result[mode]
        print(
            f"{mode:8} {r['cpu_us_per_decision']:11.1f} {r['audit_us_per_decision']:13.1f} "
            f"{r['writer_us_per_decision']:14.1f} {r['loop_us_per_decision']:12.1f} "
            f"{_or_dash(r['evaluate_us_per_decision']):>16} "
            f"{r['decisions_per_s']:8} "
            f"{r['records_per_commit']:11.1f}"
        )
    print(
        f"hash chain: {'verified' if result['verify_ok'] else 'BROKEN'} "
        f"({result['records_verified']} records)"
    )
    return 0 if result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
