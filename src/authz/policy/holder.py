"""The serving policy set: swapped whole, atomically, only after a new set compiled completely."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from authz.policy.compile import CompiledPolicySet
from authz.policy.data import DATA_DIR, DATA_SUFFIXES
from authz.policy.files import entries
from authz.policy.gate import load_gated
from authz.policy.load import POLICY_SUFFIXES, PolicyError

log = logging.getLogger("authz.policy")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    reloaded: bool
    revision: str
    errors: tuple[str, ...] = ()


@dataclass
class PolicyHolder:
    """Readers take `current` once per request, so in-flight decisions finish on their set.
    Every load passes the gate `policy validate` applies (authz.policy.gate), with the same
    strictness (AUTHZ_POLICY_STRICT)."""

    directory: Path
    current: CompiledPolicySet
    strict: bool = False
    last_refused_at: float | None = None
    last_refused_errors: tuple[str, ...] = ()
    # Told the new revision after each swap (from the reloading thread), so that other worker
    # processes reload too (authz.facts.invalidation).
    on_change: Callable[[str], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, directory: Path | str, *, strict: bool = False) -> PolicyHolder:
        directory = Path(directory)
        return cls(directory, load_gated(directory, strict=strict), strict)

    def reload(self) -> ReloadResult:
        """Load and compile the directory again; swap only if all of it is good. Never raises:
        whatever goes wrong is a refused reload, logged and kept for GetPolicyStatus."""
        with self._lock:
            try:
                candidate = load_gated(self.directory, strict=self.strict)
            except PolicyError as exc:
                errors = tuple(str(p) for p in exc.problems)
                return self._refuse(errors or ("the policy set was refused",))
            except Exception as exc:  # a bug must not stop reloads or end the caller
                log.exception("policy reload of %s failed unexpectedly", self.directory)
                return self._refuse(
                    (f"{self.directory}: the reload failed ({type(exc).__name__}: {exc})",)
                )
            if candidate.revision != self.current.revision:
                log.info("policy revision %s → %s", self.current.revision, candidate.revision)
                self.current = candidate
                if self.on_change is not None:
                    self.on_change(candidate.revision)
            return ReloadResult(True, self.current.revision)

    def _refuse(self, errors: tuple[str, ...]) -> ReloadResult:
        self.last_refused_at = time.time()
        self.last_refused_errors = errors
        for error in errors:
            log.error("policy change refused, still serving %s: %s", self.current.revision, error)
        return ReloadResult(False, self.current.revision, errors)


Signature = tuple[tuple[str, int, int, int], ...]


def directory_signature(directory: Path) -> Signature:
    """What changes when a policy or data file is added, removed or edited: name, size, mtime
    and inode of every entry (a broken link or an unreadable entry counts too, as -1)."""
    signature: list[tuple[str, int, int, int]] = []
    for folder, suffixes, prefix in (
        (directory, POLICY_SUFFIXES, ""),
        (directory / DATA_DIR, DATA_SUFFIXES, f"{DATA_DIR}/"),
    ):
        try:
            paths = entries(folder, suffixes)
        except OSError:
            signature.append((prefix or ".", -1, -1, -1))  # absent or unreadable folder
            continue
        for path in paths:
            try:
                info = path.stat()
                signature.append((prefix + path.name, info.st_size, info.st_mtime_ns, info.st_ino))
            except OSError:
                signature.append((prefix + path.name, -1, -1, -1))
    return tuple(signature)


async def watch_policies(holder: PolicyHolder, interval: float = 1.0) -> None:
    """Reload when the directory changes. Polling: portable, and cheap at one stat per file.

    A change is picked up once its files stop changing for one interval, so an editor that
    writes a file in several steps is not caught half-way. Nothing ends the watcher but
    cancellation: a failed look or reload is logged and the next change is tried again.
    """
    seen = directory_signature(holder.directory)
    while True:
        await asyncio.sleep(interval)
        try:
            now = directory_signature(holder.directory)
            if now == seen:
                continue
            await asyncio.sleep(interval)
            settled = directory_signature(holder.directory)
            if settled != now:
                continue
            seen = settled
            await asyncio.to_thread(holder.reload)
        except Exception:
            log.exception("policy watcher: looking for changes failed; trying again")
