"""End to end through a real gRPC server on an ephemeral port."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz.config import Settings
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService

POLICY = """
name: docs
description: test policy
rules:
  - id: owners-edit
    effect: allow
    actions: ["doc.*"]
    resource_types: [doc]
    when: resource.attributes.owner == principal.id
    reason: owners may do anything with their documents
  - id: nobody-deletes-locked
    effect: deny
    actions: [doc.delete]
    when: resource.attributes.locked == true
    reason: locked documents are never deleted
  - id: context-read
    effect: allow
    actions: [doc.read]
    when: context.channel == "internal"
    reason: internal channel reads
"""


def struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


@pytest.fixture
def svc(
    start: Callable[..., RunningService],
    base_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
) -> RunningService:
    return start(base_settings, policy_dir=policy_dir({"docs.yaml": POLICY}))


def stub(svc: RunningService) -> pb_grpc.AuthorizationServiceStub:
    return pb_grpc.AuthorizationServiceStub(svc.channel)


def doc(owner: str = "alice", locked: bool = False) -> pb.Resource:
    return pb.Resource(type="doc", id="d1", attributes=struct(owner=owner, locked=locked))


def alice() -> pb.Principal:
    return pb.Principal(type="user", id="alice")


def test_check_allow_explains_itself(svc: RunningService) -> None:
    response = stub(svc).Check(
        pb.CheckRequest(principal=alice(), action="doc.edit", resource=doc())
    )
    assert response.allowed and response.effect == pb.EFFECT_ALLOW
    assert [m.rule_id for m in response.matched_rules] == ["owners-edit"]
    assert response.reasons == ["owners may do anything with their documents"]
    assert response.policy_revision == svc.service.policies.current.revision
    assert len(response.decision_id) == 36


def test_check_deny_overrides_and_default_deny(svc: RunningService) -> None:
    s = stub(svc)
    locked = s.Check(
        pb.CheckRequest(principal=alice(), action="doc.delete", resource=doc(locked=True))
    )
    assert not locked.allowed and locked.effect == pb.EFFECT_DENY
    assert locked.reasons == ["locked documents are never deleted"]
    other = s.Check(
        pb.CheckRequest(principal=alice(), action="doc.edit", resource=doc(owner="bob"))
    )
    assert other.effect == pb.EFFECT_DENY
    assert "default deny" in other.reasons[0]


def test_context_reaches_policies(svc: RunningService) -> None:
    request = pb.CheckRequest(
        principal=pb.Principal(type="user", id="carol"),
        action="doc.read",
        resource=doc(),
        context=struct(channel="internal"),
    )
    assert stub(svc).Check(request).allowed


def test_decision_ids_are_unique_and_time_sorted(svc: RunningService) -> None:
    s = stub(svc)
    ids = [
        s.Check(pb.CheckRequest(principal=alice(), action="doc.edit", resource=doc())).decision_id
        for _ in range(20)
    ]
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


def test_batch_answers_in_request_order(svc: RunningService) -> None:
    items = [
        pb.CheckItem(action="doc.edit", resource=doc()),
        pb.CheckItem(action="doc.delete", resource=doc(locked=True)),
        pb.CheckItem(
            action="doc.read", resource=doc(owner="bob"), context=struct(channel="internal")
        ),
        pb.CheckItem(action="doc.read", resource=doc(owner="bob")),
    ]
    response = stub(svc).CheckBatch(pb.CheckBatchRequest(principal=alice(), items=items))
    assert [r.allowed for r in response.results] == [True, False, True, False]
    assert len({r.decision_id for r in response.results}) == 4


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.CheckRequest(principal=alice(), resource=doc()), "action is empty"),
        (
            pb.CheckRequest(principal=pb.Principal(type="user"), action="a", resource=doc()),
            "principal.id",
        ),
        (
            pb.CheckRequest(principal=pb.Principal(id="x"), action="a", resource=doc()),
            "principal.type",
        ),
        (pb.CheckRequest(action="a", resource=doc()), "principal or session_token"),
        (pb.CheckRequest(principal=alice(), action="a"), "resource is missing"),
        (
            pb.CheckRequest(principal=alice(), action="a b", resource=doc()),
            "action contains whitespace",
        ),
    ],
)
def test_bad_requests_name_the_field(
    svc: RunningService, request_: pb.CheckRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub(svc).Check(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def test_batch_limit_is_clear(svc: RunningService) -> None:
    items = [pb.CheckItem(action="doc.read", resource=doc())] * 101
    with pytest.raises(grpc.RpcError) as info:
        stub(svc).CheckBatch(pb.CheckBatchRequest(principal=alice(), items=items))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100" in info.value.details()


def test_deeply_nested_attributes_are_refused(svc: RunningService) -> None:
    nested: dict = {"leaf": 1}
    for _ in range(12):
        nested = {"n": nested}
    request = pb.CheckRequest(
        principal=pb.Principal(type="user", id="a", attributes=struct(**nested)),
        action="doc.read",
        resource=doc(),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub(svc).Check(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested deeper" in info.value.details()


def test_health_and_reflection(svc: RunningService) -> None:
    health = health_pb2_grpc.HealthStub(svc.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    named = health.Check(health_pb2.HealthCheckRequest(service="authz.v1.AuthorizationService"))
    assert named.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(svc.channel)
    replies = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert "authz.v1.AuthorizationService" in names
    assert "grpc.health.v1.Health" in names


def test_every_service_answers_and_an_unknown_method_is_unimplemented(
    svc: RunningService,
) -> None:
    # Services are generic handlers only (authz.server.registration): each still answers by
    # its method name, and a name no service has is UNIMPLEMENTED rather than anything else.
    assert stub(svc).Check(pb.CheckRequest(principal=alice(), action="doc.read", resource=doc()))
    unknown = svc.channel.unary_unary(
        "/authz.v1.AuthorizationService/Forget",
        request_serializer=pb.CheckRequest.SerializeToString,
        response_deserializer=pb.CheckResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as refused:
        unknown(pb.CheckRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("recall", ["on", "off"])
def test_recall_setting_decides_whether_a_request_sent_again_is_converted_and_evaluated_again(
    start: Callable[..., RunningService],
    base_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
    recall: str,
) -> None:
    """AUTHZ_RECALL=off: the same Check twice is converted and evaluated twice (nothing kept
    from the first), with the same answer as when the second is recalled."""
    from authz.server import convert
    from authz.server.app import apply_recall

    svc = start(base_settings, policy_dir=policy_dir({"docs.yaml": POLICY}), recall=recall)
    try:
        plan = svc.service.policies.current.plan("doc.read", "doc")
        request = pb.CheckRequest(principal=alice(), action="doc.read", resource=doc("bob"))
        request.context.update({"channel": "internal"})
        answers = [stub(svc).Check(request) for _ in range(2)]
        assert [a.allowed for a in answers] == [True, True]
        assert [m.rule_id for m in answers[1].matched_rules] == ["context-read"]
        kept = request.resource.SerializeToString() in convert._ENTITIES
        assert (len(plan.masks_by_input), plan.recall.hits, kept) == (
            (1, 1, True) if recall == "on" else (0, 0, False)
        )
    finally:
        apply_recall(base_settings)  # the process-wide default again, for the tests after this


@pytest.mark.parametrize("age", [1.0, 0.0])
def test_a_connection_past_its_age_is_replaced_without_failing_a_call(
    start: Callable[..., RunningService],
    base_settings: Settings,
    policy_dir: Callable[[dict[str, str]], Path],
    age: float,
) -> None:
    """AUTHZ_MAX_CONNECTION_AGE: a connection older than its age (±10 %) is asked to move, the
    client opens another (which the kernel may place on another worker of `authz serve`) and no
    call fails on the way; with 0 the first connection serves every call."""
    svc = start(base_settings, policy_dir=policy_dir({"docs.yaml": POLICY}), max_connection_age=age)
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(svc.address) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        check = pb_grpc.AuthorizationServiceStub(channel).Check
        request = pb.CheckRequest(principal=alice(), action="doc.edit", resource=doc())
        answered = 0
        # With an age: until the third connection, within a deadline well past two ages. Without:
        # longer than two ages would have taken.
        until = time.monotonic() + (15.0 if age else 2.7)
        while time.monotonic() < until:
            assert check(request, timeout=10).allowed  # any failed call raises here
            answered += 1
            if age and states.count(grpc.ChannelConnectivity.READY) >= 3:
                break
        channel.unsubscribe(states.append)
    connections = states.count(grpc.ChannelConnectivity.READY)
    assert answered > 100
    assert connections >= 3 if age else connections == 1, states
