"""Several real server processes (`authz serve`) sharing one PostgreSQL database (issue 9).

Three replicas, A, B and C, run for the whole module with AUTHZ_DATABASE_URL set to a fresh schema
of the test run's throwaway database and the Heroku simulator running in this process. A fourth,
D, is started (and SIGKILLed under load) by the test that needs it. Every wait has a deadline and
every process is killed at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import authz
from authz.audit import query, verify
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import register_addon_request
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.errors import error_info
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.heroku_world import SALT, TOKEN_KEY
from tests.load import Load, check_request, shared
from tests.pg import use_backend

SRC = Path(authz.__file__).resolve().parent.parent
ACME = "authz-curved-12345"  # alice owns it; bob and carol are collaborators
GLOBEX = "authz-spherical-67890"  # a team app: erin is an admin
START_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    """One `authz serve` process and stubs on a channel to it."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)
        self.authz = pb_grpc.AuthorizationServiceStub(self.channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def output(self) -> str:
        """The end of the replica's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def wait_until_serving(self, deadline: float) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.name} exited at start:\n{self.output()}")
            try:
                status = self.health.Check(request, timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {self.name} not serving in time:\n{self.output()}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        try:
            self.process.wait(10)
        finally:
            self.channel.close()

    # -- calls ---------------------------------------------------------------------------------

    def provision(self, sim: HerokuSimulator, addon: str) -> str:
        request = register_addon_request(sim, addon)
        return self.admin.RegisterAddon(request, timeout=RPC_TIMEOUT).addon.resource_id

    def exchange(self, form: dict[str, str]) -> session_pb2.ExchangeSsoResponse:
        request = session_pb2.ExchangeSsoRequest(form=form)
        return self.sessions.ExchangeSso(request, timeout=RPC_TIMEOUT)

    def refusal(self, form: dict[str, str]) -> str:
        """The ErrorInfo reason of a refused exchange."""
        try:
            self.exchange(form)
        except grpc.RpcError as exc:
            info = error_info(exc)
            return info.reason if info else f"{exc.code()}: {exc.details()}"
        raise AssertionError(f"replica {self.name} accepted the SSO form")

    def check(self, token: str, action: str, resource_id: str) -> pb.CheckResponse:
        request = pb.CheckRequest(
            session_token=token, action=action, resource=pb.Resource(type="addon", id=resource_id)
        )
        return self.authz.Check(request, timeout=RPC_TIMEOUT)


@dataclass
class Cluster:
    url: str
    sim: HerokuSimulator
    spawn: Callable[[str], Replica]
    a: Replica
    b: Replica
    c: Replica

    def form(self, resource_id: str, handle: str, **kwargs: Any) -> dict[str, str]:
        user = self.sim.user(handle)
        return heroku_sso_form(resource_id, user["id"], user["email"], SALT, **kwargs)


def replica_env(url: str, sim: HerokuSimulator, data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_") and k != "DATABASE_URL"
    }
    env.update(
        PYTHONPATH=str(SRC),
        AUTHZ_DATABASE_URL=url,
        AUTHZ_POLICY_DIR=str(SHIPPED_POLICIES),
        AUTHZ_DATA_DIR=str(data_dir),
        AUTHZ_SSO_SALT=SALT,
        AUTHZ_HEROKU_API_URL=sim.base_url,
        AUTHZ_HEROKU_ID_URL=sim.base_url,
        AUTHZ_HEROKU_CLIENT_SECRET=sim.client_secret,
        AUTHZ_TOKEN_KEY=TOKEN_KEY,
        AUTHZ_AUDIT_MODE="durable",
    )
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    started: list[Replica] = []
    with use_backend("postgresql", root) as backend, HerokuSimulator(load_fixture()) as sim:

        def spawn(name: str) -> Replica:
            data_dir = root / name
            data_dir.mkdir()
            log_path = root / f"{name}.log"
            port = free_port()
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "authz.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                    env=replica_env(backend.target, sim, data_dir),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            replica = Replica(name, process, f"127.0.0.1:{port}", log_path)
            started.append(replica)
            return replica

        try:
            a, b, c = spawn("a"), spawn("b"), spawn("c")  # they start (and migrate) together
            deadline = time.monotonic() + START_TIMEOUT
            for replica in (a, b, c):
                replica.wait_until_serving(deadline)
            yield Cluster(backend.target, sim, spawn, a, b, c)
        finally:
            for replica in started:
                replica.kill()


def test_a_session_issued_by_one_replica_works_on_another_and_revocation_is_immediate(
    cluster: Cluster,
) -> None:
    acme = cluster.a.provision(cluster.sim, ACME)
    token = cluster.a.exchange(cluster.form(acme, "alice")).session_token
    for replica in (cluster.b, cluster.c):
        assert replica.check(token, "dashboard.view", acme).allowed

    revoked = cluster.b.sessions.RevokeSession(
        session_pb2.RevokeSessionRequest(session_token=token), timeout=RPC_TIMEOUT
    )
    assert revoked.revoked
    after = cluster.a.check(token, "dashboard.view", acme)  # no delay: no per-replica cache
    assert not after.allowed
    assert "unknown, expired or revoked" in after.reasons[0]


def test_an_sso_form_is_accepted_once_across_replicas(cluster: Cluster) -> None:
    acme = cluster.a.provision(cluster.sim, ACME)
    form = cluster.form(acme, "bob")
    assert cluster.a.exchange(form).session_token
    assert cluster.b.refusal(form) == "SSO_REPLAYED"
    assert cluster.c.refusal(form) == "SSO_REPLAYED"


def post_at_once(form: dict[str, str], replicas: tuple[Replica, ...]) -> dict[str, str]:
    """Post one form to every replica at the same moment; each one's outcome ("won" or the
    refusal's reason)."""
    barrier = threading.Barrier(len(replicas))
    outcomes: dict[str, str] = {}

    def post(replica: Replica) -> None:
        barrier.wait(RPC_TIMEOUT)
        try:
            outcomes[replica.name] = "won" if replica.exchange(form).session_token else "?"
        except grpc.RpcError as exc:
            info = error_info(exc)
            outcomes[replica.name] = info.reason if info else str(exc.code())

    threads = [threading.Thread(target=post, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * RPC_TIMEOUT)
    return outcomes


def test_one_form_posted_to_replicas_at_once_wins_exactly_once(cluster: Cluster) -> None:
    acme = cluster.a.provision(cluster.sim, ACME)
    earlier = int(time.time()) - 60  # forms no other test has used
    for i in range(6):
        form = cluster.form(acme, ("alice", "bob", "carol")[i % 3], timestamp=earlier - i)
        outcomes = post_at_once(form, (cluster.a, cluster.b, cluster.c))
        assert sorted(outcomes.values()) == ["SSO_REPLAYED", "SSO_REPLAYED", "won"], (i, outcomes)


def test_deprovisioning_through_one_replica_stops_logins_and_sessions_on_the_others(
    cluster: Cluster,
) -> None:
    globex = cluster.a.provision(cluster.sim, GLOBEX)
    token = cluster.b.exchange(cluster.form(globex, "erin")).session_token
    assert cluster.c.check(token, "dashboard.view", globex).allowed

    cluster.a.admin.DeprovisionAddon(
        admin_pb2.DeprovisionAddonRequest(resource_id=globex), timeout=RPC_TIMEOUT
    )
    for replica in (cluster.b, cluster.c):
        assert replica.refusal(cluster.form(globex, "erin")) == "ADDON_DEPROVISIONED"
        after = replica.check(token, "dashboard.view", globex)
        assert not after.allowed
        assert "unknown, expired or revoked" in after.reasons[0]


def replica_load(replica: Replica, callers: int) -> Load:
    """Callers hammering one replica with Checks through its one channel."""
    return Load(
        replica.name,
        lambda: shared(lambda i: replica.authz.Check(check_request(i), timeout=5.0)),
        callers,
    )


def test_sigkill_of_a_replica_under_load_loses_no_answered_decision(cluster: Cluster) -> None:
    d = cluster.spawn("d")
    loads: list[Load] = []
    try:
        d.wait_until_serving(time.monotonic() + START_TIMEOUT)
        victim = replica_load(d, callers=12).start()
        survivors = [
            replica_load(cluster.a, callers=3).start(),
            replica_load(cluster.b, callers=3).start(),
        ]
        loads = [victim, *survivors]
        deadline = time.monotonic() + 30
        victim.wait_for(300, deadline)
        for load in survivors:
            load.wait_for(50, deadline)
        d.process.send_signal(signal.SIGKILL)  # mid-stream: commits and answers in flight
        d.process.wait(10)
        before = [len(load.answered) for load in survivors]
        for load, count in zip(survivors, before, strict=True):
            load.wait_for(count + 100, time.monotonic() + 30)  # the survivors keep answering
    finally:
        for load in loads:
            load.finish()
        d.kill()
    assert victim.errors, "the load did not reach the replica while it was killed"
    for load in survivors:
        assert not load.errors, f"replica {load.replica.name} failed calls: {load.errors[:5]}"

    stored = {r["decision_id"] for r in query(cluster.url, since="1h", limit=None)}
    answered = [i for load in loads for i in load.answered]
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} of {len(answered)} answered decisions are not in the log"
    report = verify(cluster.url)
    assert report.ok, report.message


def test_audit_cli_sees_every_replicas_decisions_and_the_one_chain_verifies(
    cluster: Cluster, tmp_path: Path
) -> None:
    ids = {
        replica.name: replica.authz.Check(check_request(i), timeout=RPC_TIMEOUT).decision_id
        for i, replica in enumerate((cluster.a, cluster.b, cluster.c))
    }
    env = replica_env(cluster.url, cluster.sim, tmp_path / "nowhere")  # no SQLite log there

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "authz.cli", "audit", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("query", "--json", "--limit", "0", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    seen = {json.loads(line)["decision_id"] for line in listed.stdout.splitlines()}
    assert set(ids.values()) <= seen, {name: i in seen for name, i in ids.items()}

    checked = cli("verify")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("audit log OK: ")
    report = verify(cluster.url)
    assert report.ok and report.checked >= len(seen), report.message
    assert report.checked == report.head_seq  # one gapless chain, whichever replica wrote

    shown = cli("show", ids["c"])
    assert shown.returncode == 0, shown.stderr
    assert f"Decision {ids['c']}" in shown.stdout
