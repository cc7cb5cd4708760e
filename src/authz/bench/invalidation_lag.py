"""How long a message takes from one worker to another through SQLite (authz.facts.invalidation).

``python -m authz.bench.invalidation_lag [--messages N]`` starts a second process that listens
on a fresh state directory, as another worker would, and publishes ``N`` access invalidations
from this one at irregular intervals. The lag of each is the time from the start of ``publish``
here to the moment the other process drops the app's entry (both read CLOCK_MONOTONIC, which
Linux shares between processes). It prints the median, 95th percentile and maximum in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from authz.facts.access import AccessCache
from authz.facts.heroku import AccessList
from authz.facts.invalidation import AccessInvalidations


class _Reporting(AccessCache):
    """An access cache that says (on stdout) when it was told to drop an app's entry."""

    def invalidate(self, app_id: str) -> bool:
        print(json.dumps({"app": app_id, "at": time.monotonic()}), flush=True)
        return super().invalidate(app_id)


async def _fetch(app_id: str, resource_id: str) -> AccessList:
    return AccessList(app_id, "app", None, "owner", time.time())


async def listen(state: Path) -> None:
    bus = AccessInvalidations(_Reporting(_fetch, ttl=300), state)
    await bus.start()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await bus.aclose()


async def publish(state: Path, messages: int) -> list[float]:
    child = subprocess.Popen(
        [sys.executable, "-m", "authz.bench.invalidation_lag", "--listen", str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert json.loads(child.stdout.readline()).get("ready")
        bus = AccessInvalidations(None, state)
        await bus.start()
        lags = []
        for i in range(messages):
            await asyncio.sleep(random.uniform(0.01, 0.1))  # not in step with the poller
            sent = time.monotonic()
            await bus.publish(f"app-{i}")
            seen = json.loads(await asyncio.to_thread(child.stdout.readline))
            assert seen["app"] == f"app-{i}", seen
            lags.append((seen["at"] - sent) * 1000)
        await bus.aclose()
        return lags
    finally:
        child.stdin.close()
        child.wait(10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authz.bench.invalidation_lag")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--listen", default=None, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    if args.listen:
        asyncio.run(listen(Path(args.listen)))
        return
    with tempfile.TemporaryDirectory(prefix="authz-bench-lag-") as tmp:
        lags = asyncio.run(publish(Path(tmp) / "state.db", args.messages))
    lags.sort()
    p95 = lags[min(len(lags) - 1, round(0.95 * (len(lags) - 1)))]
    print(
        f"SQLite invalidation lag over {len(lags)} messages, publish to the other process "
        f"dropping its entry: median {statistics.median(lags):.1f} ms, p95 {p95:.1f} ms, "
        f"max {lags[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
