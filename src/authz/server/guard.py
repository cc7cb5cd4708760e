"""What one call may hold of the server: its budget, the wait for its request, idle streams.

grpc.aio counts every call against one server-wide limit (``maximum_concurrent_rpcs``) from the
moment it arrives, before any handler runs, and has nothing per connection or per kind of call.
So the limit given to grpc is only a backstop (:func:`server_call_limit`); the budgets that
matter are kept here, per call, right after admission and before the request is read:

- callers (authenticated, or everyone in development mode): ``AUTHZ_MAX_CONCURRENT_RPCS``;
- open calls, made without caller credentials to what stays open (health checking, and
  reflection without caller credentials): ``AUTHZ_OPEN_RPCS``, of which at most half may be
  Health/Watch streams and at most :data:`WATCHES_PER_CONNECTION` per connection; an open stream
  that sends and receives nothing for ``AUTHZ_STREAM_IDLE`` seconds is ended.

A call over its budget is refused at once (RESOURCE_EXHAUSTED), so it gives its grpc slot back
at once. Every request message is decoded here rather than by grpc, so undecodable bytes are an
INVALID_ARGUMENT that says so, and a unary request must arrive within ``AUTHZ_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health

from authz.config import Settings
from authz.deadlines import Deadlines, Wait
from authz.server.errors import abort

log = logging.getLogger("authz.callers")

REQUEST_TIMEOUT = Settings.request_timeout
"""Seconds a call may take to deliver its request message (at most 1 MiB) after it starts
(AUTHZ_REQUEST_TIMEOUT); streaming methods keep it when AUTHZ_REQUEST_TIMEOUT is 0."""
WATCHES_PER_CONNECTION = 2
"""Open Health/Watch streams one connection may hold: gRPC's client-side health checking
(gRFC A17) keeps one per connection."""
REFUSING_ROOM = 64
"""Slots of grpc's own limit left for calls while they are being refused (no credentials, over
a budget): each holds one only for that moment, and may not eat into either budget meanwhile."""
WATCH_METHOD = f"/{health.SERVICE_NAME}/Watch"
_MAX_WRAPPED = 4096

Admit = Callable[[grpc.aio.ServicerContext], Awaitable[bool]]
"""Admits a call, or aborts it; True when it is an open call (no caller credentials)."""
Refuse = Callable[[grpc.aio.ServicerContext], Awaitable[None]]
"""Aborts a call with the reason it is refused."""


def server_call_limit(max_concurrent_rpcs: int, open_rpcs: int) -> int:
    """grpc's server-wide limit: both budgets, and room for calls that are being refused."""
    return max_concurrent_rpcs + open_rpcs + REFUSING_ROOM


class Lease(NamedTuple):
    """What an admitted call holds until it ends."""

    open_call: bool
    watch_peer: str | None = None  # the connection of an open Watch stream


CALLER_LEASE, OPEN_LEASE = Lease(False), Lease(True)


