"""authz.deadlines: many waits with one time limit, one timer per event loop."""

from __future__ import annotations

import asyncio
import threading

from authz.deadlines import Deadlines, Wait


class Marked(Wait):
    """A wait that notes when it expired (by the loop's clock)."""

    __slots__ = ("expired_at", "name")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.expired_at: float | None = None

    def expire(self) -> None:
        self.expired_at = asyncio.get_running_loop().time()


def test_each_wait_expires_at_its_own_deadline_unless_done_first() -> None:
    deadlines = Deadlines(0.2, sweep=0.05)

    async def main() -> list[Marked]:
        loop = asyncio.get_running_loop()
        first = deadlines.add(Marked("first"))
        await asyncio.sleep(0.1)
        finished = deadlines.add(Marked("finished"))
        late = deadlines.add(Marked("late"))
        finished.done = True  # ended by itself: never expired
        await asyncio.sleep(0.35)
        assert first.expired_at is not None and late.expired_at is not None
        assert first.deadline <= first.expired_at < first.deadline + 0.1
        assert late.deadline <= late.expired_at < late.deadline + 0.1
        assert late.expired_at - first.expired_at >= 0.09  # each at its own deadline
        assert first.done and late.done
        assert deadlines.pending() == 0  # nothing left queued, finished or not
        assert loop.time() >= late.deadline
        return [first, finished, late]

    first, finished, late = asyncio.run(main())
    assert finished.expired_at is None


def test_finished_waits_are_dropped_within_a_sweep_not_kept_for_the_time_limit() -> None:
    """The queue holds about `sweep` seconds of finished waits, not `seconds` of them."""
    deadlines = Deadlines(10.0, sweep=0.05)

    async def main() -> int:
        for _ in range(100):
            deadlines.add(Marked("quick")).done = True
        await asyncio.sleep(0.2)
        return deadlines.pending()

    assert asyncio.run(main()) == 0


def test_waits_on_two_event_loops_each_expire_on_their_own_loop() -> None:
    deadlines = Deadlines(0.1, sweep=0.05)
    seen: dict[str, asyncio.AbstractEventLoop] = {}

    class OnLoop(Marked):
        def expire(self) -> None:
            super().expire()
            seen[self.name] = asyncio.get_running_loop()

    async def one(name: str) -> asyncio.AbstractEventLoop:
        deadlines.add(OnLoop(name))
        await asyncio.sleep(0.3)
        return asyncio.get_running_loop()

    loops: dict[str, asyncio.AbstractEventLoop] = {}
    other = threading.Thread(target=lambda: loops.update(b=asyncio.run(one("b"))))
    other.start()
    loops["a"] = asyncio.run(one("a"))
    other.join(5)
    assert seen == loops
    assert seen["a"] is not seen["b"]
