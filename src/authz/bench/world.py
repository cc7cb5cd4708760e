"""The end-to-end world: the Heroku simulator in this process, servers in child processes.

``Lab`` starts the simulator (authz.devtools.heroku_sim) on loopback; ``Lab.authz(audit)`` starts
an authz server process wired to it, registers the fixture's add-ons as Heroku's provisioning call
would (with an OAuth grant), logs users in by Heroku SSO and warms the access cache, exactly as a
partner's dashboard would. ``Lab.noop()`` starts the no-op baseline. Every child is stopped by
``close()`` (SIGTERM, then a kill by its own pid if it does not stop in time).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from authz.client import AuthzClient
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import provisioning_fields
from authz.devtools.sso_forms import heroku_sso_form
from authz.v1 import admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc

SALT = "bench-sso-salt-0123456789"
TOKEN_KEY = "bench-token-key-0123456789abcdef0123456789"
ACME = "authz-curved-12345"  # personal app acme-billing: alice owner
GLOBEX = "authz-spherical-67890"  # team app globex-api: erin admin + team admin
CHECK_PATH = "/authz.v1.AuthorizationService/Check"
BATCH_PATH = "/authz.v1.AuthorizationService/CheckBatch"
REQUEST_CONTEXT = {"ip": "203.0.113.7", "user_agent": "partner-dashboard/2.3"}
BATCH_ACTIONS = (
    "dashboard.view",
    "dashboard.configure",
    "addon.read_data",
    "addon.change_plan",
    "account.login_password",
    "account.reset_password",
    "account.change_password",
    "account.change_email",
    "account.add_user",
    "billing.update",
)
BATCH_ALLOWED = (True, True, True, True, False, False, False, False, False, False)


def terminate(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL (of this child only) if it has not stopped within `grace` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_EOF = ""  # what ServerProcess._read queues once the child's output ends (a line has "\n")


class ServerProcess:
    """One `python -m authz.bench.serve` child."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "authz.bench.serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="serve-stdout").start()
        first = self._next_line(timeout=60)
        if not first:
            self.stop()
            raise RuntimeError(
                f"benchmark server did not start; see {log_path}:\n{log_path.read_text()[-2000:]}"
            )
        self.info: dict[str, Any] = json.loads(first)
        self.port: int = int(self.info["port"])
        self.pid: int = self.proc.pid
        self.final: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(_EOF)

    def _next_line(self, timeout: float) -> str | None:
        """The child's next line; _EOF once it closed its output; None after `timeout` s."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> dict[str, Any]:
        """Graceful stop; returns the child's last JSON line (its audit counters)."""
        terminate(self.proc)
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        # Up to the end of its output: it has exited, so that comes at once.
        while line := self._next_line(timeout=5):
            with contextlib.suppress(json.JSONDecodeError):
                self.final = json.loads(line)
        self._log.close()
        return self.final


@dataclass
class AuthzServer:
    process: ServerProcess
    channel: grpc.Channel
    addons: dict[str, str] = field(default_factory=dict)  # fixture name -> resource id
    apps: dict[str, str] = field(default_factory=dict)  # fixture name -> app id
    tokens: dict[str, str] = field(default_factory=dict)  # fixture name -> session token

    @property
    def authz(self) -> pb_grpc.AuthorizationServiceStub:
        return pb_grpc.AuthorizationServiceStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def stop(self) -> dict[str, Any]:
        self.channel.close()
        return self.process.stop()