class Exhausted(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Budgets:
    """Calls in flight per budget, and open Watch streams overall and per connection."""

    def __init__(self, max_concurrent_rpcs: int, open_rpcs: int) -> None:
        self.call_limit = max_concurrent_rpcs
        self.open_limit = open_rpcs
        self.watch_limit = open_rpcs // 2  # the other half stays for probes' Check
        self.calls = 0
        self.open_calls = 0
        self.watches: dict[str, int] = {}  # connection (context.peer()) -> open Watch streams
        self.watch_count = 0

    def take(self, open_call: bool, watch_peer: str | None = None) -> Lease:
        """A lease on one slot of the call's budget, or Exhausted saying which one is full."""
        if not open_call:
            if self.calls >= self.call_limit:
                raise Exhausted(
                    "TOO_MANY_CALLS",
                    f"authz is answering as many calls as it takes at once ({self.call_limit}, "
                    "AUTHZ_MAX_CONCURRENT_RPCS); retry with backoff",
                )
            self.calls += 1
            return CALLER_LEASE
        if self.open_calls >= self.open_limit:
            raise Exhausted(
                "TOO_MANY_OPEN_CALLS",
                "authz is serving as many calls without caller credentials as it takes at once "
                f"({self.open_limit}, AUTHZ_OPEN_RPCS); retry with backoff, or send the caller "
                "credentials issued to your service",
            )
        if watch_peer is None:
            self.open_calls += 1
            return OPEN_LEASE
        if self.watch_count >= self.watch_limit:
            raise Exhausted(
                "TOO_MANY_WATCH_STREAMS",
                f"authz already holds {self.watch_limit} Watch streams without caller "
                "credentials (half of AUTHZ_OPEN_RPCS); poll Health/Check instead, or send the "
                "caller credentials issued to your service",
            )
        held = self.watches.get(watch_peer, 0)
        if held >= WATCHES_PER_CONNECTION:
            raise Exhausted(
                "TOO_MANY_WATCH_STREAMS",
                f"this connection already holds {held} Watch streams without caller "
                "credentials, the most one connection may; watch each service once",
            )
        self.watches[watch_peer] = held + 1
        self.watch_count += 1
        self.open_calls += 1
        return Lease(True, watch_peer)

    def give_back(self, lease: Lease) -> None:
        if not lease.open_call:
            self.calls -= 1
            return
        self.open_calls -= 1
        if lease.watch_peer is not None:
            self.watch_count -= 1
            left = self.watches[lease.watch_peer] - 1
            if left:
                self.watches[lease.watch_peer] = left
            else:
                del self.watches[lease.watch_peer]


class SparseLog:
    """At most one line a second, so a flood of refused calls cannot flood the log."""

    def __init__(self) -> None:
        self._last = 0.0
        self._unlogged = 0

    def refused(self, method: str, reason: str, context: grpc.aio.ServicerContext) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
        self._last, self._unlogged = now, 0
        log.info("refused %s from %s: %s%s", method, context.peer(), reason, more)


class _Read(Wait):
    """One request read in flight: at its deadline, its call's task is cancelled."""

    __slots__ = ("cancelling", "expired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        super().__init__()
        self.task = task
        self.cancelling = task.cancelling()
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()


class Guard:
    """Wraps each method handler so that the wrapper, not grpc, admits the call, takes its
    budget, reads and decodes its request(s), and ends an open stream that went idle.

    Requests are taken as a stream (the same bytes on the wire as a unary request) so that the
    wrapper can give up on a caller that never sends one; with ``request_timeout`` 0 unary
    methods are left to grpc to read (about a quarter less CPU per call; a caller that never
    sends its request then holds its slot until its own deadline).
    """

    def __init__(
        self,
        *,
        max_concurrent_rpcs: int = Settings.max_concurrent_rpcs,
        open_rpcs: int = Settings.open_rpcs,
        request_timeout: float = REQUEST_TIMEOUT,
        stream_idle: float = Settings.stream_idle,
    ) -> None:
        self.budgets = Budgets(max_concurrent_rpcs, open_rpcs)
        self.request_timeout = request_timeout
        # Every read has the same limit: one timer for all (authz.deadlines).
        self._deadlines = Deadlines(request_timeout or REQUEST_TIMEOUT)
        self.stream_idle = stream_idle
        self.log = SparseLog()
        self._methods: dict[str, _Method] = {}  # by name; only registered methods get here
        # (method name, admit) -> (the handler wrapped, its wrapper)
        self._wrapped: dict[tuple[str, Admit], tuple[grpc.RpcMethodHandler, Any]] = {}

    def refusing(self, handler: grpc.RpcMethodHandler, refuse: Refuse) -> grpc.RpcMethodHandler:
        """A handler that refuses at once, without reading the request."""

        async def refused(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await refuse(context)

        return _taking_a_stream(handler, refused)

    def wrap(
        self, handler: grpc.RpcMethodHandler, name: str, admit: Admit
    ) -> grpc.RpcMethodHandler:
        """The same method, with `admit(context)` and the budget first (see the class).

        The wrapper depends only on the method and `admit`, so it is built once for each pair
        and reused for every later call (callers pass the same `admit` for the same caller).
        """
        key = (name, admit)
        wrapped = self._wrapped.get(key)
        if wrapped is not None and wrapped[0] is handler:
            return wrapped[1]
        method = self._methods.get(name)
        if method is None or method.handler is not handler:
            method = self._methods[name] = _Method.of(handler, name)
        if handler.unary_unary is not None and not self.request_timeout:
            built = self._unary_read_by_grpc(method, admit)
        else:
            built = self._guarded(method, admit)
        if len(self._wrapped) >= _MAX_WRAPPED:
            self._wrapped.clear()  # only if `admit`s are not reused: never grow without bound
        self._wrapped[key] = (handler, built)
        return built

    def _guarded(self, method: _Method, admit: Admit) -> grpc.RpcMethodHandler:
        handler = method.handler

        async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            lease = await self._admit(context, method, admit)
            try:
                if lease.open_call and handler.response_streaming:
                    return await self._run_until_idle(method, context)
                return await self._run(method, context, None)
            finally:
                self.budgets.give_back(lease)

        return _taking_a_stream(handler, guarded)

    async def _admit(
        self, context: grpc.aio.ServicerContext, method: _Method, admit: Admit
    ) -> Lease:
        open_call = await admit(context)
        try:
            return self.budgets.take(
                open_call, context.peer() if open_call and method.watch else None
            )
        except Exhausted as full:
            self.log.refused(method.name, full.reason, context)
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, full.message, full.reason)

    async def _run_until_idle(self, method: _Method, context: grpc.aio.ServicerContext) -> None:
        """An open stream: ended once nothing went either way for `stream_idle` seconds."""
        try:
            async with asyncio.timeout(self.stream_idle) as idle:
                await self._run(method, context, idle)
        except TimeoutError:
            if not idle.expired():
                raise
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"this stream sent and received nothing for {self.stream_idle:g} s "
                "(AUTHZ_STREAM_IDLE), so authz ended it; open a new one to go on",
                "STREAM_IDLE",
            )

    async def _run(
        self, method: _Method, context: grpc.aio.ServicerContext, idle: asyncio.Timeout | None
    ) -> Any:
        """Read the request(s), call the handler, and write what it streams back."""
        handler, behaviour = method.handler, method.behaviour
        if handler.request_streaming:
            request = self._each_request(method, context, idle)
        else:
            request = await self._one_request(method, context)
        if not handler.response_streaming:
            if method.coroutine:
                return await behaviour(request, context)
            return await _result(behaviour(request, context))
        if method.writes_itself:
            # A handler that answers with context.write() (e.g. health's Watch).
            await _result(behaviour(request, _Writes(context, idle, self.stream_idle)))
            return None
        async for response in behaviour(request, context):
            await context.write(response)
            _push_back(idle, self.stream_idle)
        return None

    async def _one_request(self, method: _Method, context: grpc.aio.ServicerContext) -> Any:
        task = asyncio.current_task()
        assert task is not None
        read = self._deadlines.add(_Read(task))
        try:
            raw = await context.read()
        except asyncio.CancelledError:
            if read.expired and read.task.uncancel() <= read.cancelling:
                timeout = self._deadlines.seconds
                await abort(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the request message did not arrive within {timeout:g} s of the call "
                    "starting; send it with the call",
                    "REQUEST_TOO_SLOW",
                )
            raise
        finally:
            read.done = True
        if raw is grpc.aio.EOF:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the call ended without a request message",
            )
        try:
            return method.parse(raw)
        except DecodeError:
            await method.refuse_undecodable(context)

    async def _each_request(
        self, method: _Method, context: grpc.aio.ServicerContext, idle: asyncio.Timeout | None
    ) -> AsyncIterator[Any]:
        while (raw := await context.read()) is not grpc.aio.EOF:
            _push_back(idle, self.stream_idle)
            yield await method.decode(raw, context)

    def _unary_read_by_grpc(self, method: _Method, admit: Admit) -> grpc.RpcMethodHandler:
        """AUTHZ_REQUEST_TIMEOUT=0: grpc reads the request (as bytes); the rest is the same."""
        behaviour = method.behaviour

        async def admitted(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            lease = await self._admit(context, method, admit)
            try:
                return await _result(behaviour(await method.decode(raw, context), context))
            finally:
                self.budgets.give_back(lease)

        return grpc.unary_unary_rpc_method_handler(
            admitted, response_serializer=method.handler.response_serializer
        )


@dataclass(frozen=True, slots=True)
class _Method:
    """What the guard needs to know of one method, worked out once when it is first called."""

    name: str  # "/package.Service/Method"
    handler: grpc.RpcMethodHandler  # as registered
    behaviour: Callable[..., Any]  # the handler's own function
    deserializer: Callable[[bytes], Any] | None
    watch: bool  # Health/Watch, whose open streams are counted per connection
    writes_itself: bool  # streams its answers with context.write() rather than by yielding
    coroutine: bool  # an `async def`: awaited directly, without asking each time

    @classmethod
    def of(cls, handler: grpc.RpcMethodHandler, name: str) -> _Method:
        behaviour = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary
        ) or handler.stream_stream
        return cls(
            name,
            handler,
            behaviour,
            handler.request_deserializer,
            watch=name == WATCH_METHOD,
            writes_itself=not inspect.isasyncgenfunction(behaviour),
            coroutine=inspect.iscoroutinefunction(behaviour),
        )

    def parse(self, raw: bytes) -> Any:
        """The request message; DecodeError when the bytes are not one."""
        return raw if self.deserializer is None else self.deserializer(raw)

    async def decode(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """The request message; INVALID_ARGUMENT, in plain words, when it does not decode."""
        try:
            return self.parse(raw)
        except DecodeError:
            await self.refuse_undecodable(context)

    async def refuse_undecodable(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request message for {self.name} is not valid protobuf for that method "
            "(bytes that do not decode, or messages nested deeper than the decoder allows); "
            "send the message your generated client builds",
            "MALFORMED_REQUEST",
        )


class _Writes:
    """The call's context, except that every write also puts the idle deadline back."""

    def __init__(
        self, context: grpc.aio.ServicerContext, idle: asyncio.Timeout | None, seconds: float
    ) -> None:
        self._context = context
        self._idle = idle
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        _push_back(self._idle, self._seconds)


def _push_back(idle: asyncio.Timeout | None, seconds: float) -> None:
    if idle is not None:
        idle.reschedule(asyncio.get_running_loop().time() + seconds)


def _taking_a_stream(
    handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]
) -> grpc.RpcMethodHandler:
    """A handler for the same method that takes its request(s) as a stream of bytes."""
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            behaviour, response_serializer=handler.response_serializer
        )
    return grpc.stream_unary_rpc_method_handler(
        behaviour, response_serializer=handler.response_serializer
    )


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
