"""Reading principals and resources from requests: each distinct message converted once."""

from __future__ import annotations

import re

import pytest
from google.protobuf import struct_pb2

from authz.server import convert
from authz.server.convert import BadRequest
from authz.v1 import authorization_pb2 as pb


def _resource(id: str, **attributes: object) -> pb.Resource:
    struct = struct_pb2.Struct()
    struct.update(attributes)
    return pb.Resource(type="document", id=id, attributes=struct)


def test_a_message_sent_again_gives_the_same_entity() -> None:
    first = convert.entity(_resource("doc-1", team="red", tags=["a", 2]), "resource")
    again = convert.entity(_resource("doc-1", team="red", tags=["a", 2]), "items[3].resource")
    assert again is first
    assert (first.type, first.id, first.attributes) == (
        "document",
        "doc-1",
        {"team": "red", "tags": ["a", 2]},
    )
    changed = convert.entity(_resource("doc-1", team="blue", tags=["a", 2]), "resource")
    assert changed is not first and changed.attributes["team"] == "blue"


def test_a_large_message_is_converted_each_time_and_not_kept() -> None:
    big = _resource("doc-big", text="x" * convert.ENTITY_MEMO_BYTES)
    one, two = convert.entity(big, "resource"), convert.entity(big, "resource")
    assert one == two and one is not two
    assert big.SerializeToString() not in convert._ENTITIES


def test_an_invalid_message_is_refused_every_time_naming_its_field() -> None:
    bad = pb.Resource(type="document", id="has space")
    for field in ("resource", "items[2].resource"):
        with pytest.raises(BadRequest, match=rf"^{re.escape(field)}\.id contains whitespace"):
            convert.entity(bad, field)
    assert bad.SerializeToString() not in convert._ENTITIES


def test_the_kept_entities_are_bounded() -> None:
    for i in range(convert.ENTITY_MEMO_SIZE + 50):
        convert.entity(_resource(f"doc-{i}"), "resource")
    assert len(convert._ENTITIES) <= convert.ENTITY_MEMO_SIZE
    newest = _resource(f"doc-{convert.ENTITY_MEMO_SIZE + 49}")
    assert newest.SerializeToString() in convert._ENTITIES


@pytest.mark.parametrize("keeping", [True, False])
def test_a_batch_shares_each_resource_among_its_items_whatever_the_setting(keeping: bool) -> None:
    """Within one request, items naming the same resource get one Entity, large or small, and
    with AUTHZ_RECALL=off too (then nothing is kept for later requests)."""
    small, big = _resource("doc-s", team="red"), _resource("doc-b", text="x" * 2000)
    batch = pb.CheckBatchRequest(
        items=[
            pb.CheckItem(action=action, resource=resource)
            for resource in (small, big)
            for action in ("doc.read", "doc.edit")
        ]
    )
    before = convert.keep_entities(keeping)
    try:
        convert._ENTITIES.clear()
        items = convert.batch_items(batch)
        kept = small.SerializeToString() in convert._ENTITIES
    finally:
        convert.keep_entities(before)
    assert [item.resource.id for item in items] == ["doc-s", "doc-s", "doc-b", "doc-b"]
    assert items[0].resource is items[1].resource and items[2].resource is items[3].resource
    assert (kept, big.SerializeToString() in convert._ENTITIES) == (keeping, False)
