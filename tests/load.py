"""Callers keeping a server busy with Checks, each in a thread of its own, remembering every
decision id that came back: what the SIGKILL tests compare with the audit log."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from authz.v1 import authorization_pb2 as pb

Check = Callable[[int], Any]
"""Asks Check number i and returns its reply (grpc.RpcError when refused)."""


@dataclass
class Load:
    """`callers` threads calling the Check that `connect()` gives each of them (its own
    connection, or a shared stub) until finish(); Check i of n callers is request i."""

    name: str
    connect: Callable[[], contextlib.AbstractContextManager[Check]]
    callers: int
    join_seconds: float = 10.0
    answered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.callers):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, n: int) -> None:
        i = n
        with self.connect() as check:
            while not self.stop.is_set():
                try:
                    response = check(i)
                except grpc.RpcError as exc:
                    self.errors.append(str(exc.code()))
                    time.sleep(0.01)
                else:
                    self.answered.append(response.decision_id)  # the answer reached us
                i += self.callers

    def wait_for(self, count: int, deadline: float) -> None:
        """Until `count` answers came back; fails at `deadline` (time.monotonic())."""
        while len(self.answered) < count:
            assert time.monotonic() < deadline, (
                f"{self.name}: {len(self.answered)} of {count} answers, errors {self.errors[:3]}"
            )
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.join_seconds)


@contextlib.contextmanager
def shared(check: Check) -> Iterator[Check]:
    """For `connect`: every caller uses the same `check` (one channel for all)."""
    yield check


def check_request(i: int) -> pb.CheckRequest:
    """Check number i: seven service principals, an ALLOW and a DENY action in turn."""
    return pb.CheckRequest(
        principal=pb.Principal(type="service", id=f"svc-{i % 7}"),
        action="account.login_password" if i % 2 else "dashboard.view",
        resource=pb.Resource(type="account", id=f"acct-{i}"),
        request_id=f"req-{i}",
    )
