"""`authz serve --workers N` (issue 19): N processes on one port, a supervisor that restarts them,
facts coherent across them on SQLite, and one audit chain that loses no answered decision when
workers are SIGKILLed under load.

The servers here are real `authz serve` processes on SQLite, in a session of their own so that the
test can kill the supervisor and its workers together (as a crash or an OOM kill of the dyno
would); every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from authz.audit import query
from authz.clock import system_clock
from authz.config import ConfigError, Settings
from authz.facts.invalidation import AccessInvalidations
from authz.facts.replay import ReplayGuard
from authz.facts.sessions import SessionStore
from authz.policy.holder import PolicyHolder
from authz.server.workers import MAX_WORKERS, available_cores, worker_cores, worker_count
from authz.store import migrate, open_store
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ROOT, SHIPPED_POLICIES
from tests.load import Load, check_request
from tests.served import HTTP, SERVING, clean_env
from tests.test_invalidation import reaches_the_other_replica_not_itself

RPC_TIMEOUT = 10.0
START_TIMEOUT = 60.0


# -- the worker count ---------------------------------------------------------------------------


def test_worker_count_comes_from_the_flag_then_web_concurrency_then_the_cores() -> None:
    assert worker_count("3", {"WEB_CONCURRENCY": "5"}) == 3
    assert worker_count(None, {"WEB_CONCURRENCY": "5"}) == 5
    assert worker_count(None, {}) == min(MAX_WORKERS, available_cores())
    assert worker_count("1", {}) == 1
    for bad in ("0", "-1", "two", "1.5", "", str(MAX_WORKERS + 1)):
        with pytest.raises(ConfigError, match="--workers=.* must be a whole number"):
            worker_count(bad, {})
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY='lots'"):
        worker_count(None, {"WEB_CONCURRENCY": "lots"})


def test_the_cores_are_the_affinity_mask_within_a_cpu_quota(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == mask  # no cpu.max: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == mask
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker run --cpus 1.5
    assert available_cores(tmp_path) == min(mask, 2)
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert available_cores(tmp_path) == 1


def test_each_worker_gets_a_core_of_its_own_when_there_are_enough() -> None:
    assert worker_cores(2, "auto", {0, 1}) == (0, 1)
    assert worker_cores(2, "auto", {7, 3, 5}) == (3, 5)  # the affinity mask's cores, in order
    assert worker_cores(3, "auto", {0, 1}) is None  # more workers than cores: the kernel places
    assert worker_cores(2, "off", {0, 1}) is None
    assert worker_cores(1, "auto", {0, 1}) is None  # one process is never pinned


@pytest.mark.parametrize("value", ["on", "AUTO", "auto ", "1"])
def test_cpu_affinity_takes_exact_values_only(value: str) -> None:
    with pytest.raises(ConfigError, match=f"AUTHZ_CPU_AFFINITY={value!r} is not accepted"):
        Settings.from_env({"AUTHZ_CPU_AFFINITY": value})


def test_serve_refuses_a_bad_worker_count_before_starting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "authz.cli", "serve", "--workers", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(AUTHZ_DATA_DIR=str(tmp_path)),
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--workers='0' must be a whole number of worker processes from 1 to" in done.stderr


# -- coherence through SQLite, between two processes' views -------------------------------------


def test_a_session_revoked_or_a_replay_key_claimed_through_one_worker_holds_on_another(
    tmp_path: Path,
) -> None:
    """Each worker has its own connection to state.db: these facts are read from it per call."""
    path = tmp_path / "state.db"
    a, b = open_store(path), open_store(path)
    try:
        migrate(a)
        sessions_a, sessions_b = SessionStore(a, system_clock), SessionStore(b, system_clock)
        token, _ = sessions_a.issue("user-1", "res-1", "u@example.com", token_kind="sha256")
        assert sessions_b.resolve(token) is not None
        assert sessions_a.revoke(token)
        assert sessions_b.resolve(token) is None
        token, _ = sessions_b.issue("user-2", "res-2", "v@example.com", token_kind="sha256")
        assert sessions_a.revoke_for_resource("res-2") == 1  # deprovisioning on worker A
        assert sessions_b.resolve(token) is None
        now = time.time()
        assert ReplayGuard(a, system_clock).claim("key-1", now + 60)
        assert not ReplayGuard(b, system_clock).claim("key-1", now + 60)
    finally:
        a.close()
        b.close()


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not seen by the other worker in time"
        await asyncio.sleep(0.01)


def test_sqlite_access_invalidation_reaches_the_other_worker_not_itself(tmp_path: Path) -> None:
    asyncio.run(reaches_the_other_replica_not_itself(tmp_path / "state.db"))


def test_a_policy_reload_on_one_worker_reloads_the_others(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    state = tmp_path / "state.db"

    async def scenario() -> None:
        holder_a, holder_b = PolicyHolder.load(policies), PolicyHolder.load(policies)
        bus_a = AccessInvalidations(None, state, policies=holder_a)
        bus_b = AccessInvalidations(None, state, policies=holder_b)
        await bus_a.start()
        await bus_b.start()
        try:
            before = holder_b.current.revision
            edited = policies / "catalogue.yaml"
            edited.write_text(edited.read_text() + "\n# edited\n")
            result = await asyncio.to_thread(holder_a.reload)  # as AdminService does
            assert result.reloaded and result.revision != before
            await until(lambda: holder_b.current.revision == result.revision)
        finally:
            await bus_a.aclose()
            await bus_b.aclose()

    asyncio.run(scenario())


# -- real `authz serve --workers 2` --------------------------------------------------------------


@dataclass
class Supervised:
    process: subprocess.Popen[str]
    address: str
    url: str
    data_dir: Path
    log: Path

    def workers(self) -> set[int]:
        """The worker processes' pids (not multiprocessing's resource tracker)."""
        pids = set()
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.add(int(pid))
        return pids

    def cores(self) -> list[tuple[int, ...]]:
        """The cores each worker's threads may run on, sorted; a worker whose threads differ
        shows up once per distinct mask."""
        masks: set[tuple[int, tuple[int, ...]]] = set()
        for pid in self.workers():
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that just ended
                    masks.add((pid, tuple(sorted(os.sched_getaffinity(int(task.name))))))
        return sorted(mask for _, mask in masks)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (so connections spread over the workers)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


@contextmanager
def supervised(tmp_path: Path, workers: int = 2, **env: str) -> Iterator[Supervised]:
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    command = [
        *(sys.executable, "-m", "authz.cli", "serve", "--workers", str(workers)),
        *("--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
        *("--data-dir", str(data_dir)),
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            cwd=ROOT,
            env=clean_env(**{"AUTHZ_POLICY_DIR": str(SHIPPED_POLICIES), **env}),
            start_new_session=True,  # the test can kill the supervisor and workers together
        )
    try:
        assert process.stdout is not None
        timer = threading.Timer(START_TIMEOUT, process.kill)
        timer.start()
        grpc_line, http_line = process.stdout.readline(), process.stdout.readline()
        timer.cancel()
        grpc_match, http_match = SERVING.match(grpc_line), HTTP.fullmatch(http_line)
        assert grpc_match and http_match, f"did not start: {grpc_line!r}\n{log.read_text()}"
        assert f", {workers} workers)" in grpc_line
        yield Supervised(process, grpc_match.group(1), http_match.group(1), data_dir, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_workers_share_the_ports_are_restarted_reload_together_and_stop_cleanly(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    pinned = worker_cores(2, "auto")  # AUTHZ_CPU_AFFINITY's default, on this machine
    with supervised(tmp_path, AUTHZ_POLICY_DIR=str(policies)) as served:
        first = served.workers()
        assert len(first) == 2
        assert httpx.get(f"{served.url}/healthz", timeout=RPC_TIMEOUT).status_code == 200
        cores = served.cores()
        if pinned is not None:  # every thread of a worker on its core, one core per worker
            assert cores == [(core,) for core in pinned], cores
            assert f"on cores {pinned[0]}, {pinned[1]}" in served.output()

        # A dead worker is replaced, and calls go on being answered.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(served.workers() - {victim}) == 2, "the restarted worker")
        with channel(served.address) as ch:
            stub = pb_grpc.AuthorizationServiceStub(ch)
            wait_for(lambda: _answers(stub), "an answer after the restart")
        # The one that replaced it runs where it ran (once it has started).
        wait_for(lambda: served.cores() == cores, f"the restarted worker on {cores}")

        # A reload through one worker reaches every worker: every new connection sees it.
        edited = policies / "catalogue.yaml"
        edited.write_text(edited.read_text() + "\n# edited\n")
        with channel(served.address) as ch:
            reloaded = admin_pb2_grpc.AdminServiceStub(ch).ReloadPolicies(
                admin_pb2.ReloadPoliciesRequest(), timeout=RPC_TIMEOUT
            )
        assert reloaded.reloaded

        def every_connection_serves_it() -> bool:
            for i in range(8):
                with channel(served.address) as ch:
                    stub = pb_grpc.AuthorizationServiceStub(ch)
                    answer = stub.Check(check_request(i), timeout=RPC_TIMEOUT)
                    if answer.policy_revision != reloaded.policy_revision:
                        return False
            return True

        wait_for(every_connection_serves_it, "every worker on the new revision")

        workers = served.workers()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.output()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def _answers(stub: pb_grpc.AuthorizationServiceStub) -> bool:
    try:
        return bool(stub.Check(check_request(0), timeout=RPC_TIMEOUT).decision_id)
    except grpc.RpcError:
        return False


def workers_load(address: str, callers: int) -> Load:
    """Callers on connections of their own (so they spread over the workers)."""

    @contextmanager
    def connect() -> Iterator[Callable[[int], pb.CheckResponse]]:
        with channel(address) as ch:
            stub = pb_grpc.AuthorizationServiceStub(ch)
            yield lambda i: stub.Check(check_request(i), timeout=RPC_TIMEOUT)

    return Load("workers", connect, callers, join_seconds=RPC_TIMEOUT + 5)


def soon(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def test_sigkill_of_workers_under_load_loses_no_answered_decision(tmp_path: Path) -> None:
    """Durable audit on SQLite: two workers append to one chain; one worker is SIGKILLed mid-
    stream, then the supervisor and every worker at once (a crash of the dyno). Every decision
    a client saw answered is in the log, and `authz audit verify` finds the chain whole."""
    with supervised(tmp_path, AUTHZ_AUDIT_MODE="durable") as served:
        load = workers_load(served.address, callers=8).start()
        try:
            load.wait_for(300, soon())
            os.kill(min(served.workers()), signal.SIGKILL)
            load.wait_for(
                len(load.answered) + 300, soon()
            )  # the other worker and the restarted one
            os.killpg(served.process.pid, signal.SIGKILL)  # everything, mid-stream
            served.process.wait(30)
        finally:
            load.finish()
    assert load.errors, "no call was in flight on a killed worker"

    stored = {r["decision_id"] for r in query(served.data_dir / "audit.db", since="1h", limit=None)}
    missing = set(load.answered) - stored
    assert not missing, f"{len(missing)} of {len(load.answered)} answered decisions are lost"
    verified = subprocess.run(
        [sys.executable, "-m", "authz.cli", "audit", "verify", "--data-dir", str(served.data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_drains_every_worker_and_loses_no_answered_decision(tmp_path: Path) -> None:
    """SIGTERM to the supervisor under load: the workers finish what they answered (all of it
    is in the log), exit, and the supervisor exits 0. (With AUTHZ_CPU_AFFINITY=off: the kernel
    places the workers.)"""
    with supervised(tmp_path, AUTHZ_AUDIT_MODE="durable", AUTHZ_CPU_AFFINITY="off") as served:
        mine = tuple(sorted(os.sched_getaffinity(0)))
        assert served.cores() == [mine, mine]
        load = workers_load(served.address, callers=8).start()
        try:
            load.wait_for(200, soon())
            workers = served.workers()
            served.process.send_signal(signal.SIGTERM)
            assert served.process.wait(60) == 0, served.output()
        finally:
            load.finish()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    stored = {r["decision_id"] for r in query(served.data_dir / "audit.db", since="1h", limit=None)}
    assert set(load.answered) <= stored
    assert "finish their in-flight calls" in served.output()


def test_a_review_login_made_on_one_worker_opens_pages_on_every_worker(tmp_path: Path) -> None:
    """Without AUTHZ_TOKEN_KEY the review cookie's key is the supervisor's secret for its workers:
    a login answered by one worker must hold on connections that reach the other."""
    token = "review-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"compliance {hashlib.sha256(token.encode()).hexdigest()}\n")
    env = {"AUTHZ_CALLER_TOKENS": str(tokens), "AUTHZ_REVIEWERS": "compliance"}
    with supervised(tmp_path, **env) as served:
        login = httpx.post(
            served.url + "/audit/login",
            data={"token": token, "next": "/audit"},
            headers={"Origin": served.url},
            timeout=RPC_TIMEOUT,
        )
        assert login.status_code == 303, login.text
        cookies = dict(login.cookies)
        assert cookies, "the login set no cookie"
        statuses = []
        for _ in range(16):  # a new connection each time: SO_REUSEPORT spreads them
            with httpx.Client(cookies=cookies, timeout=RPC_TIMEOUT) as fresh:
                statuses.append(fresh.get(served.url + "/audit").status_code)
        assert statuses == [200] * 16, served.output()
