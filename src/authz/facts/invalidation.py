"""Dropping an app's cached access list on every replica at once.

With PostgreSQL every replica LISTENs on one channel and `publish` NOTIFYs it, so an
`InvalidateAccess` (or a deprovisioning, or a Heroku webhook event) that reaches one replica reaches
all. With SQLite there is one process, so dropping the local entry is the whole job. The 300 s
ceiling of the cache holds either way: this only makes changes visible sooner.

A notification names the replica that sent it (``<replica> <app id>``), and a replica ignores its
own: it dropped its entry when it published, and dropping it again when the notification comes
back would throw away an access list fetched in between (a second fetch for nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from authz.facts.access import AccessCache

log = logging.getLogger("authz.facts.invalidation")

CHANNEL = "authz_access_invalidate"


class AccessInvalidations:
    def __init__(
        self,
        cache: AccessCache | None,
        database_url: str | None = None,
        *,
        channel: str = CHANNEL,
        retry_seconds: float = 1.0,
    ) -> None:
        self.cache = cache
        self.url = database_url
        self.channel = channel
        self.retry_seconds = retry_seconds
        self.received = 0
        self.replica = secrets.token_hex(8)  # names this replica's notifications
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Start listening (PostgreSQL only); returns once the first LISTEN is in place."""
        if self.url is None or self.cache is None:
            return
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def publish(self, app_id: str) -> bool:
        """Drop the app's entry here, and tell every other replica to drop theirs."""
        dropped = self.cache.invalidate(app_id) if self.cache is not None else False
        if self.url is not None:
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                notice = f"{self.replica} {app_id}"
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, notice))
        return dropped

    async def _listen(self) -> None:
        import psycopg

        assert self.cache is not None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,  # type: ignore[arg-type]
                ) as conn:
                    await conn.execute(f'LISTEN "{self.channel}"')
                    if self._listening.is_set():
                        # Notifications sent while we were away are lost: forget everything.
                        self.cache.clear()
                    self._listening.set()
                    async for notice in conn.notifies():
                        origin, _, app_id = notice.payload.partition(" ")
                        if origin == self.replica:
                            continue
                        self.received += 1
                        # A bare app id: a replica of an earlier release sent it.
                        self.cache.invalidate(app_id or origin)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through restarts of the database
                log.warning(
                    "access invalidation listener lost its connection: %s; retrying",
                    type(exc).__name__,
                )
                self._listening.set()
                self.cache.clear()
                await asyncio.sleep(self.retry_seconds)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