class Lab:
    """The simulator plus the servers started from it; close() stops everything."""

    def __init__(self, policy_dir: Path) -> None:
        self.policy_dir = policy_dir.resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix="authz-bench-e2e-")
        self.workdir = Path(self._tmp.name)
        self.sim = HerokuSimulator(load_fixture())
        self.sim.start()
        self._servers: list[ServerProcess] = []
        self._count = 0

    def close(self) -> None:
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.sim.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        self._count += 1
        server = ServerProcess(args, self.workdir / f"server-{self._count}.log", env)
        self._servers.append(server)
        return server

    def noop(self, *, intercepted: bool = False, cprofile: str = "") -> ServerProcess:
        args = ["--kind", "noop", *(["--intercepted"] if intercepted else [])]
        return self._spawn([*args, *(["--cprofile", cprofile] if cprofile else [])])

    def authz(self, audit: str, *, cprofile: str = "", extra: tuple[str, ...] = ()) -> AuthzServer:
        """An authz server with ACME and GLOBEX provisioned and alice/erin logged in (warm)."""
        data_dir = self.workdir / f"data-{self._count + 1}"
        process = self._spawn(
            [
                "--kind",
                "authz",
                "--audit",
                audit,
                "--policies",
                str(self.policy_dir),
                "--data-dir",
                str(data_dir),
                "--heroku-url",
                self.sim.base_url,
                "--sso-salt",
                SALT,
                *(["--cprofile", cprofile] if cprofile else []),
                *extra,
            ],
            env={
                "AUTHZ_BENCH_CLIENT_SECRET": self.sim.client_secret,
                "AUTHZ_BENCH_TOKEN_KEY": TOKEN_KEY,
            },
        )
        server = AuthzServer(process, grpc.insecure_channel(process.address))
        grpc.channel_ready_future(server.channel).result(timeout=30)
        # Set up as a partner would, through authz.client; the load itself sends raw frames.
        with AuthzClient(process.address, timeout=30) as partner:
            for name, user in ((ACME, "alice"), (GLOBEX, "erin")):
                addon = partner.register_addon(**provisioning_fields(self.sim, name)).addon
                server.addons[name] = addon.resource_id
                server.apps[name] = addon.app_id
                who = self.sim.user(user)
                form = heroku_sso_form(addon.resource_id, who["id"], who["email"], SALT)
                server.tokens[name] = partner.exchange_sso(form).session_token
                # The login itself fetched the app's access list: the cache is now warm.
        return server


# -- the requests the load generator sends -----------------------------------------------------


def _struct(values: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    out = struct_pb2.Struct()
    out.update(values)
    return out


def check_session(server: AuthzServer, addon: str = ACME) -> pb.CheckRequest:
    """An SSO user (session token) opening the add-on's dashboard: ALLOW."""
    return pb.CheckRequest(
        session_token=server.tokens[addon],
        action="dashboard.view",
        resource=pb.Resource(type="addon", id=server.addons[addon]),
        context=_struct(REQUEST_CONTEXT),
        request_id="bench-session",
    )


def check_direct(server: AuthzServer, addon: str = ACME) -> pb.CheckRequest:
    """A partner service naming itself as the principal: DENY (no rule lets services in)."""
    return pb.CheckRequest(
        principal=pb.Principal(
            type="service", id="billing-worker", attributes=_struct({"team": "payments"})
        ),
        action="addon.read_data",
        resource=pb.Resource(type="addon", id=server.addons[addon]),
        context=_struct(REQUEST_CONTEXT),
        request_id="bench-direct",
    )


def check_batch(server: AuthzServer, addon: str = ACME) -> pb.CheckBatchRequest:
    """An SSO user's dashboard page asking about ten actions at once (4 ALLOW, 6 DENY)."""
    resource = pb.Resource(type="addon", id=server.addons[addon])
    return pb.CheckBatchRequest(
        session_token=server.tokens[addon],
        items=[pb.CheckItem(action=a, resource=resource) for a in BATCH_ACTIONS],
        context=_struct(REQUEST_CONTEXT),
        request_id="bench-batch",
    )


def grpc_frame(message: Any) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as the load generator posts it."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def verify(server_address: str, kind: str, request: Any) -> int:
    """One call with a real gRPC client: the body the load generator sends gets the right answer.

    Returns the size of the reply as it travels (gRPC frame included), so that the load runs can
    check that every reply had a body: a gRPC error has none, and h2load cannot see its status.
    """
    with grpc.insecure_channel(server_address) as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)
        if kind == "batch":
            batch = stub.CheckBatch(request, timeout=10)
            got = tuple(r.allowed for r in batch.results)
            if got != BATCH_ALLOWED:
                raise AssertionError(f"CheckBatch answered {got}, expected {BATCH_ALLOWED}")
            return len(grpc_frame(batch))
        reply = stub.Check(request, timeout=10)
        expected = kind in ("session", "noop")
        if reply.allowed != expected:
            raise AssertionError(f"Check ({kind}) answered {reply}")
        return len(grpc_frame(reply))
