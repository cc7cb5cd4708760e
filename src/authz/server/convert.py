"""Protobuf ↔ plain values, and request validation with messages that say what to fix."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from authz.decide import Entity, Item, Outcome
from authz.errors import AuthzError
from authz.policy.attributes import AttributeRefused, conform_request
from authz.policy.compile import CompiledPolicySet
from authz.policy.model import Decision, Effect
from authz.v1 import authorization_pb2 as pb

MAX_BATCH_ITEMS = 100
_BAD_ID_CHAR = re.compile(r"[\s\x00-\x1f]")
MAX_DEPTH = 10
MAX_STRING = 4096
MAX_ID = 256

# Effect is a StrEnum, so these also map the plain "ALLOW"/"DENY" of audit records.
EFFECT_TO_PROTO = {Effect.ALLOW: pb.EFFECT_ALLOW, Effect.DENY: pb.EFFECT_DENY}
PROTO_TO_EFFECT = {v: k for k, v in EFFECT_TO_PROTO.items()}


class BadRequest(AuthzError, ValueError):
    """The request is malformed; the message names the field and what to send instead."""

    code = ""  # no ErrorInfo reason: the message names the field
    kind = "invalid"


def conforming(
    policy_set: CompiledPolicySet,
    principal: Mapping[str, Any] | Entity | None,
    resources: Iterable[Entity],
    where: str = "",
) -> None:
    """BadRequest (INVALID_ARGUMENT, HTTP 400) naming the attribute when the principal's or a
    resource's attributes break the attribute schema the serving policy set declares for its
    type. The one check the gRPC and AuthZEN edges call (authz.policy.attributes)."""
    if isinstance(principal, Entity):
        named: tuple[str, Mapping[str, Any]] | None = (principal.type, principal.attributes)
    elif principal is not None:
        named = (str(principal.get("type", "")), principal.get("attributes") or {})
    else:
        named = None
    try:
        conform_request(policy_set, named, [(r.type, r.attributes) for r in resources])
    except AttributeRefused as exc:
        raise BadRequest(f"{where}{exc}") from None


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """The plain values of a Struct; BadRequest naming the offending value's path under
    `field` (e.g. ``resource.attributes.tags[2]``) when one breaks the limits."""
    fields = value.fields
    if not fields:  # most contexts
        return {}
    try:
        return _fields(fields, 1)
    except _Refused as refused:
        raise BadRequest(f"{field}{refused.path}: {refused.message}") from None


class _Refused(Exception):
    """A value breaks a limit; its path is built on the way out, so that values that pass
    (nearly all) never pay for formatting one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = ""


def _fields(fields: Mapping[str, struct_pb2.Value], depth: int) -> dict[str, Any]:
    out = {}
    for key in fields:  # indexing by key: a third cheaper than the map's items() view
        try:
            out[key] = _value(fields[key], depth)
        except _Refused as refused:
            refused.path = f".{key}{refused.path}"
            raise
    return out


