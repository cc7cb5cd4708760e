"""``python -m authz.bench [--quick] [--out FILE] [--parts ...]``.

Progress goes to stderr (one line per step), the tables to stdout, and the Markdown report to
``--out`` (default data/bench/benchmarks.md; the committed docs/benchmarks.md only when asked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from authz.bench.common import Table, machine, machine_table, progress
from authz.policy.engine import evaluating_every_time

PARTS = ("engine", "peers", "e2e", "facts", "cerbos", "authzen")
DEFAULT_OUT = Path("data/bench/benchmarks.md")


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    min_time: float
    repeats: int
    peer_requests: int
    peer_rounds: int
    duration: float
    warmup: float
    rounds: int
    warm_checks: int
    cold_checks: int
    flight_rounds: int


FULL = Plan(
    sizes=(10, 100, 1_000, 10_000),
    min_time=0.1,
    repeats=15,
    peer_requests=600,
    peer_rounds=7,
    duration=6.0,
    warmup=1.0,
    rounds=3,
    warm_checks=300,
    cold_checks=60,
    flight_rounds=3,
)
QUICK = Plan(
    sizes=(10, 100, 1_000),
    min_time=0.02,
    repeats=7,
    peer_requests=240,
    peer_rounds=3,
    duration=2.0,
    warmup=0.5,
    rounds=1,
    warm_checks=60,
    cold_checks=15,
    flight_rounds=1,
)

INTROS = {
    "engine": """
`evaluate()` is the engine alone on a prebuilt input; `input+evaluate()` also builds the input
from facts at hand (principal, add-on registry facts, access fact), as decide.py does per item;
`Decider.check()` is the servicer's whole decision path after protobuf conversion. Generated sets
spread their rules over many actions (five rules per action at every size, one of them a deny,
with attribute comparisons, list membership, string functions, timestamps and macros). Probing the
same two actions at every size shows what *unrelated* rules cost; probing 64 different actions
adds what touching many compiled programs costs. The anatomy table times each step of a
session-token Check on its own, including two prototypes measured for the proposals below.
""",
    "peers": """
One policy, written as naturally as each engine allows (texts at the end of this page): SSO users
may use `dashboard.*` on an add-on when their Heroku user id is in the access list of the app that
owns it; auth-changing `account.*` actions are denied to SSO users; default deny. Every engine is
loaded once with the same world (20 apps, 60 users, 20 add-ons) and asked the same requests; a
plain-Python oracle says what each answer must be.
""",
    "e2e": """
Each server runs in its own process and h2load (C, nghttp2-client) drives it from another, posting
gRPC-framed bodies over h2c on 127.0.0.1. The no-op baseline is an AuthorizationService on the same
proto path whose Check returns a constant response, built exactly like authz's server. authz runs
with the shipped policies, the Heroku simulator on loopback for access facts (warm cache), a
session-token subject (an SSO user opening the dashboard: ALLOW) or a principal given directly (a
service: DENY). Each body is first sent with a real gRPC client and its answer checked, and again
after the load. "server CPU µs/req" is the CPU time of the server's processes divided by requests
served.
""",
    "facts": """
The authz server runs with audit off; the client is a plain gRPC client. Cold means the app's
access list was dropped (AdminService.InvalidateAccess) just before the timed Check, so the Check
fetches it from the Heroku simulator on loopback.
""",
    "cerbos": """
