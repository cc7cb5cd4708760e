"""What a policy sees: the one contract of the evaluation input, and the only builders of it.

`VARIABLES` and `MESSAGES` declare every variable and field with its CEL type and where it comes
from. From this one table come:

- the type-checking environment (`checking_env`): the fields are protobuf messages in a
  descriptor pool, so `principal.auth.methd`, `access.rolez` or `principal.id == 1` are refused
  when the policies load;
- the builders below (`principal_input`, `resource_input`, `access_input`, `evaluation_input`,
  ...), which always fill every declared field, so what the type checker promised is what the
  engine gets (the server, the test-suite runner, replay, `policy eval` and the benchmark all
  build through them);
- the README's schema reference (`schema_reference`, kept in step by a test).

The engine evaluates plain dicts, not messages: measured on the shipped policies, building
protobuf messages per request and evaluating them was slower than maps (see README, "Policy
input"), so the typed environment checks and the map environment runs the same text.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2

PACKAGE = "authz.input"
HEROKU_USER = "heroku_user"
ADDON = "addon"
HEROKU_SSO = "heroku_sso"
NO_AUTH = "none"
NO_APP = "no Heroku app applies to this request"
ACCESS_UNAVAILABLE = "access list unavailable"
# Strongest first: `access.role` is the first of these the user holds.
ROLE_ORDER = (
    "owner",
    "admin",
    "collaborator",
    "member",
    "team_owner",
    "team_admin",
    "team_member",
)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str  # a CEL type: string, bool, double, timestamp, list(string), map(string, dyn), or
    # the name of another message of MESSAGES
    source: str  # where the value comes from, for people reading the reference


MESSAGES: dict[str, tuple[Field, ...]] = {
    "Principal": (
        Field("type", "string", "the caller's principal type; `heroku_user` after an SSO login"),
        Field("id", "string", "the caller's principal id; the Heroku user id after an SSO login"),
        Field(
            "attributes",
            "map(string, dyn)",
            "what the caller sent with the principal (never set for an SSO user); typed by "
            "`principal_types:` when the policy set declares the type",
        ),
        Field("auth", "Auth", "how the principal was authenticated; set by authz only"),
    ),
    "Auth": (
        Field("method", "string", "`heroku_sso` for a verified SSO session, else `none`"),
        Field("session_id", "string", 'the authz session (`""` when method is `none`)'),
        Field("resource_id", "string", "the add-on the SSO session was issued for"),
        Field("issued_at", "string", "when the session was issued, RFC 3339 (`timestamp(...)`)"),
        Field("token_kind", "string", "the SSO token that verified it: `sha256`, `sha1`"),
    ),
    "Resource": (
        Field("type", "string", "the resource type the caller named"),
        Field("id", "string", "the resource id the caller named"),
        Field(
            "attributes",
            "map(string, dyn)",
            "what the caller sent with the resource; typed by `resource_types:` attributes",
        ),
        Field("addon", "Addon", "the add-on registry's facts (resource type `addon` only)"),
    ),
    "Addon": (
        Field(
            "state",
            "string",
            '`provisioned`, `deprovisioned`, `unknown` (not registered); `""` for other types',
        ),
        Field("app_id", "string", "the Heroku app that owns the add-on"),
        Field("app_name", "string", "that app's name"),
        Field("plan", "string", "the add-on's plan, e.g. `authz:basic`"),
        Field("region", "string", "the add-on's region"),
    ),
    "Access": (
        Field("available", "bool", "true when Heroku's app access list could be had"),
        Field("app_id", "string", "the app the access list is of"),
        Field("user_id", "string", "the principal id it was looked up for"),
        Field("roles", "list(string)", "the user's roles on the app, as Heroku lists them"),
        Field("role", "string", "the strongest of: " + " > ".join(ROLE_ORDER) + '; or `""`'),
        Field("has_role", "bool", '`role != ""`'),
        Field("team_role", "string", "the user's role in the app's team, or `\"\"`"),
        Field("permissions", "list(string)", "effective app permissions (view, deploy, ...)"),
        Field("fetched_at", "string", 'when Heroku answered, RFC 3339; `""` when unavailable'),
        Field("age_seconds", "double", "seconds since then; -1.0 when unavailable"),
        Field("error", "string", 'why the list is unavailable; `""` when available'),
    ),
    "Caller": (
        Field("id", "string", "the service asking, from its credentials (never the request)"),
    ),
}

VARIABLES: tuple[Field, ...] = (
    Field("principal", "Principal", "who asks"),
    Field("resource", "Resource", "what the request is about"),
    Field("action", "string", "the action the caller asks about"),
    Field("context", "map(string, dyn)", "the request's context (an item's context over it)"),
    Field("now", "timestamp", "the decision's time, from authz's clock"),
    Field("access", "Access", "the principal's current roles on the resource's Heroku app"),
    Field("caller", "Caller", "the calling service"),
    Field("data", "map(string, dyn)", "the policy directory's data/ files, by file stem"),
)
VARIABLE_NAMES = tuple(v.name for v in VARIABLES)

_DYN_MAP = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
_SCALARS = {
    "string": (cel.Type.STRING, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    "bool": (cel.Type.BOOL, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
    "double": (cel.Type.DOUBLE, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
}


def runtime_variables() -> dict[str, cel.Type]:
    """The declarations the engine evaluates with: plain maps, as the builders make them."""
    return {v.name: _runtime_type(v.type) for v in VARIABLES}


def _runtime_type(name: str) -> cel.Type:
    if name in _SCALARS:
        return _SCALARS[name][0]
    if name == "timestamp":
        return cel.Type.TIMESTAMP
    return _DYN_MAP


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="authz/input.proto", package=PACKAGE, syntax="proto3"
    )
    file.dependency.append("google/protobuf/struct.proto")
    for message, fields in MESSAGES.items():
        declared = file.message_type.add(name=message)
        for number, f in enumerate(fields, 1):
            field = declared.field.add(name=f.name, number=number, label=proto.LABEL_OPTIONAL)
            if f.type in _SCALARS:
                field.type = _SCALARS[f.type][1]
            elif f.type == "list(string)":
                field.type, field.label = proto.TYPE_STRING, proto.LABEL_REPEATED
            elif f.type == "map(string, dyn)":
                field.type, field.type_name = proto.TYPE_MESSAGE, ".google.protobuf.Struct"
            else:
                field.type, field.type_name = proto.TYPE_MESSAGE, f".{PACKAGE}.{f.type}"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return pool


def checking_env() -> cel.Env:
    """The environment conditions are type-checked in: every field declared."""
    variables = {
        v.name: cel.Type(f"{PACKAGE}.{v.type}") if v.type in MESSAGES else _runtime_type(v.type)
        for v in VARIABLES
    }
    return cel.NewEnv(descriptor_pool=_pool(), variables=variables)


def field_suggestion(message: str, name: str) -> str:
    """'did you mean ...' for a misspelt field of a message ('' when nothing is close)."""
    fields = [f.name for f in MESSAGES.get(message.removeprefix(f"{PACKAGE}."), ())]
    return _did_you_mean(name, fields)


def variable_suggestion(name: str) -> str:
    """For CEL's "undeclared reference to 'principl.type'": the variable is the first part."""
    return _did_you_mean(name.split(".")[0], VARIABLE_NAMES)


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=2, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def message_of(variable: str) -> str:
    return next((v.type for v in VARIABLES if v.name == variable), "")


