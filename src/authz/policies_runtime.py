"""The serving policy set: swapped whole, atomically, only after a new set compiled completely."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from authz.policy.compile import CompiledPolicySet, load_and_compile
from authz.policy.load import PolicyError

log = logging.getLogger("authz.policy")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    reloaded: bool
    revision: str
    errors: tuple[str, ...] = ()


@dataclass
class PolicyHolder:
    """Readers take `current` once per request, so in-flight decisions finish on their set."""

    directory: Path
    current: CompiledPolicySet
    last_refused_at: float | None = None
    last_refused_errors: tuple[str, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, directory: Path | str) -> PolicyHolder:
        directory = Path(directory)
        return cls(directory, load_and_compile(directory))

    def reload(self) -> ReloadResult:
        with self._lock:
            try:
                candidate = load_and_compile(self.directory)
            except PolicyError as exc:
                self.last_refused_at = time.time()
                self.last_refused_errors = tuple(str(p) for p in exc.problems)
                for problem in exc.problems:
                    log.error(
                        "policy change refused, still serving %s: %s",
                        self.current.revision,
                        problem,
                    )
                return ReloadResult(False, self.current.revision, self.last_refused_errors)
            if candidate.revision != self.current.revision:
                log.info("policy revision %s → %s", self.current.revision, candidate.revision)
                self.current = candidate
            return ReloadResult(True, self.current.revision)


def directory_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a policy file is added, removed or edited (name, size, mtime)."""
    try:
        entries = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()


async def watch_policies(holder: PolicyHolder, interval: float = 1.0) -> None:
    """Reload when the directory changes. Polling: portable, and cheap at one stat per file.

    A change is picked up once its files stop changing for one interval, so an editor that
    writes a file in several steps is not caught half-way.
    """
    import asyncio

    seen = directory_signature(holder.directory)
    while True:
        await asyncio.sleep(interval)
        now = directory_signature(holder.directory)
        if now == seen:
            continue
        await asyncio.sleep(interval)
        settled = directory_signature(holder.directory)
        if settled != now:
            continue
        seen = settled
        await asyncio.to_thread(holder.reload)
