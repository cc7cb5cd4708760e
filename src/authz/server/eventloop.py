"""The event loop a server runs on (AUTHZ_EVENT_LOOP): uvloop by default, or asyncio's own.

grpc.aio and uvicorn both run on any asyncio loop. uvloop (libuv, MagicStack) does the same
work for less CPU: measured here, a constant-reply grpc.aio server costs about a sixth less CPU
per call and authz's Check about 7 % less (docs/benchmarks.md). ``asyncio`` stays for
platforms without uvloop and as a way back should a loop-specific problem appear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from authz.config import ConfigError

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(event_loop: str) -> LoopFactory | None:
    """What makes the loop `event_loop` names; None for asyncio's default."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "AUTHZ_EVENT_LOOP=uvloop, but uvloop is not installed (authz installs it on Linux "
            "and macOS); install it or set AUTHZ_EVENT_LOOP=asyncio"
        ) from None
    new_event_loop: LoopFactory = uvloop.new_event_loop
    return new_event_loop


def run(event_loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(main()) on the loop `event_loop` names (ConfigError before anything starts
    if it cannot be had)."""
    factory = loop_factory(event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def running_loop_name() -> str:
    """Which loop this coroutine runs on, as AUTHZ_EVENT_LOOP names it."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"
