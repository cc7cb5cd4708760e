"""Fault injection: latency, error statuses, 429, malformed bodies, dropped connections."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("latency", "error", "rate_limit", "malformed", "drop")


@dataclass
class Fault:
    """One injected fault. ``remaining`` None means until cleared."""

    id: str
    kind: str
    path_prefix: str = ""
    remaining: int | None = None
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "path_prefix": self.path_prefix,
            "count": self.remaining,
            "seconds": self.seconds,
            "status": self.status,
            "retry_after": self.retry_after,
        }


class Faults:
    """The faults in force; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(
        self,
        kind: str,
        *,
        path_prefix: str = "",
        count: int | None = None,
        seconds: float = 0.0,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if kind == "error":
            status = 503 if status is None else int(status)
            if not 400 <= status <= 599:
                raise ValueError("an error fault's status must be 4xx or 5xx")
        with self._lock:
            fault = Fault(
                id=f"f{next(self._ids)}",
                kind=kind,
                path_prefix=path_prefix,
                remaining=count,
                seconds=float(seconds),
                status=429 if kind == "rate_limit" else (status or 503),
                retry_after=retry_after,
            )
            self._faults.append(fault)
            return fault.id

    def clear(self, fault_id: str | None = None) -> int:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if fault_id not in (None, f.id)]
            return before - len(self._faults)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def take(self, path: str) -> tuple[float, Fault | None]:
        """Latency faults add up; the first other matching fault answers the request."""
        delay = 0.0
        chosen: Fault | None = None
        with self._lock:
            for fault in list(self._faults):
                if not path.startswith(fault.path_prefix):
                    continue
                if fault.kind == "latency":
                    delay += fault.seconds
                elif chosen is None:
                    chosen = fault
                else:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
        return delay, chosen
