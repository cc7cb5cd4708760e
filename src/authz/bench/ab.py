"""A/B of authz's code at load: servers from several source trees, driven in turn by h2load.

``python -m authz.bench.ab BEFORE AFTER [...]`` where each tree is a directory holding the
``authz`` package (e.g. ``src`` of a ``git worktree`` of an earlier commit), optionally followed
by ``:NAME=VALUE,...``, variables for that tree's servers. For every tree and audit mode it
starts ``python -m authz.bench.serve --kind authz`` with the tree on ``PYTHONPATH`` and the
Cerbos comparison's policy, as that comparison does (`authz.bench.cerbos.start_authz`; a tree
from commit 057e20d on, whose bench server takes ``--cpu-affinity``), checks that each answers,
then runs
h2load against them in turn, round after round, and prints each round (stderr) and the medians
with their ratio to the first tree (stdout). Server CPU counts every process of the server; the
last columns split it by thread (`authz.bench.load.thread_cpu_seconds`): the workers' event
loops, their audit writers, their other threads (grpc's poller above all) and the supervisor.

    git worktree add /tmp/before HEAD~1
    python -m authz.bench.ab /tmp/before/src src --audit durable,off --rounds 7

On a shared machine rounds of the same code differ by 10-15 %: take several rounds, and read a
difference smaller than the rounds' spread as none.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from authz.bench.cerbos import AuthzClient, Contender, Server, start_authz
from authz.bench.common import Table
from authz.bench.documents import write_authz_policies
from authz.bench.load import THREAD_ROLES, Run, h2load_path, measured_run, median_threads
from authz.bench.world import grpc_frame

IN_FLIGHT = {64: (4, 16), 1: (1, 1)}
"""Requests in flight → h2load's connections × streams, as the Cerbos comparison runs them."""


@dataclass(frozen=True)
class Tree:
    """One source tree to measure, and the variables its servers get."""

    src: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Tree:
        src, _, assignments = text.partition(":")
        env: dict[str, str] = {}
        for assignment in filter(None, assignments.split(",")):
            name, equals, value = assignment.partition("=")
            if not equals or not name:
                raise argparse.ArgumentTypeError(f"{assignment!r} in {text!r} is not NAME=VALUE")
            env[name] = value
        path = Path(src)
        if not (path / "authz" / "bench" / "serve.py").is_file():
            raise argparse.ArgumentTypeError(
                f"{src!r} holds no authz package (give the src directory of a checkout)"
            )
        return cls(path.resolve(), env)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.env.items())
        return f"{self.src}:{extra}" if extra else str(self.src)


@dataclass
class Measured:
    """One tree's server in one audit mode, and its rounds."""

    tree: Tree
    audit: str
    server: Server
    runs: list[Run] = field(default_factory=list)


@contextlib.contextmanager
def started(
    trees: Sequence[Tree], audits: Sequence[str], workers: int, workdir: Path, lifetime: float
) -> Iterator[list[Measured]]:
    """Each tree's server in each audit mode, started as the Cerbos comparison starts authz."""
    policies = write_authz_policies(workdir / "policies")
    measured: list[Measured] = []
    try:
        for index, tree in enumerate(trees):
            for audit in audits:
                key = f"{index}-{audit}"
                contender = Contender(key, key, "authz", audit, workers=workers)
                env = {**tree.env, "PYTHONPATH": str(tree.src)}
                server = start_authz(contender, workdir, policies, lifetime, env)
                measured.append(Measured(tree, audit, server))
        yield measured
    finally:
        for m in measured:
            m.server.stop()


def measure(
    contenders: Sequence[Measured],
    workload: str,
    *,
    rounds: int,
    seconds: float,
    in_flight: int,
) -> None:
    clients, streams = IN_FLIGHT[in_flight]
    for c in contenders:  # every server answers before any is measured
        c.server.client.call(workload, c.server.client.request(workload))
    for round_number in range(1, rounds + 1):
        for c in contenders:
            run = measured_run(
                c.server.pid,
                c.server.port,
                c.server.client.paths[workload],
                grpc_frame(c.server.client.request(workload)),
                duration=seconds,
                warmup=1.0,
                clients=clients,
                streams=streams,
            )
            c.runs.append(run)
            spread = "+".join(map(str, run.connections)) or "-"
            print(
                f"round {round_number}: {c.tree.label} ({c.audit}) {run.result.req_per_s:,.0f} "
                f"req/s, {run.cpu_us_per_req:,.0f} µs CPU/req, connections {spread}",
                file=sys.stderr,
                flush=True,
            )


def report(contenders: Sequence[Measured], workload: str, in_flight: int) -> Table:
    rows = []
    first: dict[str, tuple[float, float]] = {}
    for c in contenders:
        rates = [r.result.req_per_s for r in c.runs]
        cpu = statistics.median(r.cpu_us_per_req for r in c.runs)
        rate = statistics.median(rates)
        base_rate, base_cpu = first.setdefault(c.audit, (rate, cpu))
        rows.append(
            [
                c.tree.label,
                c.audit,
                f"{rate:,.0f}",
                f"{min(rates):,.0f}–{max(rates):,.0f}",
                f"{rate / base_rate:.2f}×",
                f"{cpu:,.0f}",
                f"{cpu / base_cpu:.2f}×",
                f"{statistics.median(r.result.latency.p50 for r in c.runs):.2f}",
                *(f"{us:,.0f}" for us in median_threads(c.runs).values()),
            ]
        )
    return Table(
        f"A/B: {workload}, {in_flight} in flight, medians of {len(contenders[0].runs)} rounds; "
        "the last columns split the server's CPU µs/req by thread",
        [
            "tree",
            "audit",
            "req/s",
            "rounds' range",
            "× first",
            "CPU µs/req",
            "× first",
            "p50 ms",
            *THREAD_ROLES,
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m authz.bench.ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("trees", nargs="+", type=Tree.parse, metavar="TREE[:NAME=VALUE,...]")
    parser.add_argument("--audit", default="durable", help="audit modes, comma-separated")
    parser.add_argument("--workload", choices=sorted(AuthzClient.paths), default="check")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="of each round (after 1 s)")
    parser.add_argument("--in-flight", type=int, choices=sorted(IN_FLIGHT), default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    audits = args.audit.split(",")
    if unknown := set(audits) - {"off", "durable", "async"}:
        parser.error(f"--audit: {', '.join(sorted(unknown))} (choose from off, durable, async)")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds more than 0")
    if h2load_path() is None:
        print("h2load is not installed (Debian: nghttp2-client)", file=sys.stderr)
        return 2
    lifetime = 120 + args.rounds * len(args.trees) * len(audits) * (args.seconds + 5)
    with (
        tempfile.TemporaryDirectory(prefix="authz-bench-ab-") as tmp,
        started(args.trees, audits, args.workers, Path(tmp), lifetime) as contenders,
    ):
        measure(
            contenders,
            args.workload,
            rounds=args.rounds,
            seconds=args.seconds,
            in_flight=args.in_flight,
        )
    print(report(contenders, args.workload, args.in_flight).text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