def fields_of(message: str) -> tuple[str, ...]:
    return tuple(f.name for f in MESSAGES.get(message, ()))


# -- the builders --------------------------------------------------------------------------------


def auth_input(
    method: str = NO_AUTH,
    *,
    session_id: str = "",
    resource_id: str = "",
    issued_at: str = "",
    token_kind: str = "",
) -> dict[str, str]:
    return {
        "method": method,
        "session_id": session_id,
        "resource_id": resource_id,
        "issued_at": issued_at,
        "token_kind": token_kind,
    }


NO_AUTH_INPUT = auth_input()


def principal_input(
    type: str,
    id: str,
    attributes: Mapping[str, Any] | None = None,
    auth: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "type": type,
        "id": id,
        "attributes": dict(attributes or {}),
        "auth": {**NO_AUTH_INPUT, **auth} if auth else dict(NO_AUTH_INPUT),
    }


def addon_input(
    state: str = "", app_id: str = "", app_name: str = "", plan: str = "", region: str = ""
) -> dict[str, str]:
    return {
        "state": state,
        "app_id": app_id,
        "app_name": app_name,
        "plan": plan,
        "region": region,
    }


NO_ADDON_INPUT = addon_input()
UNKNOWN_ADDON_INPUT = addon_input("unknown")


