"""Issue 12 item 2: what anyone who can reach the port may open cannot starve the callers.

Health checking (and reflection, without caller credentials) answers without credentials. These
tests flood it from another process over real connections (tests/flood.py) and check that
authenticated callers keep being answered, that Watch streams are capped per connection and
overall and end when idle, and that reflection needs credentials once callers have them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz.config import CallerToken, ConfigError, Settings
from authz.server.errors import error_info
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ROOT, RunningService, with_bearer

TOKEN = "web-token-for-the-open-endpoint-tests"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def token_settings(base_settings: Settings) -> Settings:
    return replace(base_settings, caller_tokens=(CallerToken.of("web", TOKEN),))


def bearer() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKEN}"),)


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)
    return info.reason if info is not None else ""


def check_request() -> pb.CheckRequest:
    return pb.CheckRequest(
        principal=pb.Principal(type="service", id="x"),
        action="dashboard.view",
        resource=pb.Resource(type="addon", id="r"),
    )


class Flood:
    """tests/flood.py in a subprocess; `ready` is its first report."""

    def __init__(self, address: str, **options: int) -> None:
        args = [f"--{name}={value}" for name, value in options.items()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.flood", address, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the flood ended early (exit {self.process.wait(10)})"
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> dict[str, Any]:
        """Close its stdin (it then lets go of everything) and return its last report."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        last = self.process.stdout.readline()
        self.process.wait(30)
        return json.loads(last) if last else {}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def flood() -> Iterator[Callable[..., Flood]]:
    started: list[Flood] = []

    def _flood(address: str, **options: int) -> Flood:
        started.append(Flood(address, **options))
        return started[-1]

    yield _flood
    for each in started:
        each.kill()


