"""What one process learns that every other serving process must act on at once.

Two facts live in each process's memory and so need telling: an app's cached access list
(dropped by an ``InvalidateAccess``, a deprovisioning or a Heroku webhook event) and the serving
policy revision (a reload through AdminService, SIGHUP or the directory watcher). Everything else
a decision reads across requests (sessions and their revocation, the add-on registry and its
deprovisioned state, the SSO replay guard) is one statement on the shared store per call, so it
is coherent without telling anyone.

The messages travel through the store, whichever it is:

- PostgreSQL (replicas, and workers): every process LISTENs on one channel and ``publish``
  NOTIFYs it. Notifications sent while a listener is away are lost, so a listener that
  reconnects forgets its whole cache.
- SQLite (workers of ``authz serve --workers N``, or several processes on one data directory):
  ``publish`` appends a row to a small table in ``invalidations.db`` beside the state database,
  and every process polls it every ``poll_interval`` (25 ms). A poll costs one ``PRAGMA
  data_version``, which changes only when another connection has committed to that file, so an
  idle poll reads no table. Rows older than ``_KEEP_SECONDS`` are deleted by the publisher. The
  lag (publish on one worker to the entry dropped on another) is one poll interval at most plus
  the time to read the row; ``python -m authz.bench.invalidation_lag`` measures it.
- None (tests, tools): dropping the local entry is the whole job.

The 300 s ceiling of the access cache holds either way: this only makes changes visible sooner.
A message names the process that sent it (``<replica> <app id>``, or ``<replica> policy
<revision>``), and a process ignores its own: it acted when it published, and acting again when
the message comes back would throw away an access list fetched in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from authz.facts.access import AccessCache

if TYPE_CHECKING:
    from authz.policy.holder import PolicyHolder

log = logging.getLogger("authz.facts.invalidation")

CHANNEL = "authz_access_invalidate"
SQLITE_FILE: Final = "invalidations.db"
"""The SQLite bus's file, beside the state database (its own file, so that the writes of every
other table do not wake the pollers)."""
POLL_INTERVAL: Final = 0.025
_KEEP_SECONDS = 300.0  # longer than any poller can fall behind without noticing
_POLICY = "policy"  # the first word of a policy message (app ids are UUIDs: no spaces)


class AccessInvalidations:
    """Access-list invalidations and policy revisions, to and from every serving process.

    ``target`` is where the state lives: a PostgreSQL URL, the SQLite state database's path
    (the bus is ``invalidations.db`` beside it), or None (this process only). With ``policies``
    a message that a process now serves another policy revision makes the others reload theirs.
    """

    def __init__(
        self,
        cache: AccessCache | None,
        target: str | Path | None = None,
        *,
        channel: str = CHANNEL,
        retry_seconds: float = 1.0,
        policies: PolicyHolder | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.cache = cache
        self.url = target if isinstance(target, str) else None
        self.sqlite_path = Path(target).with_name(SQLITE_FILE) if isinstance(target, Path) else None
        self.channel = channel
        self.retry_seconds = retry_seconds
        self.policies = policies
        self.poll_interval = poll_interval
        self.received = 0
        self.replica = secrets.token_hex(8)  # names this process's messages
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN (or the first poll) is in place."""
        self._loop = asyncio.get_running_loop()
        if self.policies is not None:
            self.policies.on_change = self._policy_changed
        if self.url is not None:
            self._listener = self._loop.create_task(self._listen())
        elif self.sqlite_path is not None:
            self._listener = self._loop.create_task(self._poll())
        else:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def publish(self, app_id: str) -> bool:
        """Drop the app's entry here, and tell every other process to drop theirs."""
        dropped = self.cache.invalidate(app_id) if self.cache is not None else False
        await self._send(app_id)
        return dropped

    async def _send(self, message: str) -> None:
        notice = f"{self.replica} {message}"
        if self.url is not None:
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, notice))
        elif self.sqlite_path is not None:
            await asyncio.to_thread(_sqlite_append, self.sqlite_path, notice)

    def _receive(self, payload: str) -> None:
        origin, _, message = payload.partition(" ")
        if origin == self.replica:
            return
        self.received += 1
        kind, _, revision = message.partition(" ")
        if kind == _POLICY and revision:
            self._reload_unless_serving(revision)
        elif self.cache is not None:
            # A bare app id: a replica of an earlier release sent it.
            self.cache.invalidate(message or origin)

    # -- policy revisions --------------------------------------------------------------------

    def _policy_changed(self, revision: str) -> None:
        """PolicyHolder.on_change: called from whichever thread reloaded."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._spawn, self._send(f"{_POLICY} {revision}"))

    def _reload_unless_serving(self, revision: str) -> None:
        if self.policies is None or self.policies.current.revision == revision:
            return
        self._spawn(asyncio.to_thread(self.policies.reload))

    def _spawn(self, work: object) -> None:
        async def run() -> None:
            try:
                await work  # type: ignore[misc]
            except Exception as exc:
                log.warning("policy revision message failed: %s: %s", type(exc).__name__, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    # -- PostgreSQL --------------------------------------------------------------------------

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,  # type: ignore[arg-type]
                ) as conn:
                    await conn.execute(f'LISTEN "{self.channel}"')
                    if self._listening.is_set():
                        # Notifications sent while we were away are lost: forget everything.
                        self._forget()
                    self._listening.set()
                    async for notice in conn.notifies():
                        self._receive(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through restarts of the database
                log.warning(
                    "access invalidation listener lost its connection: %s; retrying",
                    type(exc).__name__,
                )
                self._listening.set()
                self._forget()
                await asyncio.sleep(self.retry_seconds)

    def _forget(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    # -- SQLite ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        assert self.sqlite_path is not None
        conn: sqlite3.Connection | None = None
        seq = 0
        version = None
        while True:
            try:
                if conn is None:
                    conn, seq = await asyncio.to_thread(_sqlite_open, self.sqlite_path)
                    self._listening.set()
                # Reading a WAL database never waits for a writer: cheap enough for the loop.
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != version:
                    version = now
                    rows = conn.execute(
                        "SELECT seq, notice FROM invalidations WHERE seq > ? ORDER BY seq", (seq,)
                    ).fetchall()
                    for row_seq, notice in rows:
                        seq = row_seq
                        self._receive(notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a damaged or vanished file: reopen, forget the cache
                log.warning(
                    "access invalidation poller failed: %s: %s; retrying", type(exc).__name__, exc
                )
                self._listening.set()
                self._forget()
                if conn is not None:
                    conn.close()
                conn, version = None, None
                await asyncio.sleep(self.retry_seconds)
                continue
            await asyncio.sleep(self.poll_interval)

    async def aclose(self) -> None:
        if self.policies is not None and self.policies.on_change == self._policy_changed:
            self.policies.on_change = None
        for task in (self._listener, *self._reloads):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


_SCHEMA = """
CREATE TABLE IF NOT EXISTS invalidations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    notice TEXT NOT NULL
)
"""


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # a lost message costs a refetch, not a record
    return conn


def _sqlite_open(path: Path) -> tuple[sqlite3.Connection, int]:
    """A polling connection and the last seq (messages before this start are not ours)."""
    conn = _sqlite_connect(path)
    conn.execute(_SCHEMA)
    (seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM invalidations").fetchone()
    return conn, seq


def _sqlite_append(path: Path, notice: str) -> None:
    conn = _sqlite_connect(path)
    try:
        conn.execute(_SCHEMA)
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO invalidations (at, notice) VALUES (?, ?)", (now, notice))
        conn.execute("DELETE FROM invalidations WHERE at < ?", (now - _KEEP_SECONDS,))
        conn.execute("COMMIT")
    finally:
        conn.close()
