"""The HTTP listener beside gRPC: one process, one event loop, the same callers.

Real servers on 127.0.0.1 ephemeral ports, httpx (and raw sockets where a client misbehaves)
as the client. Besides the shipped routes (/healthz, /readyz), the tests serve a route group of
their own under /probe, with a route for each kind of caller and routes that wait for the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from authz.config import CallerToken, ConfigError, Settings
from authz.server.app import Service, start_service
from authz.server.transport import plan_transport
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from authz.web import health
from authz.web.auth import Access
from authz.web.routing import HttpLimits, RouteGroup, WebParts, request_id, route
from authz.web.server import HttpListener, bind
from tests.conftest import ROOT, LoopThread, Pki

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TOKENS = {"web": "tok-web-0123456789", "ops": "tok-ops-0123456789"}


class Gate:
    """Holds the /probe/slow* requests inside their handlers until the test opens it."""

    def __init__(self) -> None:
        self.inside = 0
        self._opened = threading.Event()

    async def wait(self) -> None:
        self.inside += 1
        while not self._opened.is_set():
            await asyncio.sleep(0.01)

    def wait_inside(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while self.inside < count:
            assert time.monotonic() < deadline, f"{self.inside} of {count} requests arrived"
            time.sleep(0.01)

    def open(self) -> None:
        self._opened.set()


def probe_routes(gate: Gate) -> Callable[[WebParts], RouteGroup]:
    def build(parts: WebParts) -> RouteGroup:
        async def caller(request: Request, caller: str) -> Response:
            return JSONResponse({"caller": caller, "request_id": request_id(request)})

        async def body(request: Request, caller: str) -> Response:
            return JSONResponse({"bytes": len(await request.body())})

        async def slow(request: Request, caller: str) -> Response:
            await gate.wait()
            return JSONResponse({"caller": caller})

        async def broken(request: Request, caller: str) -> Response:
            raise RuntimeError("secret detail of a bug")

        return RouteGroup(
            "probe",
            [
                route("/probe/caller", caller, access=Access.CALLER),
                route("/probe/admin", caller, access=Access.ADMIN),
                route("/probe/body", body, access=Access.OPEN, methods=["POST"]),
                route("/probe/slow", slow, access=Access.OPEN),
                route("/probe/slow-caller", slow, access=Access.CALLER),
                route("/probe/broken", broken, access=Access.OPEN),
            ],
        )

    return build


def plain_routes(parts: WebParts) -> RouteGroup:
    """A group whose protocol answers errors as a plain message string (as AuthZEN does)."""

    async def caller(request: Request, caller: str) -> Response:
        return PlainTextResponse(caller)

    def render(status: int, message: str, headers: Mapping[str, str]) -> Response:
        return PlainTextResponse(message, status_code=status, headers=headers)

    return RouteGroup(
        "plain",
        [route("/plain/caller", caller, access=Access.CALLER)],
        prefix="/plain",
        render_error=render,
    )


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def serve(loop_thread: LoopThread, gate: Gate) -> Iterator[Callable[[Settings], Service]]:
    """serve(settings) → a Service with the HTTP listener on 127.0.0.1:0 and the probe routes."""
    started: list[Service] = []

    def _serve(settings: Settings) -> Service:
        settings = replace(settings, http_listen=settings.http_listen or "127.0.0.1:0")
        routes = (health.routes, probe_routes(gate), plain_routes)
        service = loop_thread.run(start_service(settings, http_routes=routes))
        started.append(service)
        return service

    yield _serve
    gate.open()
    for service in reversed(started):
        loop_thread.run(service.stop(grace=1))


@pytest.fixture
def token_settings(base_settings: Settings) -> Settings:
    return replace(
        base_settings,
        caller_tokens=tuple(CallerToken.of(name, token) for name, token in TOKENS.items()),
        admins=frozenset({"ops"}),
    )


def url(service: Service, path: str) -> str:
    assert service.http is not None
    return service.http.url + path


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code
    return body["error"]


# -- on, off, and beside gRPC ---------------------------------------------------------------------


def test_the_listener_is_off_unless_asked_for(
    loop_thread: LoopThread, base_settings: Settings
) -> None:
    assert Settings.from_env({}).http_listen is None
    service = loop_thread.run(start_service(base_settings))
    try:
        assert service.http is None
    finally:
        loop_thread.run(service.stop(grace=1))


def test_grpc_and_http_answer_from_one_process(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        decision = pb_grpc.AuthorizationServiceStub(channel).Check(
            pb.CheckRequest(
                principal=pb.Principal(type="service", id="web"),
                action="dashboard.view",
                resource=pb.Resource(type="addon", id="res-1"),
            ),
            timeout=5,
        )
    assert decision.decision_id
    live = httpx.get(url(service, "/healthz"))
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = httpx.get(url(service, "/readyz"))
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert ready.json()["checks"]["policies"].startswith(
        f"revision {service.policies.current.revision}"
    )
    assert httpx.head(url(service, "/healthz")).status_code == 200


def test_readyz_says_which_part_is_unusable_and_nothing_more(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    # The audit log's file is gone (a deleted volume, say): decisions cannot be reviewed.
    (base_settings.data_dir / "audit.db").unlink()
    ready = httpx.get(url(service, "/readyz"))
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["checks"]["audit"] == "unusable (the server log says why)"
    assert body["checks"]["store"] == "ok"
    assert str(base_settings.data_dir) not in ready.text
    assert httpx.get(url(service, "/healthz")).status_code == 200  # alive, though not ready


def test_unknown_paths_and_methods_are_answered_in_json(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    missing = httpx.get(url(service, "/nowhere"))
    assert missing.status_code == 404
    assert error_of(missing)["message"] == "nothing is served at /nowhere"
    wrong = httpx.delete(url(service, "/healthz"))
    assert wrong.status_code == 405
    assert "DELETE is not allowed on /healthz" in str(error_of(wrong)["message"])
    assert "GET" in wrong.headers["allow"]


def test_a_failing_handler_says_nothing_of_its_failure(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    failed = httpx.get(url(service, "/probe/broken"), headers={"X-Request-ID": "r-500"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "r-500"
    assert error_of(failed)["message"] == (
        "internal error; the server log has the details (request id r-500)"
    )
    assert "RuntimeError" not in failed.text and "secret" not in failed.text


def test_a_route_group_may_answer_errors_in_its_own_shape(
    serve: Callable[[Settings], Service], token_settings: Settings
) -> None:
    service = serve(token_settings)
    refused = httpx.get(url(service, "/plain/caller"))
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.headers["content-type"].startswith("text/plain")
    assert refused.text.startswith("no caller credentials")
    missing = httpx.get(url(service, "/plain/nothing"))
    assert missing.status_code == 404 and missing.text == "nothing is served at /plain/nothing"
    assert httpx.get(url(service, "/plain/caller"), headers=bearer("web")).text == "web"
    # Elsewhere, the default JSON shape.
    assert error_of(httpx.get(url(service, "/plainly")))["status"] == 404


# -- callers ---------------------------------------------------------------------------------------


def test_bearer_tokens_name_the_caller(
    serve: Callable[[Settings], Service], token_settings: Settings
) -> None:
    service = serve(token_settings)
    for headers, why in (
        ({}, "no caller credentials"),
        ({"Authorization": "Bearer not-a-token"}, "matches no configured caller"),
        ({"Authorization": "Basic d2ViOndlYg=="}, "malformed"),
    ):
        refused = httpx.get(url(service, "/probe/caller"), headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        message = str(error_of(refused)["message"])
        assert why in message
        assert "not-a-token" not in refused.text
    web = httpx.get(url(service, "/probe/caller"), headers=bearer("web"))
    assert web.status_code == 200 and web.json()["caller"] == "web"
    not_admin = httpx.get(url(service, "/probe/admin"), headers=bearer("web"))
    assert not_admin.status_code == 403
    assert "'web' is not one" in str(error_of(not_admin)["message"])
    admin = httpx.get(url(service, "/probe/admin"), headers=bearer("ops"))
    assert admin.status_code == 200 and admin.json()["caller"] == "ops"
    # Open routes ask nobody.
    assert httpx.get(url(service, "/healthz")).status_code == 200


def test_development_mode_callers_are_anonymous(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    for path in ("/probe/caller", "/probe/admin"):
        answer = httpx.get(url(service, path))
        assert answer.status_code == 200 and answer.json()["caller"] == "anonymous"


def https_client(pki: Pki, directory: Path, client: tuple[bytes, bytes] | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    if client is not None:
        key, cert = client
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "client.key").write_bytes(key)
        (directory / "client.crt").write_bytes(cert)
        context.load_cert_chain(directory / "client.crt", directory / "client.key")
    return httpx.Client(verify=context, timeout=5)


@pytest.fixture
def mtls_settings(base_settings: Settings, pki: Pki) -> Settings:
    cert, key = pki.server_files()
    return replace(
        base_settings, tls_cert=cert, tls_key=key, client_ca=pki.ca_path, admins=frozenset({"ops"})
    )


def test_client_certificates_name_the_caller_over_https(
    serve: Callable[[Settings], Service], mtls_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    service = serve(mtls_settings)
    assert service.http is not None and service.http.url.startswith("https://")
    identities = {
        "billing.partner.internal": pki.issue(
            "ignored-cn", dns=("billing.partner.internal",), uris=("spiffe://partner/x",)
        ),
        "spiffe://partner/web": pki.issue("ignored-cn", uris=("spiffe://partner/web",)),
        "ops": pki.issue("ops"),  # no SAN: the subject CN
    }
    for number, (identity, client) in enumerate(identities.items()):
        with https_client(pki, tmp_path / f"c{number}", client) as http:
            answer = http.get(url(service, "/probe/caller"))
            assert answer.status_code == 200 and answer.json()["caller"] == identity
            admin = http.get(url(service, "/probe/admin"))
            assert admin.status_code == (200 if identity == "ops" else 403), identity
    # Without a certificate of the CA there is no connection at all, as over gRPC.
    other_ca = Pki.create(tmp_path / "other", "some other CA")
    for number, client in enumerate((None, other_ca.issue("ops"))):
        with (
            https_client(pki, tmp_path / f"refused{number}", client) as http,
            pytest.raises(httpx.TransportError),
        ):
            http.get(url(service, "/healthz"))


def test_a_whitespace_padded_certificate_name_is_no_identity(
    serve: Callable[[Settings], Service], mtls_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    """Names are compared exactly, over both transports: " ops" is not the admin "ops"."""
    service = serve(mtls_settings)
    padded = {
        "dns": pki.issue("x", dns=(" ops",)),
        "uri": pki.issue("x", uris=("spiffe://partner/ops ",)),
        "cn": pki.issue(" ops "),
    }
    for where, (key, cert) in padded.items():
        with https_client(pki, tmp_path / where, (key, cert)) as http:
            for path in ("/probe/caller", "/probe/admin"):
                refused = http.get(url(service, path))
                assert refused.status_code == 401, (where, path)
                assert "names no caller" in str(error_of(refused)["message"])
        credentials = grpc.ssl_channel_credentials(pki.ca_pem, key, cert)
        with grpc.secure_channel(f"127.0.0.1:{service.port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.AuthorizationServiceStub(channel).Check(
                    pb.CheckRequest(
                        principal=pb.Principal(type="service", id="x"),
                        action="dashboard.view",
                        resource=pb.Resource(type="addon", id="r"),
                    ),
                    timeout=5,
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, where


def test_an_open_bind_needs_caller_credentials(
    loop_thread: LoopThread, base_settings: Settings, tmp_path: Path
) -> None:
    exposed = replace(base_settings, http_listen="0.0.0.0:0")
    with pytest.raises(ConfigError) as caught:
        loop_thread.run(start_service(exposed))
    message = str(caught.value)
    assert "refusing to listen on 0.0.0.0:0 without caller authentication" in message
    assert "AUTHZ_HTTP_LISTEN" in message and "--insecure" in message
    assert not base_settings.data_dir.exists()  # refused before anything was opened
    # What makes it acceptable (checked without binding anything but loopback in tests):
    assert plan_transport(replace(exposed, insecure=True)).admission.authenticates is False
    tokens = (CallerToken.of("web", "t"),)
    assert plan_transport(replace(exposed, caller_tokens=tokens)).admission.authenticates
    with pytest.raises(ConfigError, match="AUTHZ_HTTP_LISTEN='8080' must be host:port"):
        plan_transport(replace(base_settings, http_listen="8080"))


def test_port_is_the_http_listeners_on_heroku() -> None:
    heroku = Settings.from_env({"PORT": "5000"})
    assert heroku.http_listen == "0.0.0.0:5000"
    assert heroku.listen == "127.0.0.1:50051"  # gRPC keeps AUTHZ_LISTEN or its default
    with pytest.raises(ConfigError, match="note that PORT binds 0.0.0.0"):
        plan_transport(heroku)
    explicit = Settings.from_env(
        {"PORT": "5000", "AUTHZ_HTTP_LISTEN": "127.0.0.1:8080", "AUTHZ_LISTEN": "0.0.0.0:50051"}
    )
    assert (explicit.http_listen, explicit.listen) == ("127.0.0.1:8080", "0.0.0.0:50051")
    for env, variable in (
        ({"PORT": "web"}, "PORT='web'"),
        ({"PORT": "70000"}, "PORT='70000'"),
        ({"AUTHZ_HTTP_LISTEN": "localhost"}, "AUTHZ_HTTP_LISTEN='localhost'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(variable)):
            Settings.from_env(env)


# -- limits ----------------------------------------------------------------------------------------


def test_request_bodies_are_capped_at_one_mib(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(base_settings)
    limit = 1 << 20
    with httpx.Client(timeout=10) as http:
        exact = http.post(url(service, "/probe/body"), content=b"x" * limit)
        assert exact.status_code == 200 and exact.json() == {"bytes": limit}
        declared = http.post(url(service, "/probe/body"), content=b"x" * (limit + 1))
        assert declared.status_code == 413
        assert "larger than 1048576 bytes" in str(error_of(declared)["message"])

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(17):
                yield b"y" * 65536

        streamed = http.post(url(service, "/probe/body"), content=chunks())
        assert streamed.status_code == 413
        assert "larger than 1048576 bytes" in str(error_of(streamed)["message"])
        # The connection stays usable.
        assert http.get(url(service, "/healthz")).status_code == 200


def test_open_routes_never_take_the_callers_capacity(
    serve: Callable[[Settings], Service], token_settings: Settings, gate: Gate
) -> None:
    service = serve(replace(token_settings, max_concurrent_rpcs=2))
    open_limit = 32
    with concurrent.futures.ThreadPoolExecutor(open_limit + 2) as pool:
        held = [pool.submit(httpx.get, url(service, "/probe/slow"), timeout=20)]
        held += [
            pool.submit(httpx.get, url(service, "/probe/slow"), timeout=20)
            for _ in range(open_limit - 1)
        ]
        gate.wait_inside(open_limit)
        busy = httpx.get(url(service, "/probe/slow"))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "32 requests in flight on open routes" in str(error_of(busy)["message"])
        # Callers still get in, up to their own limit (AUTHZ_MAX_CONCURRENT_RPCS).
        assert httpx.get(url(service, "/probe/caller"), headers=bearer("web")).status_code == 200
        held += [
            pool.submit(httpx.get, url(service, "/probe/slow-caller"), headers=bearer("web"))
            for _ in range(2)
        ]
        gate.wait_inside(open_limit + 2)
        full = httpx.get(url(service, "/probe/caller"), headers=bearer("web"))
        assert full.status_code == 503
        assert "2 requests in flight on routes for callers" in str(error_of(full)["message"])
        # Refused callers hold nothing, and are refused before any budget is looked at.
        assert httpx.get(url(service, "/probe/caller")).status_code == 401
        gate.open()
        assert [f.result().status_code for f in held] == [200] * (open_limit + 2)
    assert httpx.get(url(service, "/probe/caller"), headers=bearer("web")).status_code == 200


def raw_exchange(service: Service, data: bytes, wait: float = 10) -> bytes:
    """Send `data` on a fresh connection, then read until the server closes it."""
    assert service.http is not None
    with socket.create_connection(("127.0.0.1", service.http.port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_slow_and_malformed_requests_lose_their_connection(
    serve: Callable[[Settings], Service], base_settings: Settings
) -> None:
    service = serve(replace(base_settings, request_timeout=1.0))
    # Headers that never end, and a body that never comes: closed, the latter with a 408.
    assert raw_exchange(service, b"GET /healthz HTTP/1.1\r\nHost: t\r\n") == b""
    assert raw_exchange(service, b"") == b""
    late = raw_exchange(
        service, b"POST /probe/body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab"
    )
    assert late.startswith(b"HTTP/1.1 408 ")
    assert b'"the request did not arrive within 1 s' in late
    # Not HTTP, and a head that grows beyond 16 KiB before it ends: 400 in the JSON shape.
    for data in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (17 << 10),
    ):
        answer = raw_exchange(service, data)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["status"] == 400 and "16384 bytes" in body["error"]["message"]
    # A whole head over 16 KiB that arrives at once: 431.
    big = httpx.get(url(service, "/healthz"), headers={"X-Big": "a" * (17 << 10)})
    assert big.status_code == 431 and "16384 bytes" in str(error_of(big)["message"])


def test_the_request_id_is_echoed_and_handlers_see_it(
    serve: Callable[[Settings], Service], token_settings: Settings
) -> None:
    service = serve(token_settings)
    sent = httpx.get(
        url(service, "/probe/caller"), headers={**bearer("web"), "X-Request-ID": "req-42"}
    )
    assert sent.headers["x-request-id"] == "req-42" and sent.json()["request_id"] == "req-42"
    made = [httpx.get(url(service, "/probe/caller"), headers=bearer("web")) for _ in range(2)]
    for answer in made:
        assert UUID.fullmatch(answer.headers["x-request-id"])
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    assert made[0].headers["x-request-id"] != made[1].headers["x-request-id"]
    # Every answer carries it, errors too.
    for answer in (
        httpx.get(url(service, "/probe/caller"), headers={"X-Request-ID": "r-401"}),
        httpx.get(url(service, "/nowhere"), headers={"X-Request-ID": "r-404"}),
        httpx.post(
            url(service, "/probe/body"), content=b"x" * (2 << 20), headers={"X-Request-ID": "r-413"}
        ),
    ):
        assert answer.headers["x-request-id"] == f"r-{answer.status_code}"
    too_long = httpx.get(url(service, "/healthz"), headers={"X-Request-ID": "r" * 257})
    assert too_long.status_code == 400 and "X-Request-ID" in str(error_of(too_long)["message"])
    two = httpx.get(
        url(service, "/healthz"), headers=[("X-Request-ID", "a"), ("X-Request-ID", "b")]
    )
    assert two.status_code == 400


def test_stopping_finishes_requests_in_flight(
    loop_thread: LoopThread, base_settings: Settings, gate: Gate
) -> None:
    settings = replace(base_settings, http_listen="127.0.0.1:0")
    service = loop_thread.run(
        start_service(settings, http_routes=(health.routes, probe_routes(gate)))
    )
    slow_url = url(service, "/probe/slow")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.get, slow_url, timeout=20)
        gate.wait_inside(1)
        stopping = asyncio.run_coroutine_threadsafe(service.stop(grace=20), loop_thread.loop)
        deadline = time.monotonic() + 10
        while True:  # the listener takes no new connections...
            try:
                httpx.get(url(service, "/healthz"), timeout=1)
            except httpx.ConnectError:
                break
            assert time.monotonic() < deadline, "the listener still takes connections"
            time.sleep(0.05)
        assert not stopping.done()  # ...but waits for the request in flight
        gate.open()
        stopping.result(timeout=20)
        answer = in_flight.result()
    assert answer.status_code == 200 and answer.json() == {"caller": "anonymous"}


def test_authz_serve_runs_both_listeners_and_stops_on_sigterm(tmp_path: Path) -> None:
    """uvicorn runs in authz's loop without taking SIGTERM from authz's own handler."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_") and k != "PORT"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authz.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=clean,
    )
    try:
        assert process.stdout is not None
        grpc_line = process.stdout.readline()
        http_line = process.stdout.readline()
        assert grpc_line.startswith("authz serving on 127.0.0.1:"), grpc_line
        match = re.fullmatch(r"authz HTTP listener on (http://127\.0\.0\.1:\d+)\n", http_line)
        assert match, http_line
        assert httpx.get(match.group(1) + "/healthz", timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "shutting down: finishing in-flight calls" in stderr


def test_open_connections_are_bounded(loop_thread: LoopThread, base_settings: Settings) -> None:
    async def hello(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    settings = replace(base_settings, http_listen="127.0.0.1:0")
    listener = HttpListener(hello, settings, HttpLimits(max_connections=2))
    loop_thread.run(listener.start())
    request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    try:
        held = [socket.create_connection(("127.0.0.1", listener.port), timeout=5) for _ in "ab"]
        for sock in held:  # answered, and kept open
            sock.sendall(request)
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as third:
            assert third.recv(1024) == b""  # closed at once, long before any timeout
        held.pop().close()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as again:
            again.sendall(request)
            assert again.recv(1024).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()
    finally:
        loop_thread.run(listener.stop(grace=1))


def test_answers_are_sent_at_once_on_asyncios_loop_too(
    loop_thread: LoopThread, base_settings: Settings
) -> None:
    """Nagle's algorithm is off on every connection (TCP_NODELAY), on asyncio's own loop (which
    these tests run) as on uvloop: with it on, an answer's body waited for the client's delayed
    ACK, about 40 ms per request on a keep-alive connection (AUTHZ_EVENT_LOOP=asyncio)."""

    async def hello(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    settings = replace(base_settings, http_listen="127.0.0.1:0")
    listener = HttpListener(hello, settings, HttpLimits())
    loop_thread.run(listener.start())
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}") as client:
            assert client.get("/").text == "hello"
            connections = list(listener._server.server_state.connections)
            assert len(connections) == 1
            sock = connections[0].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        loop_thread.run(listener.stop(grace=1))


@pytest.mark.parametrize("age", [1.0, 0.0])
def test_a_connection_past_its_age_is_closed_by_an_answer_that_says_so(
    loop_thread: LoopThread, base_settings: Settings, age: float
) -> None:
    """AUTHZ_MAX_CONNECTION_AGE over HTTP/1.1: the first answer on a connection past its age
    (±10 %) says `Connection: close` and the connection closes after it, so a keep-alive client
    opens another (which the kernel may place on another worker) and loses no request; with 0 one
    connection serves them all."""

    async def client_port(scope: dict, receive: Callable, send: Callable) -> None:
        body = str(scope["client"][1]).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    settings = replace(base_settings, http_listen="127.0.0.1:0")
    listener = HttpListener(client_port, settings, HttpLimits(max_connection_age=age))
    loop_thread.run(listener.start())
    ports: list[str] = []
    closing = 0
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}") as client:
            # With an age: until the third connection, within a deadline well past two ages.
            # Without: longer than two ages would have taken.
            until = time.monotonic() + (15.0 if age else 2.7)
            while time.monotonic() < until:
                answer = client.get("/")  # any lost request raises here
                assert answer.status_code == 200
                ports.append(answer.text)
                closing += answer.headers.get("connection") == "close"
                if age and len(set(ports)) >= 3:
                    break
    finally:
        loop_thread.run(listener.stop(grace=1))
    connections = len(set(ports))
    assert len(ports) > 100
    if age:
        assert connections >= 3 and closing == connections - 1, (connections, closing)
    else:
        assert (connections, closing) == (1, 0)


def test_the_socket_can_be_shared_by_workers_when_asked() -> None:
    first = bind("127.0.0.1:0", reuse_port=True)
    try:
        address = f"127.0.0.1:{first.getsockname()[1]}"
        bind(address, reuse_port=True).close()  # SO_REUSEPORT: a second worker's socket
        with pytest.raises(OSError, match=f"cannot listen on {address} for HTTP"):
            bind(address)
    finally:
        first.close()