authz against [Cerbos](https://cerbos.dev), the binary of the npm package
`@cerbos/cerbos-linux-x64`, on one policy written for each (texts at the end of this page):
documents with owner, team and role rules and overriding denies. Each server runs in its own
process on 127.0.0.1; Cerbos from a disk store in a temporary directory, telemetry off, at log
level warn (at its default, info, it writes two log lines per request; authz writes none). Before
any load, every server answers a grid of 24 principals × 24 documents × 5 actions and each answer
is compared with a plain-Python oracle; speed is reported only when all agree. Then h2load drives
both in interleaved rounds (authz, Cerbos, authz, Cerbos...): one decision per request (authz
`Check` with a principal given directly; Cerbos `CheckResources` with one resource and one action)
and ten (authz `CheckBatch` of 10 items; Cerbos `CheckResources` with 5 resources × 2 actions),
audit off and on (authz durable and async; Cerbos's `local` audit backend with decision logs on,
access logs off), at 64 requests in flight and at one. Server CPU is user + system time of every
process of the server, divided by requests served. Each side answers as it does in production:
authz's replies carry decision ids, matched rules and reasons, Cerbos's only the effects and a
call id. After the load, both audit logs are counted: authz's durable records, and Cerbos's
decision log entries read back through its Admin API by a second instance on the same store.
h2load sends one body over and over, and authz recalls a question asked before instead of
evaluating it again (`AUTHZ_RECALL`, on by default), so authz also runs with `AUTHZ_RECALL=off`
("every question evaluated"), converting and evaluating each request as it would a question
never asked before; a goal holds only if it holds both ways.
""",
    "authzen": """
The AuthZEN Authorization API 1.0 (issue 14) on authz's HTTP listener, beside gRPC Check, from
one server process with both listeners (audit off, the shipped policies, the simulator's access
facts through a warm cache). Both are asked the same question, an SSO session opening its
add-on's dashboard (ALLOW): h2load posts the gRPC-framed Check over h2c (4 connections × 16
streams) and the AuthZEN evaluation as JSON over HTTP/1.1 (`h2load --h1`, 64 connections, one
request at a time each), in interleaved rounds. The second table times, in process, what each
API costs to translate one request and its answer, so the rest of the difference in server CPU
per request is the transport's.
""",
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m authz.bench",
        description="authz benchmark suite (issues 7 and 19): engine, peers, end to end, "
        "access facts, and against Cerbos.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help=f"Markdown report to write (default: {DEFAULT_OUT}; '-' writes none). The committed "
        "report is docs/benchmarks.md: `make bench BENCH_OUT=docs/benchmarks.md`",
    )
    parser.add_argument("--json", default=None, help="also write every number as JSON here")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--policies", default="policies", help="the shipped policy directory")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved load rounds")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample the server with py-spy during one more Check run (default: on for a full run)",
    )
    parser.add_argument("--profile-dir", default=None, help="where py-spy's raw stacks go")
    parser.add_argument(
        "--cerbos",
        default=None,
        help="the Cerbos binary (default: the one `make bench` installs into .tools/, else "
        "`cerbos` on PATH)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    return args


def _show(tables: Sequence[Table]) -> None:
    for table in tables:
        print()
        print(table.text(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    plan = QUICK if args.quick else FULL
    if args.duration is not None:
        plan = replace(plan, duration=args.duration)
    if args.rounds is not None:
        plan = replace(plan, rounds=args.rounds)
    parts = [p for p in PARTS if p in args.parts.split(",")]
    out_path = None if args.out == "-" else Path(args.out)
    profile = args.profile if args.profile is not None else not args.quick
    policy_dir = Path(args.policies)
    if not policy_dir.is_dir():
        print(f"no policy directory at {policy_dir}; run from the repository root", file=sys.stderr)
        return 2

    started = time.monotonic()
    progress(f"{'quick' if args.quick else 'full'} run of: {', '.join(parts)}")
    info = machine()
    if "cerbos" in parts:
        from authz.bench.cerbos import cerbos_version, find_cerbos

        found, _ = find_cerbos(args.cerbos)
        info["cerbos"] = cerbos_version(found) if found else "not installed"
    _show([machine_table(info)])
    results: dict[str, Any] = {"machine": info, "plan": asdict(plan), "quick": args.quick}
    sections: list[tuple[str, list[Table], str]] = []

    if "engine" in parts:
        from authz.bench.anatomy import check_path_anatomy
        from authz.bench.engine import generated_engine, shipped_engine

        # The engine's figures are of evaluating, not of recalling a question asked before.
        with evaluating_every_time():
            progress("engine: shipped policies")
            shipped_table, shipped = shipped_engine(
                policy_dir, min_time=plan.min_time, repeats=plan.repeats
            )
            _show([shipped_table])
            sizes = ", ".join(f"{n:,}" for n in plan.sizes)
            progress(f"engine: generated sets of {sizes} rules")
            generated_table, generated = generated_engine(
                plan.sizes, min_time=plan.min_time, repeats=plan.repeats, isolate=True
            )
            _show([generated_table])
            progress("engine: anatomy of a Check")
            anatomy_table, anatomy = check_path_anatomy(
                policy_dir, min_time=plan.min_time, repeats=plan.repeats
            )
            _show([anatomy_table])
        results["engine"] = {"shipped": shipped, "generated": generated, "anatomy": anatomy}
        sections.append(
            ("1. Engine", [shipped_table, generated_table, anatomy_table], INTROS["engine"])
        )

    appendix = ""
    authzen_section: tuple[str, list[Table], str] | None = None
    if "peers" in parts:
        from authz.bench.peers import available_peers, compare_peers, policy_texts

        _, missing = available_peers()
        if missing:
            print(
                f"\npeers not installed: {', '.join(missing)} (pip install -e '.[bench]'); "
                "compared without them",
                flush=True,
            )
        progress("peers: agreement, then µs per decision")
        with evaluating_every_time():  # each engine evaluates every request
            peer_tables, peers = compare_peers(
                n_requests=plan.peer_requests, rounds=plan.peer_rounds, min_time=plan.min_time
            )
        _show(peer_tables)
        results["peers"] = peers
        sections.append(("2. Peers", peer_tables, INTROS["peers"]))
        appendix = "## The peer policies, as each engine was given them\n\n" + "\n".join(
            f"{name}:\n\n```\n{text.rstrip()}\n```\n" for name, text in policy_texts().items()
        )

    if "e2e" in parts or "facts" in parts or "authzen" in parts:
        from authz.bench.load import h2load_path
        from authz.bench.world import Lab

        progress("end to end: starting the Heroku simulator")
        with Lab(policy_dir) as lab:
            if "e2e" in parts:
                if h2load_path() is None:
                    note = (
                        "skipped: h2load not found "
                        "(apt-get install nghttp2-client; make bench does)"
                    )
                    print(f"\nend to end {note}", flush=True)
                    progress(f"end to end {note}")
                    results["e2e"] = {"skipped": note}
                else:
                    from authz.bench.e2e import run_e2e

                    profile_dir = Path(args.profile_dir) if args.profile_dir else lab.workdir
                    progress("end to end: servers, then interleaved load rounds")
                    e2e_tables, e2e = run_e2e(
                        lab,
                        quick=args.quick,
                        duration=plan.duration,
                        warmup=plan.warmup,
                        rounds=plan.rounds,
                        profile_dir=profile_dir if profile else None,
                        keep_profile=args.profile_dir is not None,
                    )
                    _show(e2e_tables)
                    results["e2e"] = e2e
                    sections.append(("3. End to end over gRPC", e2e_tables, INTROS["e2e"]))
            if "facts" in parts:
                from authz.bench.facts import run_facts

                progress("access facts: warm, cold and single flight")
                facts_tables, facts = run_facts(
                    lab,
                    warm_count=plan.warm_checks,
                    cold_count=plan.cold_checks,
                    concurrent=200,
                    rounds=plan.flight_rounds,
                )
                _show(facts_tables)
                results["facts"] = facts
                sections.append(("4. Access facts", facts_tables, INTROS["facts"]))
            if "authzen" in parts:
                if h2load_path() is None:
                    note = "skipped: h2load not found (apt-get install nghttp2-client)"
                    print(f"\nAuthZEN over HTTP {note}", flush=True)
                    results["authzen"] = {"skipped": note}
                else:
                    from authz.bench.authzen import run_authzen

                    progress("AuthZEN over HTTP/1.1 beside gRPC Check")
                    authzen_tables, authzen_results = run_authzen(
                        lab,
                        quick=args.quick,
                        duration=plan.duration,
                        warmup=plan.warmup,
                        rounds=plan.rounds,
                    )
                    _show(authzen_tables)
                    results["authzen"] = authzen_results
                    # After the Cerbos part, whose number comes first.
                    authzen_section = (
                        "6. AuthZEN over HTTP beside gRPC",
                        authzen_tables,
                        INTROS["authzen"],
                    )

    if "cerbos" in parts:
        from authz.bench.cerbos import run_cerbos
        from authz.bench.documents import policy_texts as document_policies

        progress("against Cerbos: agreement over the grid, then interleaved load rounds")
        cerbos_tables, cerbos = run_cerbos(
            quick=args.quick,
            duration=plan.duration,
            warmup=plan.warmup,
            rounds=plan.rounds,
            binary=args.cerbos,
        )
        results["cerbos"] = cerbos
        if "skipped" in cerbos:
            print(f"\nagainst Cerbos skipped: {cerbos['skipped']}", flush=True)
        else:
            _show(cerbos_tables)
            sections.append(("5. Against Cerbos", cerbos_tables, INTROS["cerbos"]))
            appendix += "\n\n## The Cerbos comparison's policy, as each server was given it\n\n"
            appendix += "\n".join(
                f"{name}:\n\n```yaml\n{text.rstrip()}\n```\n"
                for name, text in document_policies().items()
            )

    if authzen_section is not None:
        sections.append(authzen_section)

    from authz.bench.report import cerbos_goals, summary_text, targets, write_markdown

    load1, load5, _ = os.getloadavg()
    info["load average at end (1, 5 min)"] = f"{load1:.2f}, {load5:.2f}"
    verdicts = targets(results)
    goals = cerbos_goals(results)
    results["targets"] = [asdict(v) for v in verdicts]
    results["goals_vs_cerbos"] = [asdict(v) for v in goals]
    elapsed = time.monotonic() - started
    progress("done; the summary follows")
    print()
    print(summary_text(verdicts, goals))
    start_load = info["load average at start (1, 5 min)"]
    end_load = info["load average at end (1, 5 min)"]
    print(
        f"\nfinished in {elapsed:.0f} s; load average at start {start_load}, at end {end_load}",
        flush=True,
    )
    command = "make bench" if not args.quick else "python -m authz.bench --quick"
    if out_path is not None:
        write_markdown(
            out_path,
            machine=info,
            sections=sections,
            verdicts=verdicts,
            goals=goals,
            command=command,
            elapsed_s=elapsed,
            appendix=appendix,
        )
        print(f"wrote {out_path}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
