"""Blocking calls (the stores: SQLite and PostgreSQL) run off the event loop.

gRPC and the HTTP listener share one event loop, so a store call made on it stalls every call in
flight for as long as the database takes: a SQLite write waits for its fsync and, under a lock,
up to the busy timeout; PostgreSQL is a network round trip away. Use cases (authz.provisioning,
the session servicer, the webhook receiver) therefore run every store call through
:func:`offload`, on both backends. The decision path decides per backend (``FactSources.call`` in
authz.decide), because its SQLite reads take microseconds and run for every check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def offload(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread (the default executor), awaited. Context
    variables travel with the call, as asyncio.to_thread carries them."""
    return await asyncio.to_thread(fn, *args, **kwargs)
