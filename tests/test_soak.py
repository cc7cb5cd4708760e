"""Issue 8, soak: bounded concurrent load on loopback, with a policy reload and a Heroku fault.

50 asynchronous clients (AUTHZ_SOAK_CLIENTS) call one server for AUTHZ_SOAK_SECONDS (default 10),
each mixing valid and invalid Check and CheckBatch calls (direct principals and SSO sessions),
SSO exchanges (good, forged and strangers), session revocations, calls without or with wrong
caller credentials and non-admin AdminService calls. Meanwhile a coordinator adds a policy file
and calls AdminService.ReloadPolicies at 30 % of the run, makes Heroku's app endpoints fail
(HTTP 503) from 50 % to 65 %, and samples the process's resident memory.

At the end: no call ended with a status its operation does not expect, the server logged no
error, every decision id handed out (in answers, and in ErrorInfo for refused logins) is in the
audit log exactly once and the log holds no other, memory did not keep growing, and the server
still logs users in once Heroku is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.audit.query import query
from authz.config import CallerToken, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.sso_forms import heroku_sso_form
from authz.server.errors import error_info
from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES, LoopThread, RecordingHandler, RunningService
from tests.heroku_world import SALT, world_settings

SECONDS = float(os.environ.get("AUTHZ_SOAK_SECONDS", "10"))
CLIENTS = int(os.environ.get("AUTHZ_SOAK_CLIENTS", "50"))
CHANNELS = 10
MEMORY_GROWTH_LIMIT = 64 << 20  # bytes between the first and the second half's medians

WEB, OPS = "soak-web-token-0123456789abcdef", "soak-ops-token-0123456789abcdef"
ADDONS = {
    "authz-curved-12345": ("alice", "bob", "carol"),
    "authz-spherical-67890": ("erin", "grace"),
}
STRANGERS = ("mallory", "dave", "frank")
Code = grpc.StatusCode
OK, INVALID, DENIED = Code.OK, Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED

SOAK_POLICY = """
name: soak-reload
description: Added while the soak runs, to reload a changed policy set under load.
rules:
  - id: soak-added-rule
    effect: deny
    actions: [billing.update]
    reason: Added by the soak test
