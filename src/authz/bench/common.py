"""Timing, statistics, tables and the machine description shared by every part of the suite."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# -- progress --------------------------------------------------------------------------------

_STARTED = time.monotonic()


def progress(step: str) -> None:
    """One line per step on stderr, so a long run shows where it is (stdout keeps the tables)."""
    print(f"[bench {time.monotonic() - _STARTED:5.0f} s] {step}", file=sys.stderr, flush=True)


# -- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """Microseconds per call: the median of `repeats` runs of `number` calls (and the best)."""

    median_us: float
    best_us: float
    number: int
    repeats: int


def _calibrate(run: Callable[[int], float], min_time: float) -> int:
    """How many calls make one timed run last about `min_time` seconds."""
    number = 1
    while True:
        elapsed = run(number)
        if elapsed >= min_time / 5 or number >= 1 << 24:
            break
        number *= 4 if elapsed < min_time / 50 else 2
    return max(1, int(number * min_time / max(elapsed, 1e-9)))


def time_calls(fn: Callable[[], Any], *, min_time: float = 0.2, repeats: int = 5) -> Timing:
    """µs per call of `fn()`; garbage collection stays on, as in a server."""

    def run(number: int) -> float:
        started = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - started

    number = _calibrate(run, min_time)
    samples = [run(number) / number * 1e6 for _ in range(repeats)]
    return Timing(statistics.median(samples), min(samples), number, repeats)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, min_time: float = 0.1, repeats: int = 9
) -> dict[str, Timing]:
    """µs per call of each function, timed in interleaved rounds (one run of each per round), so
    that a noisy neighbour slows them all alike and their ratios stay meaningful."""

    def runner(fn: Callable[[], Any]) -> Callable[[int], float]:
        def run(number: int) -> float:
            started = time.perf_counter()
            for _ in range(number):
                fn()
            return time.perf_counter() - started

        return run

    runners = {name: runner(fn) for name, fn in fns.items()}
    numbers = {name: _calibrate(run, min_time) for name, run in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, run in runners.items():
            samples[name].append(run(numbers[name]) / numbers[name] * 1e6)
    return {
        name: Timing(statistics.median(v), min(v), numbers[name], repeats)
        for name, v in samples.items()
    }


def time_async_calls(
    fn: Callable[[], Awaitable[Any]], *, min_time: float = 0.2, repeats: int = 5
) -> Timing:
    """µs per call of `await fn()`, all on one event loop (as in the server)."""
    loop = asyncio.new_event_loop()
    try:

        async def batch(number: int) -> float:
            started = time.perf_counter()
            for _ in range(number):
                await fn()
            return time.perf_counter() - started

        def run(number: int) -> float:
            return loop.run_until_complete(batch(number))

        number = _calibrate(run, min_time)
        samples = [run(number) / number * 1e6 for _ in range(repeats)]
    finally:
        loop.close()
    return Timing(statistics.median(samples), min(samples), number, repeats)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency summary in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Latency:
        values = sorted(values_ms)
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            len(values),
            statistics.fmean(values),
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            values[-1],
        )


def rss_kib() -> int:
    """Resident set size of this process now, in KiB (Linux; 0 elsewhere)."""
    return _status_field("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far, in KiB (Linux; 0 elsewhere)."""
    return _status_field("VmHWM")


def _status_field(name: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def collect() -> None:
    gc.collect()
    gc.collect()


# -- tables ----------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([fmt(c) for c in cells])

    def column(self, header: str) -> list[str]:
        index = self.headers.index(header)
        return [row[index] for row in self.rows]

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        numeric = [
            all(_looks_numeric(row[i]) for row in self.rows) and bool(self.rows)
            for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            parts = [
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(cells, widths, numeric, strict=True)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title, "=" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * w for w in widths))
        out += [line(row) for row in self.rows]
        out += [f"  {note}" for note in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        numeric = [
            all(_looks_numeric(row[i]) for row in self.rows) and bool(self.rows)
            for i in range(len(self.headers))
        ]
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out)


def _looks_numeric(cell: str) -> bool:
    stripped = cell.replace(",", "").replace("×", "").replace("%", "").strip()
    if stripped in ("", "-", "n/a"):
        return True
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def fmt(value: Any) -> str:
    """Numbers with sensible precision; everything else as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


# -- the machine -----------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def h2load_version() -> str:
    exe = shutil.which("h2load")
    if exe is None:
        return "not installed"
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def machine() -> dict[str, str]:
    """What the numbers were measured on; printed and written with every run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    load1, load5, _ = os.getloadavg()
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(cores),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB" if mem_kib else "unknown",
        "kernel": platform.release(),
        "load average at start (1, 5 min)": f"{load1:.2f}, {load5:.2f}",
        "python": platform.python_version() + f" ({platform.python_implementation()})",
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "cel-expr-python": _version("cel-expr-python"),
        "cedarpy": _version("cedarpy"),
        "regopy": _version("regopy"),
        "pycasbin": _version("pycasbin"),
        "h2load": h2load_version(),
    }


def machine_table(info: dict[str, str]) -> Table:
    table = Table("Machine", ["what", "value"])
    for key, value in info.items():
        table.add(key, value)
    return table
