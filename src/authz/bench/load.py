"""The load generator: h2load (nghttp2-client) in its own process, posting gRPC-framed bodies
over h2c, or JSON bodies over HTTP/1.1 (`--h1`) for the AuthZEN API.

h2load is written in C and uses a fraction of a core at these rates, so the server keeps the
machine. Each run is bounded by ``-D`` (duration) and by a subprocess timeout. Latencies come from
h2load's per-request log (``--log-file``: start time, HTTP status, µs to the end of the response).
h2load cannot see gRPC trailers, so every body is first sent once with a real gRPC client and its
answer checked (world.verify), and the durable audit log's record count is compared afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from authz.audit.log import WRITER_THREAD
from authz.bench.common import Latency

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: .*?, \S+ \((\d+)\) data")
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)


class LoadError(RuntimeError):
    pass


def h2load_path() -> str | None:
    return shutil.which("h2load")


@dataclass(frozen=True)
class LoadResult:
    req_per_s: float
    done: int
    succeeded: int
    failed: int
    latency: Latency  # ms, from the per-request log of the measured window
    offered_rps: float | None  # None: as fast as the in-flight limit allows
    in_flight: int
    data_bytes: int  # response DATA payload received: a gRPC error reply carries none

    def complete_replies(self, reply_size: int) -> bool:
        """Every request got a full reply body (h2load cannot read gRPC's status trailers)."""
        return self.done > 0 and self.data_bytes >= self.done * reply_size


def non_2xx(out: str, *, in_flight: int) -> bool:
    """Whether h2load's summary reports a response that was not 2xx. The non-2xx counts decide,
    not 2xx against "done": a request that straddles the end of the warm-up is in the status
    counts but not in "done", or, when its status was read in the warm-up and it finished
    after, in "done" but in no status count (seen over HTTP/1.1, and once in a 54,080-request
    h2c run). So up to `in_flight` (the requests in flight when the warm-up ended) fewer 2xx
    than "done" is no sign of an error; whether every reply had its body is checked apart
    (LoadResult.complete_replies)."""
    status = _STATUS.search(out)
    counts = _REQUESTS.search(out)
    if status is None or counts is None:
        return False
    two, three, four, five = (int(status.group(i)) for i in (1, 2, 3, 4))
    return three + four + five > 0 or two + in_flight < int(counts.group(3))


def run_h2load(
    port: int,
    path: str,
    body: bytes,
    *,
    duration: float,
    warmup: float,
    clients: int = 4,
    streams: int = 16,
    rps_per_client: float | None = None,
    h1: bool = False,
) -> LoadResult:
    """One bounded load run against 127.0.0.1:port (loopback only): gRPC-framed bodies over
    h2c, or (`h1`) JSON bodies over HTTP/1.1, `streams` pipelined requests per connection."""
    exe = h2load_path()
    if exe is None:
        raise LoadError("h2load not found: apt-get install nghttp2-client (make bench does)")
    with tempfile.TemporaryDirectory(prefix="authz-bench-h2load-") as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(body)
        log_path = Path(tmp) / "requests.log"
        cmd = [
            exe,
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            "1",
            "-D",
            f"{round(duration * 1000)}ms",
            "--warm-up-time",
            f"{round(warmup * 1000)}ms",
            "-d",
            str(body_path),
            *(arg for header in (JSON_HEADERS if h1 else GRPC_HEADERS) for arg in ("-H", header)),
            "--log-file",
            str(log_path),
            *(["--h1"] if h1 else []),
        ]
        if rps_per_client is not None:
            cmd += ["--rps", f"{max(1, round(rps_per_client))}"]
        cmd.append(f"http://127.0.0.1:{port}{path}")
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"h2load did not finish: {' '.join(cmd)}") from exc
        out = done.stdout
        finished = _FINISHED.search(out)
        counts = _REQUESTS.search(out)
        if done.returncode != 0 or finished is None or counts is None:
            raise LoadError(
                f"h2load failed ({done.returncode}):\n{out[-1500:]}{done.stderr[-800:]}"
            )
        traffic = _TRAFFIC.search(out)
        if non_2xx(out, in_flight=clients * streams):
            raise LoadError(f"non-2xx responses:\n{out[-1500:]}")
        latencies = _read_log(log_path)  # h2load logs the measured window only
    return LoadResult(
        req_per_s=float(finished.group(3)),
        done=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)),
        latency=Latency.of(latencies),
        offered_rps=None if rps_per_client is None else max(1, round(rps_per_client)) * clients,
        in_flight=clients * streams,
        data_bytes=int(traffic.group(1)) if traffic else 0,
    )


def _read_log(log_path: Path) -> list[float]:
    values: list[float] = []
    try:
        with log_path.open() as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3 or parts[1] != "200":
                    continue
                values.append(int(parts[2]) / 1000.0)
    except OSError:
        pass
    return values


# -- server CPU ------------------------------------------------------------------------------------


def _stat_fields(directory: str) -> list[str]:
    """The fields of DIRECTORY/stat (a process's or a thread's) after the command name ("state"
    first); OSError or IndexError if it ended while we looked."""
    return Path(directory, "stat").read_text().rsplit(")", 1)[1].split()