"""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Tally:
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    decision_ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (token, resource id)
    events: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)


class Soak:
    def __init__(
        self, address: str, sim: HerokuSimulator, policy_dir: Path, addon_ids: dict[str, str]
    ) -> None:
        self.address = address
        self.sim = sim
        self.policy_dir = policy_dir
        self.addons = addon_ids  # name -> resource id
        self.tally = Tally()
        self.channels: list[grpc.aio.Channel] = []

    async def call(
        self, op: str, expected: tuple[Code, ...], coro: Any
    ) -> tuple[Code, Any, grpc.RpcError | None]:
        started = time.perf_counter()
        try:
            result, code, error = await coro, OK, None
        except grpc.RpcError as exc:
            result, code, error = None, exc.code(), exc
        self.tally.latencies.append(time.perf_counter() - started)
        info = error_info(error) if error is not None else None
        self.tally.calls[(op, code.name + (f" {info.reason}" if info and info.reason else ""))] += 1
        if code not in expected:
            details = error.details() if error is not None else ""
            self.tally.unexpected.append(f"{op}: {code.name} {details}")
        return code, result, error

    def refused_decision(self, error: grpc.RpcError | None) -> None:
        info = error_info(error) if error is not None else None
        if info is not None and info.metadata.get("decision_id"):
            self.tally.decision_ids.append(info.metadata["decision_id"])

    # -- what one client does ---------------------------------------------------------------

    async def client(self, number: int, until: float) -> None:
        rng = random.Random(number)
        channel = self.channels[number % len(self.channels)]
        authz = pb_grpc.AuthorizationServiceStub(channel)
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        ops = [
            (30, self.check_session),
            (14, self.check_direct),
            (8, self.check_invalid),
            (10, self.batch),
            (4, self.batch_invalid),
            (10, self.sso_login),
            (6, self.sso_bad),
            (6, self.unauthenticated),
            (3, self.revoke),
            (3, self.not_admin),
            (6, self.status),
        ]
        weights = [w for w, _ in ops]
        while time.monotonic() < until:
            [(_, op)] = rng.choices(ops, weights)
            await op(rng, authz, sessions, admin)

    def resource(self, rng: random.Random) -> pb.Resource:
        return pb.Resource(type="addon", id=rng.choice(list(self.addons.values())))

    async def check_session(self, rng: random.Random, authz: Any, *_: Any) -> None:
        if not self.tally.sessions:
            return
        token, resource_id = rng.choice(self.tally.sessions)
        action = rng.choice(["dashboard.view", "dashboard.configure", "account.change_password"])
        request = pb.CheckRequest(
            session_token=token, action=action, resource=pb.Resource(type="addon", id=resource_id)
        )
        code, response, _ = await self.call(
            "check session", (OK,), authz.Check(request, metadata=bearer(WEB), timeout=20)
        )
        if code == OK:
            self.tally.decision_ids.append(response.decision_id)

    async def check_direct(self, rng: random.Random, authz: Any, *_: Any) -> None:
        request = pb.CheckRequest(
            principal=pb.Principal(type=rng.choice(["service", "heroku_user"]), id="p1"),
            action=rng.choice(["dashboard.view", "billing.update", "addon.read_data"]),
            resource=self.resource(rng),
        )
        request.context.update({"attempt": rng.random(), "note": "true || x"})
        code, response, _ = await self.call(
            "check direct", (OK,), authz.Check(request, metadata=bearer(WEB), timeout=20)
        )
        if code == OK:
            self.tally.decision_ids.append(response.decision_id)
            if response.allowed:
                self.tally.unexpected.append("check direct: ALLOW for a direct principal")

    async def check_invalid(self, rng: random.Random, authz: Any, *_: Any) -> None:
        request = pb.CheckRequest(principal=pb.Principal(type="service", id="p1"), action="a")
        kind = rng.randrange(3)
        if kind == 1:
            request.resource.CopyFrom(self.resource(rng))
            request.action = ""
        elif kind == 2:
            request.resource.CopyFrom(self.resource(rng))
            request.context.update({"deep": [[[[[[[[[[["x"]]]]]]]]]]]})
        await self.call(
            "check invalid", (INVALID,), authz.Check(request, metadata=bearer(WEB), timeout=20)
        )

    async def batch(self, rng: random.Random, authz: Any, *_: Any) -> None:
        request = pb.CheckBatchRequest(
            items=[
                pb.CheckItem(
                    action=rng.choice(["dashboard.view", "addon.read_data"]),
                    resource=self.resource(rng),
                )
                for _ in range(rng.randint(1, 10))
            ]
        )
        if self.tally.sessions and rng.random() < 0.7:
            request.session_token = rng.choice(self.tally.sessions)[0]
        else:
            request.principal.CopyFrom(pb.Principal(type="service", id="p2"))
        code, response, _ = await self.call(
            "batch", (OK,), authz.CheckBatch(request, metadata=bearer(WEB), timeout=20)
        )
        if code == OK:
            self.tally.decision_ids.extend(r.decision_id for r in response.results)

    async def batch_invalid(self, rng: random.Random, authz: Any, *_: Any) -> None:
        item = pb.CheckItem(action="dashboard.view", resource=self.resource(rng))
        request = pb.CheckBatchRequest(
            principal=pb.Principal(type="service", id="p3"), items=[item] * 101
        )
        await self.call(
            "batch invalid", (INVALID,), authz.CheckBatch(request, metadata=bearer(WEB), timeout=20)
        )

    def form(
        self, rng: random.Random, handles: tuple[str, ...], addon: str = ""
    ) -> tuple[dict[str, str], str]:
        name = addon or rng.choice(list(self.addons))
        user = self.sim.user(rng.choice(handles or ADDONS[name]))
        resource_id = self.addons[name]
        # Forms signed up to 4 minutes ago (as a slow browser would post them), so that two
        # clients rarely post the same form; when they do, the second is a replay.
        signed_at = int(time.time()) - rng.randrange(240)
        form = heroku_sso_form(resource_id, user["id"], user["email"], SALT, timestamp=signed_at)
        return form, resource_id

    async def sso_login(self, rng: random.Random, _: Any, sessions: Any, *__: Any) -> None:
        form, resource_id = self.form(rng, ())
        code, response, error = await self.call(
            "sso login",
            (OK, DENIED),  # denied: a replayed form, or Heroku failing (LOGIN_DENIED)
            sessions.ExchangeSso(
                session_pb2.ExchangeSsoRequest(form=form), metadata=bearer(WEB), timeout=20
            ),
        )
        if code == OK:
            self.tally.decision_ids.append(response.decision_id)
            self.tally.sessions.append((response.session_token, resource_id))
        else:
            self.refused_decision(error)

    async def sso_bad(self, rng: random.Random, _: Any, sessions: Any, *__: Any) -> None:
        kind = rng.randrange(3)
        form, _resource = self.form(rng, STRANGERS if kind == 0 else ())
        if kind == 1:
            form["user_scoped_resource_token"] = f"{rng.getrandbits(256):064x}"
        elif kind == 2:
            del form["timestamp"]
        code, _, error = await self.call(
            "sso bad",
            (DENIED, INVALID),
            sessions.ExchangeSso(
                session_pb2.ExchangeSsoRequest(form=form), metadata=bearer(WEB), timeout=20
            ),
        )
        self.refused_decision(error)

    async def unauthenticated(self, rng: random.Random, authz: Any, *_: Any) -> None:
        metadata = rng.choice([(), bearer("wrong"), (("authorization", "Basic x"),)])
        request = pb.CheckRequest(
            principal=pb.Principal(type="service", id="p4"),
            action="dashboard.view",
            resource=self.resource(rng),
        )
        await self.call(
            "unauthenticated",
            (Code.UNAUTHENTICATED,),
            authz.Check(request, metadata=metadata, timeout=20),
        )

    async def revoke(self, rng: random.Random, _: Any, sessions: Any, *__: Any) -> None:
        if not self.tally.sessions:
            return
        token, _resource = rng.choice(self.tally.sessions)
        await self.call(
            "revoke",
            (OK,),
            sessions.RevokeSession(
                session_pb2.RevokeSessionRequest(session_token=token),
                metadata=bearer(WEB),
                timeout=20,
            ),
        )

    async def not_admin(self, rng: random.Random, _: Any, __: Any, admin: Any) -> None:
        await self.call(
            "admin as web",
            (DENIED,),
            admin.GetPolicyStatus(
                admin_pb2.GetPolicyStatusRequest(), metadata=bearer(WEB), timeout=20
            ),
        )

    async def status(self, rng: random.Random, _: Any, __: Any, admin: Any) -> None:
        await self.call(
            "policy status",
            (OK,),
            admin.GetPolicyStatus(
                admin_pb2.GetPolicyStatusRequest(), metadata=bearer(OPS), timeout=20
            ),
        )

    # -- the coordinator -----------------------------------------------------------------------

    async def coordinator(self, started: float, until: float) -> None:
        admin = admin_pb2_grpc.AdminServiceStub(self.channels[0])
        duration = until - started
        app_ids = [self.sim.addon(name)["app"]["id"] for name in self.addons]
        steps = [
            (0.30, self.reload),
            (0.50, self.fault_on),
            (0.65, self.fault_off),
        ]
        next_sample = started
        while time.monotonic() < until:
            now = time.monotonic()
            if now >= next_sample:
                self.tally.rss.append((now - started, rss_bytes()))
                next_sample = now + 0.2
            if steps and now >= started + steps[0][0] * duration:
                _, step = steps.pop(0)
                await step(admin, app_ids)
            await asyncio.sleep(0.05)
        self.tally.rss.append((time.monotonic() - started, rss_bytes()))

    async def reload(self, admin: Any, app_ids: list[str]) -> None:
        before = await admin.GetPolicyStatus(
            admin_pb2.GetPolicyStatusRequest(), metadata=bearer(OPS), timeout=20
        )
        (self.policy_dir / "soak.yaml").write_text(SOAK_POLICY.lstrip())
        code, reply, _ = await self.call(
            "reload",
            (OK,),
            admin.ReloadPolicies(
                admin_pb2.ReloadPoliciesRequest(), metadata=bearer(OPS), timeout=20
            ),
        )
        if code == OK and (not reply.reloaded or reply.policy_revision == before.policy_revision):
            self.tally.unexpected.append(f"reload did not change the revision: {reply}")
        self.tally.events.append(f"policy reload → {reply.policy_revision if reply else '?'}")

    async def fault_on(self, admin: Any, app_ids: list[str]) -> None:
        self.sim.add_fault("error", path_prefix="/apps", status=503)
        for app_id in app_ids:  # drop cached lists, so checks must ask the failing Heroku
            await self.call(
                "invalidate",
                (OK,),
                admin.InvalidateAccess(
                    admin_pb2.InvalidateAccessRequest(app_id=app_id),
                    metadata=bearer(OPS),
                    timeout=20,
                ),
            )
        self.tally.events.append("Heroku /apps failing with 503")

    async def fault_off(self, admin: Any, app_ids: list[str]) -> None:
        self.sim.clear_faults()
        self.tally.events.append("Heroku back")


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


def test_soak(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    base_settings: Settings,
    loop_thread: LoopThread,
    tmp_path: Path,
) -> None:
    server_log = RecordingHandler(logging.WARNING)
    logging.getLogger().addHandler(server_log)
    try:
        _soak(sim, start, base_settings, loop_thread, tmp_path, server_log)
    finally:
        logging.getLogger().removeHandler(server_log)


def _soak(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    base_settings: Settings,
    loop_thread: LoopThread,
    tmp_path: Path,
    server_log: RecordingHandler,
) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    for policy in SHIPPED_POLICIES.glob("*.yaml"):
        shutil.copy(policy, policy_dir)
    settings = world_settings(
        base_settings,
        sim,
        policy_dir=policy_dir,
        caller_tokens=(CallerToken.of("web", WEB), CallerToken.of("ops", OPS)),
        admins=frozenset({"ops"}),
    )
    svc = start(settings)

    async def provision(admin: Any) -> dict[str, str]:
        ids = {}
        for name in ADDONS:
            info = sim.addon(name)
            app = sim.app(info["app"]["id"])
            await admin.RegisterAddon(
                admin_pb2.RegisterAddonRequest(
                    resource_id=info["id"],
                    app_id=app["id"],
                    app_name=app["name"],
                    plan="authz:basic",
                    region="us",
                    oauth_grant_code=sim.create_grant(info["id"]),
                ),
                metadata=bearer(OPS),
                timeout=20,
            )
            ids[name] = info["id"]
        return ids

    async def run() -> Soak:
        channels = [grpc.aio.insecure_channel(svc.address) for _ in range(CHANNELS)]
        soak = Soak(svc.address, sim, policy_dir, {})
        soak.channels = channels
        soak.addons = await provision(admin_pb2_grpc.AdminServiceStub(channels[0]))
        warm = random.Random(0)
        for _ in range(5):
            await soak.sso_login(warm, None, session_pb2_grpc.SessionServiceStub(channels[0]))
        started = time.monotonic()
        until = started + SECONDS
        await asyncio.gather(
            soak.coordinator(started, until), *(soak.client(n, until) for n in range(CLIENTS))
        )
        soak.tally.events.append(f"load ran {time.monotonic() - started:.1f} s")
        recovery_started = time.monotonic()
        # Heroku is back: a fresh login gets in again (after the access cache's backoff).
        recovered = False
        for attempt in range(40):
            form, _ = soak.form(random.Random(1000 + attempt), ("alice",), "authz-curved-12345")
            try:
                reply = await session_pb2_grpc.SessionServiceStub(channels[0]).ExchangeSso(
                    session_pb2.ExchangeSsoRequest(form=form), metadata=bearer(WEB), timeout=20
                )
                soak.tally.decision_ids.append(reply.decision_id)
                recovered = True
                break
            except grpc.RpcError as exc:
                soak.refused_decision(exc)
                await asyncio.sleep(0.5)
        if not recovered:
            soak.tally.unexpected.append("no login succeeded after Heroku came back")
        soak.tally.events.append(f"login again after {time.monotonic() - recovery_started:.1f} s")
        for channel in channels:
            await channel.close()
        return soak

    soak = loop_thread.run(run(), timeout=SECONDS + 120)
    tally = soak.tally
    queried = time.monotonic()
    recorded = Counter(r["decision_id"] for r in query(svc.service.audit.path, limit=None))
    tally.events.append(f"audit read in {time.monotonic() - queried:.1f} s")
    handed_out = Counter(tally.decision_ids)

    total = sum(tally.calls.values())
    rss = [value for t, value in tally.rss if t >= 0.2 * SECONDS]
    half = len(rss) // 2
    first, second = statistics.median(rss[:half]), statistics.median(rss[half:])
    latencies = sorted(tally.latencies)
    summary = (
        f"soak: {CLIENTS} clients, {SECONDS:g} s, {total} calls "
        f"({total / SECONDS:.0f}/s), p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; "
        f"{len(handed_out)} decisions handed out, {sum(recorded.values())} audit rows; "
        f"RSS median {first / 2**20:.1f} → {second / 2**20:.1f} MiB; "
        f"events: {'; '.join(tally.events)}\n"
        + "\n".join(f"  {op:16} {code:20} {n}" for (op, code), n in sorted(tally.calls.items()))
    )
    print(summary)

    assert not tally.unexpected, "\n".join(tally.unexpected[:20])
    server_errors = server_log.at_least(logging.ERROR)
    assert not server_errors, "\n".join(server_errors[:10])
    # Every decision answered is audited exactly once, and nothing else is.
    assert max(handed_out.values()) == 1, "a decision id was handed out twice"
    assert max(recorded.values()) == 1, "a decision was recorded twice"
    missing = set(handed_out) - set(recorded)
    extra = set(recorded) - set(handed_out)
    assert not missing and not extra, (len(missing), len(extra))
    # The mix really happened: every kind of call, the fault and the reload.
    assert {op for op, _ in tally.calls} >= {
        "check session", "check direct", "check invalid", "batch", "batch invalid",
        "sso login", "sso bad", "unauthenticated", "revoke", "admin as web", "reload",
    }  # fmt: skip
    assert tally.calls[("sso login", "PERMISSION_DENIED LOGIN_DENIED")] > 0  # Heroku failing
    assert (
        tally.calls[("sso login", "OK")]
        > tally.calls[("sso login", "PERMISSION_DENIED LOGIN_DENIED")]
    )
    refusals = {code for op, code in tally.calls if op == "sso login" and code != "OK"}
    assert refusals <= {"PERMISSION_DENIED LOGIN_DENIED", "PERMISSION_DENIED SSO_REPLAYED"}
    assert total > 20 * CLIENTS
    assert second - first < MEMORY_GROWTH_LIMIT, summary