def test_a_watch_and_reflection_flood_cannot_starve_authenticated_callers(
    start: Callable[..., RunningService],
    token_settings: Settings,
    flood: Callable[..., Flood],
) -> None:
    """1,100 Watch streams without credentials over 100 connections, plus 20 clients opening
    reflection streams over and over: an authenticated Check still answers in under 100 ms (the
    bound issue 12 asks for: the slowest of five calls while the flood is held)."""
    svc = start(token_settings)
    with with_bearer(grpc.insecure_channel(svc.address), TOKEN) as channel:
        authz = pb_grpc.AuthorizationServiceStub(channel)
        authz.Check(check_request(), timeout=5)  # the connection is up before the flood
        attack = flood(svc.address, watches=1100, connections=100, reflectors=20)
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            authz.Check(check_request(), timeout=5)
            latencies.append(time.perf_counter() - started)
        # A load balancer's probe (no credentials) is answered too.
        probe = health_pb2_grpc.HealthStub(svc.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        last = attack.stop()
    print(f"authenticated Check under the flood (ms): {[round(t * 1000, 1) for t in latencies]}")
    assert max(latencies) < 0.100, latencies
    assert probe.status == SERVING
    # Of the Watch streams, exactly the cap (half of AUTHZ_OPEN_RPCS) is held; the rest were
    # refused at once. (An aio client now and then reports a call refused before its request was
    # read as CANCELLED; the old code's refusals show the same.)
    watch = attack.ready["watch"]
    assert sum(watch.values()) == 1100
    assert watch.get("held") == token_settings.open_rpcs // 2, watch
    assert set(watch) <= {"held", "RESOURCE_EXHAUSTED", "CANCELLED"}, watch
    assert watch["RESOURCE_EXHAUSTED"] > 1000, watch
    # Reflection needs credentials once callers have them: not one stream was served. (INTERNAL
    # is the aio client's own report when its write loses the race with the refusal.)
    reflection = last["reflection"]
    assert "held" not in reflection, reflection
    assert set(reflection) <= {"UNAUTHENTICATED", "INTERNAL", "CANCELLED"}, reflection
    assert reflection["UNAUTHENTICATED"] >= 20, reflection


# -- the two budgets ------------------------------------------------------------------------------


def connection(svc: RunningService, token: str | None = None) -> grpc.Channel:
    """A channel with a connection of its own (no subchannel shared with other channels)."""
    channel = grpc.insecure_channel(svc.address, options=[("grpc.use_local_subchannel_pool", 1)])
    return with_bearer(channel, token) if token else channel


class Stuck:
    """`n` calls to `path` whose request never comes (the client streams nothing)."""

    def __init__(self, channel: grpc.Channel, path: str, n: int, metadata: Any = ()) -> None:
        self.release = threading.Event()
        method = channel.stream_unary(path, request_serializer=bytes, response_deserializer=bytes)
        self.calls = [
            method.future(self._nothing(), metadata=metadata, timeout=30) for _ in range(n)
        ]

    def _nothing(self) -> Iterator[bytes]:
        self.release.wait(30)
        yield from ()

    def settled(self) -> Stuck:
        """Give the server a moment to admit every call before anything competes with them
        for the same budget: a call of the test's that took a slot first would have one of
        these refused, and the budget would then never fill."""
        time.sleep(0.5)
        assert all(call.running() for call in self.calls), "a stuck call was refused"
        return self

    def end(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def eventually_refused(call: Callable[[], object], code: grpc.StatusCode) -> grpc.RpcError:
    """The stuck calls are admitted a moment after they start: wait (at most 5 s) for that."""
    deadline = time.monotonic() + 5
    while True:
        try:
            call()
        except grpc.RpcError as error:
            if error.code() == code or time.monotonic() > deadline:
                return error
        if time.monotonic() > deadline:
            pytest.fail(f"never refused with {code}")
        time.sleep(0.05)


def test_callers_and_open_calls_have_budgets_of_their_own(
    start: Callable[..., RunningService], token_settings: Settings
) -> None:
    svc = start(token_settings, max_concurrent_rpcs=4, open_rpcs=4)
    probe = health_pb2_grpc.HealthStub(svc.channel)
    with connection(svc, TOKEN) as authenticated:
        authz = pb_grpc.AuthorizationServiceStub(authenticated)
        # Callers fill their budget: the next caller is refused, probes are still answered.
        held = Stuck(svc.channel, "/authz.v1.AuthorizationService/Check", 4, bearer()).settled()
        full = eventually_refused(
            lambda: authz.Check(check_request(), timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "AUTHZ_MAX_CONCURRENT_RPCS" in (full.details() or "")
        assert reason(full) == "TOO_MANY_CALLS"
        assert probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        held.end()
        # Calls without credentials fill theirs: callers are still answered, and so is a
        # health check that carries a caller's credentials.
        held = Stuck(svc.channel, "/grpc.health.v1.Health/Check", 4).settled()
        full = eventually_refused(
            lambda: probe.Check(health_pb2.HealthCheckRequest(), timeout=5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "AUTHZ_OPEN_RPCS" in (full.details() or "")
        assert reason(full) == "TOO_MANY_OPEN_CALLS"
        # (The callers' slots held above come back a moment after those calls were cancelled.)
        assert not eventually_answered(lambda: authz.Check(check_request(), timeout=5)).allowed
        status = health_pb2_grpc.HealthStub(authenticated).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert status.status == SERVING
        held.end()
    # The server learns of the cancelled calls a moment later, then gives their slots back.
    answer = eventually_answered(lambda: probe.Check(health_pb2.HealthCheckRequest(), timeout=5))
    assert answer.status == SERVING


def test_watch_streams_are_capped_per_connection_and_overall(
    start: Callable[..., RunningService], token_settings: Settings
) -> None:
    svc = start(token_settings, open_rpcs=8)  # at most 4 open Watch streams
    channels = [connection(svc) for _ in range(3)]

    def watch(channel: grpc.Channel) -> Any:
        return health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=30
        )

    first = [watch(channels[0]) for _ in range(2)]
    assert all(next(call).status == SERVING for call in first)
    error = refused(lambda: next(watch(channels[0])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "this connection already holds 2 Watch streams" in (error.details() or "")
    assert reason(error) == "TOO_MANY_WATCH_STREAMS"
    second = [watch(channels[1]) for _ in range(2)]
    assert all(next(call).status == SERVING for call in second)
    error = refused(lambda: next(watch(channels[2])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already holds 4 Watch streams without caller credentials" in (error.details() or "")
    # The other half of the open budget is for Check, so probes are still answered...
    probe = health_pb2_grpc.HealthStub(channels[2]).Check(health_pb2.HealthCheckRequest())
    assert probe.status == SERVING
    # ...and a caller's Watch (gRPC client-side health checking sends the channel's call
    # credentials) is the caller's, not an open stream.
    with connection(svc, TOKEN) as authenticated:
        own = watch(authenticated)
        assert next(own).status == SERVING
        own.cancel()
    # An open stream that ends gives its place back.
    first[0].cancel()
    later = eventually_served(lambda: watch(channels[2]))
    for call in (*first, *second, later):
        call.cancel()
    for channel in channels:
        channel.close()


def eventually_answered(call: Callable[[], Any]) -> Any:
    """A call refused for want of a slot is answered once freed slots come back (at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def eventually_served(open_watch: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + 5
    while True:
        call = open_watch()
        try:
            assert next(call).status == SERVING
            return call
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_idle_open_streams_are_ended(
    start: Callable[..., RunningService], token_settings: Settings
) -> None:
    svc = start(token_settings, stream_idle=2.0)
    health = svc.service.health

    def set_status(status: int) -> None:
        svc.loop.run(health.set("", status))

    open_watch = health_pb2_grpc.HealthStub(svc.channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=30
    )
    with connection(svc, TOKEN) as authenticated:
        own_watch = health_pb2_grpc.HealthStub(authenticated).Watch(
            health_pb2.HealthCheckRequest(), timeout=30
        )
        assert next(open_watch).status == SERVING and next(own_watch).status == SERVING
        started = time.monotonic()
        # While statuses keep coming (each within 2 s of the last), the stream stays open.
        for status in (NOT_SERVING, SERVING, NOT_SERVING):
            time.sleep(1.0)
            set_status(status)
            assert next(open_watch).status == status
            assert next(own_watch).status == status
        assert time.monotonic() - started > 3.0  # longer than the idle time, in all
        # Then nothing for 2 s: the open stream ends, saying why and what to do.
        error = refused(lambda: next(open_watch))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(error) == "STREAM_IDLE"
        assert "AUTHZ_STREAM_IDLE" in (error.details() or "")
        # The caller's own stream is not an open one: it is still there.
        set_status(SERVING)
        assert next(own_watch).status == SERVING
        own_watch.cancel()


def test_reflection_is_open_only_in_development_mode(
    start: Callable[..., RunningService], token_settings: Settings, base_settings: Settings
) -> None:
    def services(channel: grpc.Channel, metadata: Any = ()) -> set[str]:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata,
            timeout=5,
        )
        return {s.name for s in next(iter(replies)).list_services_response.service}

    svc = start(token_settings)
    error = refused(lambda: services(svc.channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in (error.details() or "")
    assert "authz.v1.AuthorizationService" in services(svc.channel, bearer())
    # Development mode (no caller credentials): open, as an open call that ends when idle.
    dev = start(base_settings, stream_idle=1.0)
    assert "authz.v1.AuthorizationService" in services(dev.channel)
    release = threading.Event()

    def one_then_wait() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(30)  # the request stream stays open, with nothing more on it

    stream = reflection_pb2_grpc.ServerReflectionStub(dev.channel).ServerReflectionInfo(
        one_then_wait(), timeout=30
    )
    assert next(stream).list_services_response.service
    error = refused(lambda: next(stream))
    release.set()
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STREAM_IDLE"


@pytest.mark.parametrize(
    "env",
    [
        {"AUTHZ_OPEN_RPCS": "0"},
        {"AUTHZ_OPEN_RPCS": "lots"},
        {"AUTHZ_STREAM_IDLE": "0"},
        {"AUTHZ_STREAM_IDLE": "7200"},
        {"AUTHZ_STREAM_IDLE": "soon"},
    ],
)
def test_open_budget_settings_take_only_documented_values(env: dict[str, str]) -> None:
    [(name, value)] = env.items()
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert name in str(caught.value) and value in str(caught.value)


def test_open_budget_settings_are_read() -> None:
    assert (Settings().open_rpcs, Settings().stream_idle) == (64, 120.0)
    settings = Settings.from_env({"AUTHZ_OPEN_RPCS": "16", "AUTHZ_STREAM_IDLE": "30"})
    assert (settings.open_rpcs, settings.stream_idle) == (16, 30.0)
