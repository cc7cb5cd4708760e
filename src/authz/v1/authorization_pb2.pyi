from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Effect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EFFECT_UNSPECIFIED: _ClassVar[Effect]
    EFFECT_ALLOW: _ClassVar[Effect]
    EFFECT_DENY: _ClassVar[Effect]
EFFECT_UNSPECIFIED: Effect
EFFECT_ALLOW: Effect
EFFECT_DENY: Effect

class Principal(_message.Message):
    __slots__ = ("type", "id", "attributes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    attributes: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "attributes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    attributes: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("principal", "session_token", "action", "resource", "context", "request_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    session_token: str
    action: str
    resource: Resource
    context: _struct_pb2.Struct
    request_id: str
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., session_token: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class MatchedRule(_message.Message):
    __slots__ = ("policy", "rule_id", "effect", "reason")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    policy: str
    rule_id: str
    effect: Effect
    reason: str
    def __init__(self, policy: _Optional[str] = ..., rule_id: _Optional[str] = ..., effect: _Optional[_Union[Effect, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("effect", "allowed", "decision_id", "policy_revision", "matched_rules", "reasons", "errors")
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    effect: Effect
    allowed: bool
    decision_id: str
    policy_revision: str
    matched_rules: _containers.RepeatedCompositeFieldContainer[MatchedRule]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, effect: _Optional[_Union[Effect, str]] = ..., allowed: _Optional[bool] = ..., decision_id: _Optional[str] = ..., policy_revision: _Optional[str] = ..., matched_rules: _Optional[_Iterable[_Union[MatchedRule, _Mapping]]] = ..., reasons: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckItem(_message.Message):
    __slots__ = ("action", "resource", "context")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    action: str
    resource: Resource
    context: _struct_pb2.Struct
    def __init__(self, action: _Optional[str] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("principal", "session_token", "items", "context", "request_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    session_token: str
    items: _containers.RepeatedCompositeFieldContainer[CheckItem]
    context: _struct_pb2.Struct
    request_id: str
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., session_token: _Optional[str] = ..., items: _Optional[_Iterable[_Union[CheckItem, _Mapping]]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[CheckResponse, _Mapping]]] = ...) -> None: ...

class ListAllowedActionsRequest(_message.Message):
    __slots__ = ("principal", "session_token", "resource", "context", "actions", "request_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    session_token: str
    resource: Resource
    context: _struct_pb2.Struct
    actions: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., session_token: _Optional[str] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., actions: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ActionDecision(_message.Message):
    __slots__ = ("action", "decision")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    action: str
    decision: CheckResponse
    def __init__(self, action: _Optional[str] = ..., decision: _Optional[_Union[CheckResponse, _Mapping]] = ...) -> None: ...

class ListAllowedActionsResponse(_message.Message):
    __slots__ = ("actions", "decisions")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedScalarFieldContainer[str]
    decisions: _containers.RepeatedCompositeFieldContainer[ActionDecision]
    def __init__(self, actions: _Optional[_Iterable[str]] = ..., decisions: _Optional[_Iterable[_Union[ActionDecision, _Mapping]]] = ...) -> None: ...
