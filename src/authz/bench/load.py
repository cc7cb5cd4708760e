"""The load generator: h2load (nghttp2-client) in its own process, posting gRPC-framed bodies.

h2load is written in C and uses a fraction of a core at these rates, so the server keeps the
machine. Each run is bounded by ``-D`` (duration) and by a subprocess timeout. Latencies come from
h2load's per-request log (``--log-file``: start time, HTTP status, µs to the end of the response).
h2load cannot see gRPC trailers, so every body is first sent once with a real gRPC client and its
answer checked (world.verify), and the durable audit log's record count is compared afterwards.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from authz.bench.common import Latency

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: .*?, \S+ \((\d+)\) data")


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
) -> LoadResult:
    """One bounded load run against 127.0.0.1:port (loopback only)."""
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
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--log-file",
            str(log_path),
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
        status = _STATUS.search(out)
        traffic = _TRAFFIC.search(out)
        if status and int(status.group(1)) != int(counts.group(3)):
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