def _value(value: struct_pb2.Value, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels; flatten the attributes")
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if len(text) > MAX_STRING:
            raise _Refused(f"string longer than {MAX_STRING} characters")
        return text
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _Refused(f"{number} is not a finite number; JSON has no NaN or Infinity")
        # JSON has one number type; integral values become ints so `x == 3` reads naturally.
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _fields(value.struct_value.fields, depth + 1)
    if kind == "list_value":
        out = []
        for i, item in enumerate(value.list_value.values):
            try:
                out.append(_value(item, depth + 1))
            except _Refused as refused:
                refused.path = f"[{i}]{refused.path}"
                raise
        return out
    return None


def identifier(value: str, field: str) -> str:
    if not value:
        raise BadRequest(f'{field} is empty; name it, e.g. {field}="addon"')
    if len(value) > MAX_ID:
        raise BadRequest(f"{field} is longer than {MAX_ID} characters")
    if _BAD_ID_CHAR.search(value):
        raise BadRequest(f"{field} contains whitespace or control characters")
    return value


def entity(
    message: pb.Principal | pb.Resource,
    field: str,
    request: dict[bytes, Entity] | None = None,
) -> Entity:
    """The principal or resource a message names; BadRequest naming `field` when it is invalid.

    Callers name the same principals and resources over and over, and converting attributes
    from a Struct is the dearest part of reading a request, so an Entity is kept by the bytes
    of the message it came from (equal bytes, equal Entity: nothing downstream changes one)
    and shared by later requests that send the same bytes (not with AUTHZ_RECALL=off).
    `request` holds the entities of this request so far (a batch's items): those are shared
    whatever the setting and the message's size.
    """
    if request is None and not _keeping:
        return _converted(message, field)
    raw = message.SerializeToString()
    found = request.get(raw) if request is not None else None
    if found is None and _keeping:
        found = _ENTITIES.get(raw)
    if found is None:
        found = _converted(message, field)
        if _keeping and len(raw) <= ENTITY_MEMO_BYTES:
            if len(_ENTITIES) >= ENTITY_MEMO_SIZE:
                _ENTITIES.clear()  # cheaper than letting go of the oldest one at a time
            _ENTITIES[raw] = found
    if request is not None:
        request[raw] = found
    return found


def _converted(message: pb.Principal | pb.Resource, field: str) -> Entity:
    return Entity(
        identifier(message.type, f"{field}.type"),
        identifier(message.id, f"{field}.id"),
        struct_to_dict(message.attributes, f"{field}.attributes"),
    )


ENTITY_MEMO_SIZE = 4096
ENTITY_MEMO_BYTES = 1024
"""Entities kept (all are let go when full), and the largest message kept: at most 4 MiB of keys."""
_ENTITIES: dict[bytes, Entity] = {}
_keeping = True


def keep_entities(on: bool) -> bool:
    """Keep and share converted entities (see `entity`) in this process, or convert every
    message again (AUTHZ_RECALL=off); returns what it was. Off also lets go of those kept."""
    global _keeping
    before, _keeping = _keeping, on
    if not on:
        _ENTITIES.clear()
    return before


def action_of(action: str, field: str = "action") -> str:
    if not action:
        raise BadRequest(f'{field} is empty; send an action such as "dashboard.view"')
    return identifier(action, field)


def check_item(request: pb.CheckRequest) -> Item:
    if not request.HasField("resource"):
        raise BadRequest("resource is missing; send resource {type, id}")
    return Item(
        action_of(request.action),
        entity(request.resource, "resource"),
        {},
    )


def batch_items(request: pb.CheckBatchRequest) -> list[Item]:
    if not request.items:
        raise BadRequest("items is empty; send at least one {action, resource}")
    if len(request.items) > MAX_BATCH_ITEMS:
        raise BadRequest(
            f"items has {len(request.items)} entries; at most {MAX_BATCH_ITEMS} per CheckBatch"
        )
    items = []
    # Items often ask several actions of one resource: `entity` gives them one shared Entity.
    resources: dict[bytes, Entity] = {}
    for i, item in enumerate(request.items):
        if not item.HasField("resource"):
            raise BadRequest(f"items[{i}].resource is missing; send resource {{type, id}}")
        items.append(
            Item(
                action_of(item.action, f"items[{i}].action"),
                entity(item.resource, f"items[{i}].resource", resources),
                struct_to_dict(item.context, f"items[{i}].context"),
            )
        )
    return items


def request_id_of(value: str) -> str:
    if len(value) > MAX_ID:
        raise BadRequest(f"request_id is longer than {MAX_ID} characters")
    return value


def check_response(outcome: Outcome, into: pb.CheckResponse | None = None) -> pb.CheckResponse:
    """The answer to one decision, written `into` a message (a batch's result) or a new one.

    Everything but the decision id is the decision's, and the engine shares one Decision among
    every evaluation that ends the same way (authz.policy.plan), so that part is built once per
    decision and copied, which is a fifth of the cost of building it."""
    response = pb.CheckResponse() if into is None else into
    response.CopyFrom(_response_of(outcome.decision))
    response.decision_id = outcome.decision_id
    return response


@functools.lru_cache(maxsize=4096)  # decisions that are not shared (errors) never grow it
def _response_of(decision: Decision) -> pb.CheckResponse:
    """The reply template of a decision, less its id (kept: the caller copies it)."""
    return pb.CheckResponse(
        effect=EFFECT_TO_PROTO[decision.effect],
        allowed=decision.allowed,
        policy_revision=decision.policy_revision,
        matched_rules=[
            pb.MatchedRule(
                policy=m.policy,
                rule_id=m.rule_id,
                effect=EFFECT_TO_PROTO[m.effect],
                reason=m.reason,
            )
            for m in decision.matched
        ],
        reasons=decision.reasons,
        errors=decision.errors,
    )


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """Unix seconds as a protobuf Timestamp (None stays None: the field is left unset)."""
    if seconds is None:
        return None
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(_jsonable(value))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)
