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
