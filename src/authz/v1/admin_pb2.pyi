import datetime

from authz.v1 import authorization_pb2 as _authorization_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAddonRequest(_message.Message):
    __slots__ = ("resource_id", "app_id", "app_name", "plan", "region", "oauth_grant_code", "name", "callback_url", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    OAUTH_GRANT_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    app_id: str
    app_name: str
    plan: str
    region: str
    oauth_grant_code: str
    name: str
    callback_url: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, resource_id: _Optional[str] = ..., app_id: _Optional[str] = ..., app_name: _Optional[str] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ..., oauth_grant_code: _Optional[str] = ..., name: _Optional[str] = ..., callback_url: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Addon(_message.Message):
    __slots__ = ("resource_id", "app_id", "app_name", "plan", "region", "state", "created_at", "updated_at", "has_oauth_tokens", "webhook_subscribed")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    HAS_OAUTH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    app_id: str
    app_name: str
    plan: str
    region: str
    state: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    has_oauth_tokens: bool
    webhook_subscribed: bool
    def __init__(self, resource_id: _Optional[str] = ..., app_id: _Optional[str] = ..., app_name: _Optional[str] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_oauth_tokens: _Optional[bool] = ..., webhook_subscribed: _Optional[bool] = ...) -> None: ...

class RegisterAddonResponse(_message.Message):
    __slots__ = ("addon", "changed")
    ADDON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    addon: Addon
    changed: bool
    def __init__(self, addon: _Optional[_Union[Addon, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ChangePlanRequest(_message.Message):
    __slots__ = ("resource_id", "plan")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    plan: str
    def __init__(self, resource_id: _Optional[str] = ..., plan: _Optional[str] = ...) -> None: ...

class ChangePlanResponse(_message.Message):
    __slots__ = ("addon",)
    ADDON_FIELD_NUMBER: _ClassVar[int]
    addon: Addon
    def __init__(self, addon: _Optional[_Union[Addon, _Mapping]] = ...) -> None: ...

class DeprovisionAddonRequest(_message.Message):
    __slots__ = ("resource_id",)
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    def __init__(self, resource_id: _Optional[str] = ...) -> None: ...

class DeprovisionAddonResponse(_message.Message):
    __slots__ = ("addon", "sessions_revoked")
    ADDON_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    addon: Addon
    sessions_revoked: int
    def __init__(self, addon: _Optional[_Union[Addon, _Mapping]] = ..., sessions_revoked: _Optional[int] = ...) -> None: ...

class InvalidateAccessRequest(_message.Message):
    __slots__ = ("app_id",)
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    def __init__(self, app_id: _Optional[str] = ...) -> None: ...

class InvalidateAccessResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class ReloadPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPoliciesResponse(_message.Message):
    __slots__ = ("reloaded", "policy_revision", "errors")
    RELOADED_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    reloaded: bool
    policy_revision: str
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reloaded: _Optional[bool] = ..., policy_revision: _Optional[str] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyStatusResponse(_message.Message):
    __slots__ = ("policy_revision", "loaded_at", "policy_count", "rule_count", "policy_dir", "last_refused_at", "last_refused_errors")
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_COUNT_FIELD_NUMBER: _ClassVar[int]
    RULE_COUNT_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIR_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSED_ERRORS_FIELD_NUMBER: _ClassVar[int]
    policy_revision: str
    loaded_at: _timestamp_pb2.Timestamp
    policy_count: int
    rule_count: int
    policy_dir: str
    last_refused_at: _timestamp_pb2.Timestamp
    last_refused_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, policy_revision: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policy_count: _Optional[int] = ..., rule_count: _Optional[int] = ..., policy_dir: _Optional[str] = ..., last_refused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_refused_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryDecisionsRequest(_message.Message):
    __slots__ = ("since", "until", "principal", "resource", "app", "action", "effect", "rule", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    principal: str
    resource: str
    app: str
    action: str
    effect: _authorization_pb2.Effect
    rule: str
    limit: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., resource: _Optional[str] = ..., app: _Optional[str] = ..., action: _Optional[str] = ..., effect: _Optional[_Union[_authorization_pb2.Effect, str]] = ..., rule: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryDecisionsResponse(_message.Message):
    __slots__ = ("decision_id", "time", "effect", "action", "principal", "resource", "app_id", "policy_revision", "matched_rules", "record")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time: _timestamp_pb2.Timestamp
    effect: _authorization_pb2.Effect
    action: str
    principal: str
    resource: str
    app_id: str
    policy_revision: str
    matched_rules: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.MatchedRule]
    record: _struct_pb2.Struct
    def __init__(self, decision_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effect: _Optional[_Union[_authorization_pb2.Effect, str]] = ..., action: _Optional[str] = ..., principal: _Optional[str] = ..., resource: _Optional[str] = ..., app_id: _Optional[str] = ..., policy_revision: _Optional[str] = ..., matched_rules: _Optional[_Iterable[_Union[_authorization_pb2.MatchedRule, _Mapping]]] = ..., record: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
