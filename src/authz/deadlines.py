"""Many waits with the same time limit, on event loops, timed by one timer per loop.

A timer armed and cancelled for every call (``loop.call_later``, ``asyncio.timeout``) costs a
handle, a heap entry that stays until its time comes or the loop rebuilds its heap, and work
for the loop skipping it. Waits that all last the same `seconds` end in the order they start,
so they are queued in that order and one timer, at the earliest deadline of a wait still
running, ends those that ran out, at their deadline. Used for the request read of every call
(authz.server.guard) and for every durable audit wait (authz.audit.log).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TypeVar

SWEEP = 1.0
"""Seconds between drops of finished waits at most: the queue holds about this much of them."""


class Wait:
    """One wait and its deadline; the waiter sets `done` once it ended by itself."""

    __slots__ = ("deadline", "done")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.done = False

    def expire(self) -> None:
        """Called on the wait's loop at its deadline, if it is not done by then."""
        raise NotImplementedError


W = TypeVar("W", bound=Wait)


class _Queue:
    """The waits of one event loop, in deadline order, and its one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sweep: float) -> None:
        self.loop = loop
        self.sweep = sweep
        self.pending: collections.deque[Wait] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, wait: Wait, now: float) -> None:
        self.pending.append(wait)
        if self.timer is None:
            self._arm(now)

    def _arm(self, now: float) -> None:
        """The timer at the first wait's deadline, or sooner to drop finished waits."""
        self.timer = self.loop.call_at(
            min(self.pending[0].deadline, now + self.sweep), self._expire
        )

    def _expire(self) -> None:
        now = self.loop.time()
        pending = self.pending
        while pending and (pending[0].done or pending[0].deadline <= now):
            wait = pending.popleft()
            if not wait.done:
                wait.done = True
                wait.expire()
        self.timer = None
        if pending:
            self._arm(now)


class Deadlines:
    """Waits that each end at most `seconds` after they start (`add`), on any event loop."""

    def __init__(self, seconds: float, sweep: float = SWEEP) -> None:
        self.seconds = seconds
        self.sweep = sweep
        self._queues: dict[asyncio.AbstractEventLoop, _Queue] = {}

    def add(self, wait: W) -> W:
        """Start `wait` now, on the running loop: its `expire()` runs there in `seconds`
        unless it is done by then."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            # Loops on other threads may add theirs meanwhile: work on a copy of the keys.
            for old in list(self._queues):
                if old.is_closed():
                    self._queues.pop(old, None)
            queue = self._queues[loop] = _Queue(loop, self.sweep)
        now = loop.time()
        wait.deadline = now + self.seconds
        queue.add(wait, now)
        return wait

    def pending(self) -> int:
        """Waits queued on every loop, finished ones not yet dropped included (for tests)."""
        return sum(len(queue.pending) for queue in self._queues.values())