def resource_input(
    type: str,
    id: str,
    attributes: Mapping[str, Any] | None = None,
    addon: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`addon`: the registry's facts for an add-on resource; other types get empty ones."""
    return {
        "type": type,
        "id": id,
        "attributes": dict(attributes or {}),
        "addon": {**NO_ADDON_INPUT, **addon} if addon else dict(NO_ADDON_INPUT),
    }


def strongest_role(roles: Sequence[str]) -> str:
    return next((role for role in ROLE_ORDER if role in roles), "")


def access_input(
    *,
    app_id: str,
    user_id: str,
    roles: Sequence[str],
    permissions: Sequence[str],
    team_role: str,
    fetched_at: str,
    age_seconds: float,
) -> dict[str, Any]:
    """The access fact of an access list Heroku gave: `role` and `has_role` derived here only."""
    role = strongest_role(roles)
    return {
        "available": True,
        "app_id": app_id,
        "user_id": user_id,
        "roles": list(roles),
        "role": role,
        "has_role": role != "",
        "team_role": team_role,
        "permissions": list(permissions),
        "fetched_at": fetched_at,
        "age_seconds": round(max(0.0, float(age_seconds)), 3),
        "error": "",
    }


def access_unavailable(reason: str = "", *, app_id: str = "", user_id: str = "") -> dict[str, Any]:
    """The access fact when there is no access list: never an empty reason."""
    return {
        "available": False,
        "app_id": app_id,
        "user_id": user_id,
        "roles": [],
        "role": "",
        "has_role": False,
        "team_role": "",
        "permissions": [],
        "fetched_at": "",
        "age_seconds": -1.0,
        "error": reason or ACCESS_UNAVAILABLE,
    }


NO_ACCESS = access_unavailable(NO_APP)


def caller_input(caller_id: str) -> dict[str, str]:
    return {"id": caller_id}


def evaluation_input(
    *,
    action: str,
    principal: Mapping[str, Any],
    resource: Mapping[str, Any],
    access: Mapping[str, Any],
    caller: Mapping[str, Any],
    now: datetime,
    context: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every declared variable. `data` is left out unless given: the engine then reads the
    policy set's own reference data (a test suite passes other data)."""
    inputs: dict[str, Any] = {
        "principal": principal,
        "resource": resource,
        "action": action,
        "context": context if context is not None else {},
        "now": now,
        "access": access,
        "caller": caller,
    }
    if data is not None:
        inputs["data"] = dict(data)
    return inputs


def build_input(
    *,
    action: str,
    principal: Mapping[str, Any] | None = None,
    resource: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    access: Mapping[str, Any] | None = None,
    caller: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An evaluation input from partial maps (tests, replay of older records, `policy eval`):
    whatever is left out gets the builders' neutral value, so every declared field is there."""
    p = dict(principal or {})
    r = dict(resource or {})
    return evaluation_input(
        action=action,
        principal=principal_input(
            str(p.get("type", "")), str(p.get("id", "")), p.get("attributes"), p.get("auth")
        ),
        resource=resource_input(
            str(r.get("type", "")), str(r.get("id", "")), r.get("attributes"), r.get("addon")
        ),
        access={**NO_ACCESS, **(access or {})},
        caller={"id": "", **(caller or {})},
        now=now or datetime.now(tz=UTC),
        context=dict(context or {}),
        data=data,
    )


# -- the reference -------------------------------------------------------------------------------


def schema_reference() -> str:
    """The README's table of every variable and field, from the contract above."""
    lines = ["| variable or field | CEL type | where it comes from |", "|---|---|---|"]

    def add(path: str, f: Field) -> None:
        kind = "message" if f.type in MESSAGES else f.type
        lines.append(f"| `{path}` | {kind} | {f.source} |")
        for sub in MESSAGES.get(f.type, ()):
            add(f"{path}.{sub.name}", sub)

    for variable in VARIABLES:
        add(variable.name, variable)
    return "\n".join(lines)