def _stats() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after the command name ("state" first)."""
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat_fields(entry.path)
            except (OSError, IndexError):
                continue  # exited while we looked
    return stats


def _tree(root: int, stats: dict[int, list[str]] | None = None) -> set[int]:
    """`root` and every process descended from it (Linux)."""
    parents = {pid: int(fields[1]) for pid, fields in (stats or _stats()).items()}
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def _cpu_ticks(fields: list[str]) -> int:
    """utime + stime (proc(5): fields 14 and 15, here after "state" and "ppid") of _stat_fields."""
    return int(fields[11]) + int(fields[12])


def descendants(root: int) -> set[int]:
    """Every process descended from `root` (Linux), without `root`."""
    return _tree(root) - {root}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of one process (its own threads, not its children)."""
    return _cpu_ticks(_stat_fields(f"/proc/{pid}")) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU time so far of a process and every descendant (Linux), so that a server
    of several worker processes is measured whole. Descendants that already exited count too,
    through their parent's cutime/cstime once it waited for them. NaN when `root` is gone."""
    stats = _stats()
    if root not in stats:
        return float("nan")
    # utime, stime, cutime, cstime (proc(5): fields 14-17, here after "state" and "ppid")
    ticks = sum(sum(int(x) for x in stats[pid][11:15]) for pid in _tree(root, stats))
    return ticks / os.sysconf("SC_CLK_TCK")


THREAD_ROLES = ("event loop", "audit writer", "other threads", "supervisor")
"""What `thread_cpu_seconds` sums a server's threads into."""


def thread_cpu_seconds(root: int) -> dict[str, float]:
    """User + system CPU time so far of every live thread of a server (Linux), summed by role:
    each serving process's main thread (its event loop), its audit writer (the thread named
    authz.audit.log.WRITER_THREAD), its other threads (grpc's poller, the default executor),
    and the main thread of a root with worker processes under it (the supervisor)."""
    tree = _tree(root)
    ticks = dict.fromkeys(THREAD_ROLES, 0)
    for pid in tree:
        try:
            tasks = list(os.scandir(f"/proc/{pid}/task"))
        except OSError:
            continue
        for task in tasks:
            try:
                fields = _stat_fields(task.path)
                name = Path(task.path, "comm").read_text().strip()
            except (OSError, IndexError):
                continue  # ended while we looked
            if int(task.name) == pid:
                role = "supervisor" if pid == root and len(tree) > 1 else "event loop"
            else:
                role = "audit writer" if name == WRITER_THREAD else "other threads"
            ticks[role] += _cpu_ticks(fields)
    return {role: n / os.sysconf("SC_CLK_TCK") for role, n in ticks.items()}


def median_threads(runs: list[Run]) -> dict[str, float]:
    """Each role's median over runs of its CPU µs per request (Run.threads_us_per_req)."""
    return {
        role: statistics.median(run.threads_us_per_req[role] for run in runs)
        for role in THREAD_ROLES
    }


_LISTEN, _ESTABLISHED = "0A", "01"


def connections_per_process(root: int, port: int) -> tuple[int, ...]:
    """How the connections to `port` are spread over the processes of the server whose root
    is `root` that listen on it (its workers, which share the port with SO_REUSEPORT): the
    count of established connections each holds, largest first; () if none listens."""
    states: dict[str, str] = {}  # socket inode -> TCP state, for sockets on the local port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[fields[9]] = fields[3]
    spread: list[int] = []
    for pid in _tree(root):
        try:
            links = [os.readlink(entry.path) for entry in os.scandir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        held = [states.get(link[8:-1]) for link in links if link.startswith("socket:[")]
        if _LISTEN in held:
            spread.append(held.count(_ESTABLISHED))
    return tuple(sorted(spread, reverse=True))


@dataclass
class Run:
    result: LoadResult
    cpu_us_per_req: float  # the server's CPU (all its processes) per request served
    connections: tuple[int, ...] = ()  # per listening process, mid-run (connections_per_process)
    threads_us_per_req: dict[str, float] = field(default_factory=dict)
    """The live threads' share of it, by THREAD_ROLES (thread_cpu_seconds)."""


def measured_run(
    pid: int,
    port: int,
    path: str,
    body: bytes,
    *,
    duration: float,
    warmup: float,
    clients: int,
    streams: int,
    rps_per_client: float | None = None,
    h1: bool = False,
) -> Run:
    """One h2load run against the server whose root process is `pid`, with its CPU time and,
    halfway through, how its connections are spread over its processes."""
    spread: list[tuple[int, ...]] = []
    sampler = threading.Timer(
        warmup + duration / 2, lambda: spread.append(connections_per_process(pid, port))
    )
    sampler.daemon = True
    before = process_tree_cpu_seconds(pid)
    threads_before = thread_cpu_seconds(pid)
    sampler.start()
    try:
        result = run_h2load(
            port,
            path,
            body,
            duration=duration,
            warmup=warmup,
            clients=clients,
            streams=streams,
            rps_per_client=rps_per_client,
            h1=h1,
        )
        cpu = process_tree_cpu_seconds(pid) - before
        threads_after = thread_cpu_seconds(pid)
    finally:  # a failed run leaves no sampler behind
        sampler.cancel()
        sampler.join()
    # Warm-up requests used CPU too: spread the CPU over every request of the run.
    total = result.done * (duration + warmup) / duration if duration else result.done
    per_req = 1e6 / max(1.0, total)
    threads = {r: (threads_after[r] - threads_before[r]) * per_req for r in THREAD_ROLES}
    return Run(result, cpu * per_req, spread[0] if spread else (), threads)
