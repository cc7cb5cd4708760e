"""Where a server's time goes under load: py-spy (sampling, external) or cProfile (in process).

``--profile`` runs one extra load run of the main scenario (session-token Check, audit off) while
py-spy samples the server process from outside (no code change, little overhead in nonblocking
mode), then prints the functions with the most samples: own time (the leaf frame) and inclusive
time (anywhere on the stack). Without py-spy, the server runs under cProfile instead.
"""

from __future__ import annotations

import pstats
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from authz.bench.common import Table

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy_path() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def start_pyspy(pid: int, duration: float, out: Path, *, rate: int = 250) -> subprocess.Popen[str]:
    exe = pyspy_path()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install '.[bench]')")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(duration)))]
    cmd += ["--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group('func')} ({match.group('file')})"


def summarize_pyspy(raw: Path, *, top: int = 18) -> tuple[Table, Table, int]:
    """(own-time table, inclusive-time table, total samples) from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    own_table = Table("Profile: own time (py-spy samples in the leaf frame)", ["function", "%"])
    for name, n in own.most_common(top):
        own_table.add(name, 100.0 * n / max(1, total))
    incl_table = Table(
        "Profile: inclusive time (py-spy samples with it on the stack)", ["function", "%"]
    )
    skip = ("_run_module_as_main", "_run_code", "<module>", "main (", "run (asyncio", "Runner.run")
    shown = 0
    for name, n in inclusive.most_common():
        if any(name.startswith(s) for s in skip) or "base_events.py" in name:
            continue
        incl_table.add(name, 100.0 * n / max(1, total))
        shown += 1
        if shown >= top:
            break
    return own_table, incl_table, total


def summarize_cprofile(stats_path: Path, *, top: int = 18) -> Table:
    stats = pstats.Stats(str(stats_path))
    entries = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((tt, ct, nc, f"{func} ({Path(file).name}:{line})"))
    total = sum(e[0] for e in entries) or 1.0
    table = Table("Profile: cProfile own time", ["function", "calls", "own %", "cumulative s"])
    for tt, ct, nc, name in sorted(entries, reverse=True)[:top]:
        table.add(name, nc, 100.0 * tt / total, ct)
    return table
