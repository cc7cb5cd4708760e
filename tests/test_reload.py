"""Hot reload: a good change takes effect without a restart or a failed request; a broken one is
refused while the old revision keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from authz.config import Settings
from authz.v1 import admin_pb2, admin_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService

POLICY = """
name: ping
rules:
  - id: ping-allowed
    effect: {effect}
    actions: [ping]
    reason: ping is {effect}ed
"""


def write(directory: Path, effect: str) -> None:
    # Write beside, then rename: the watcher never sees a half-written file.
    tmp = directory / ".ping.yaml.tmp"
    tmp.write_text(POLICY.format(effect=effect))
    tmp.replace(directory / "ping.yaml")


def ping(svc: RunningService) -> pb.CheckResponse:
    return pb_grpc.AuthorizationServiceStub(svc.channel).Check(
        pb.CheckRequest(
            principal=pb.Principal(type="svc", id="a"),
            action="ping",
            resource=pb.Resource(type="x", id="1"),
        ),
        timeout=5,
    )


def wait_for(predicate: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def start_watched(
    tmp_path: Path, start: Callable[..., RunningService], base_settings: Settings
) -> tuple[RunningService, Path]:
    directory = tmp_path / "live-policies"
    directory.mkdir()
    write(directory, "allow")
    return start(base_settings, policy_dir=directory), directory


def test_good_change_takes_effect_without_a_failed_request(
    tmp_path: Path, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc, directory = start_watched(tmp_path, start, base_settings)
    first = ping(svc)
    assert first.allowed
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                ping(svc)
            except grpc.RpcError as exc:  # any failed request fails the test
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    write(directory, "deny")
    wait_for(lambda: not ping(svc).allowed)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    after = ping(svc)
    assert after.policy_revision != first.policy_revision
    assert after.reasons == ["ping is denyed"]


def test_broken_change_is_refused_and_old_revision_keeps_serving(
    tmp_path: Path, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc, directory = start_watched(tmp_path, start, base_settings)
    revision = ping(svc).policy_revision
    (directory / "broken.yaml").write_text(
        "name: broken\nrules:\n  - id: x\n    effect: allow\n"
        "    actions: [ping]\n    when: principal.id ==\n"
        "    reason: r\n"
    )
    admin = admin_pb2_grpc.AdminServiceStub(svc.channel)
    wait_for(lambda: admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest()).last_refused_errors)
    status = admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest())
    assert status.policy_revision == revision
    assert any("broken.yaml:6:" in e for e in status.last_refused_errors)
    response = ping(svc)
    assert response.allowed and response.policy_revision == revision
    # An explicit reload says the same, and fixing the file is picked up.
    reload = admin.ReloadPolicies(admin_pb2.ReloadPoliciesRequest())
    assert not reload.reloaded and reload.policy_revision == revision
    (directory / "broken.yaml").unlink()
    write(directory, "deny")
    wait_for(lambda: not ping(svc).allowed)


def test_policy_status_describes_the_serving_set(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(base_settings)
    status = admin_pb2_grpc.AdminServiceStub(svc.channel).GetPolicyStatus(
        admin_pb2.GetPolicyStatusRequest()
    )
    assert status.policy_revision == svc.service.policies.current.revision
    assert status.rule_count == svc.service.policies.current.rule_count
    assert status.loaded_at.seconds > 0
    assert not status.HasField("last_refused_at")
