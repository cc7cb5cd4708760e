"""How a client's work divides between two workers after one of them was restarted, with and
without connection ageing (AUTHZ_MAX_CONNECTION_AGE, authz.server.transport).

``python -m authz.bench.rebalance [--ages 0,5] [--windows 6] [--window 5] [--no-kill]`` starts
``authz serve --workers 2`` (audit off) for each age, and one client with two channels (a
connection each) and eight callers asking Checks without pause. After a few seconds it SIGKILLs
one worker, as a crash would; the supervisor starts another, and the client's connections to
the dead one reconnect, to the only worker then listening. It then prints, for each window, the
less busy worker's share of the two workers' CPU (0.5: even; 0: one worker does everything) and
every call that failed, with when. ``--no-kill`` leaves both workers alone, to count the calls
that fail because connections move (there should be none).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from authz.bench.load import descendants, process_cpu_seconds
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc

_SERVING = re.compile(r"authz serving on (127\.0\.0\.1:\d+) ")
CHANNELS = 2
CALLERS = 8
RESTART_WAIT = 4.0  # seconds for the supervisor to start the new worker


@dataclass
class Outcome:
    age: float
    shares: list[float]  # the less busy worker's share of the two workers' CPU, per window
    calls: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (seconds in, status)
    connections: int = 0  # opened by the client's channels (each READY state), first ones included


def _workers(root: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for pid in descendants(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "spawn_main" in command:
            found.append(pid)
    return sorted(found)


def _wait_for_workers(root: int, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(workers := _workers(root)) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"authz serve has {len(workers)} workers, not {count}")
        time.sleep(0.1)
    return workers


def measure(age: float, *, windows: int, window: float, kill: bool) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_MAX_CONNECTION_AGE=f"{age:g}", AUTHZ_AUDIT_MODE="off")
    outcome = Outcome(age, [])
    with tempfile.TemporaryDirectory(prefix="authz-bench-rebalance-") as data_dir:
        server = subprocess.Popen(
            [sys.executable, "-m", "authz.cli", "serve", "--listen", "127.0.0.1:0"]
            + ["--workers", "2", "--data-dir", data_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        stop = threading.Event()
        callers: list[threading.Thread] = []
        channels: list[grpc.Channel] = []
        states: list[grpc.ChannelConnectivity] = []  # of every channel, as they change
        try:
            assert server.stdout is not None
            serving = _SERVING.match(server.stdout.readline())
            if serving is None:
                raise RuntimeError("authz serve did not start")
            # A subchannel pool of its own: each channel is a connection of its own.
            options = [("grpc.use_local_subchannel_pool", 1)]
            channels = [grpc.insecure_channel(serving[1], options=options) for _ in range(CHANNELS)]
            for channel in channels:
                channel.subscribe(states.append)
            request = pb.CheckRequest(
                principal=pb.Principal(type="heroku_user", id="u1"),
                action="dashboard.view",
                resource=pb.Resource(type="addon", id="a1"),
            )
            started = time.monotonic()
            lock = threading.Lock()

            def call(channel: grpc.Channel) -> None:
                check = pb_grpc.AuthorizationServiceStub(channel).Check
                while not stop.is_set():
                    try:
                        check(request, timeout=10, wait_for_ready=True)
                        failed = None
                    except grpc.RpcError as exc:
                        failed = (round(time.monotonic() - started, 2), exc.code().name)
                    with lock:
                        outcome.calls += 1
                        if failed is not None:
                            outcome.failures.append(failed)

            for i in range(CALLERS):
                callers.append(threading.Thread(target=call, args=(channels[i % CHANNELS],)))
                callers[-1].start()
            workers = _wait_for_workers(server.pid, 2, 30)
            if kill:
                time.sleep(3.0)  # the callers' connections are placed and busy
                os.kill(workers[-1], signal.SIGKILL)
                time.sleep(RESTART_WAIT)
                workers = _wait_for_workers(server.pid, 2, 30)
            for _ in range(windows):
                before = {pid: process_cpu_seconds(pid) for pid in workers}
                time.sleep(window)
                used = [process_cpu_seconds(pid) - before[pid] for pid in workers]
                outcome.shares.append(round(min(used) / max(sum(used), 1e-9), 2))
        finally:
            stop.set()
            for thread in callers:
                thread.join(timeout=30)
            for channel in channels:
                channel.close()
            outcome.connections = states.count(grpc.ChannelConnectivity.READY)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.communicate(timeout=60)
    return outcome


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authz.bench.rebalance")
    parser.add_argument("--ages", default="0,5", help="AUTHZ_MAX_CONNECTION_AGE values, seconds")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--no-kill", action="store_true", help="restart no worker")
    args = parser.parse_args(argv)
    for age in (float(a) for a in args.ages.split(",")):
        result = measure(age, windows=args.windows, window=args.window, kill=not args.no_kill)
        after = "after the restart" if not args.no_kill else "(no restart)"
        print(
            f"AUTHZ_MAX_CONNECTION_AGE={age:g}: the less busy worker's share of the CPU per "
            f"{args.window:g} s {after}: {result.shares}; {result.connections} connections "
            f"opened, {result.calls:,} calls, "
            f"{len(result.failures)} failed{': ' if result.failures else ''}"
            + ", ".join(f"{status} at {at} s" for at, status in result.failures[:10])
        )


if __name__ == "__main__":
    main()
