"""Issue 8, hostile input: limits with clear errors, deadlines, stuck clients, and fuzzing.

The property-based tests (hypothesis, derandomized: the same examples on every run) share ONE
running server (the shipped policies, a Heroku simulator, one provisioned add-on) and check, for
every generated Check, CheckBatch and ExchangeSso request:

- the status is one the API promises for bad input (never INTERNAL or UNKNOWN),
- no ALLOW the shipped policies do not grant: every allow rule in policies/ requires a verified
  Heroku SSO session (checked below, from the policy files, before trusting this oracle), so a
  directly named principal, or a session token nobody issued, must always be denied,
- no SSO form is accepted unless it is one we signed, fields intact,
- the server logged no error (an unhandled exception in a servicer is logged at ERROR).

Policy files are fuzzed without a server: load_and_compile either succeeds or raises PolicyError.
AUTHZ_FUZZ_SCALE multiplies the example counts (default 1: 7,500 examples in all, a thousand
or more per target).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.config import CallerToken, Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.sso_forms import heroku_sso_form
from authz.facts.sso import FORM_FIELDS
from authz.policy.compile import load_and_compile
from authz.policy.load import PolicyError, load_policy_dir
from authz.server.convert import MAX_BATCH_ITEMS, MAX_DEPTH, MAX_ID, MAX_STRING
from authz.server.errors import error_info
from authz.v1 import admin_pb2, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import (
    SHIPPED_POLICIES,
    LoopThread,
    RecordingHandler,
    RunningService,
    with_bearer,
)
from tests.heroku_world import SALT, World, world_settings

SCALE = float(os.environ.get("AUTHZ_FUZZ_SCALE", "1"))
ACME = "authz-curved-12345"
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def fuzz(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- the oracle, derived from the shipped policies ------------------------------------------------

SSO_TERM = 'principal.auth.method == "heroku_sso"'


def test_every_shipped_allow_rule_requires_an_sso_session() -> None:
    """The fuzz oracle ("no direct principal is ever allowed") holds only while this does.

    If a new allow rule does not require `principal.auth.method == "heroku_sso"` as a plain
    conjunct, this fails: extend the oracle in this file to what that rule allows.
    """
    allow_rules = [
        rule
        for policy in load_policy_dir(SHIPPED_POLICIES).policies
        for rule in policy.rules
        if rule.effect.value == "ALLOW"
    ]
    assert allow_rules
    for rule in allow_rules:
        condition = " ".join((rule.when or "").split())
        assert SSO_TERM in condition, rule.id
        assert "||" not in condition and "?" not in condition, rule.id  # a plain conjunction


# -- one shared world for the property tests ------------------------------------------------------


class Shared:
    def __init__(self, world: World, log: RecordingHandler, revision: str) -> None:
        self.world = world
        self.log = log
        self.revision = revision
        self.authz = pb_grpc.AuthorizationServiceStub(world.svc.channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(world.svc.channel)
        self.acme = ""
        self.alice: dict[str, str] = {}
        self.decisions = 0

    def status_of(self, call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any, str]:
        try:
            return OK, call(), ""
        except grpc.RpcError as exc:
            return exc.code(), exc, exc.details() or ""

    def assert_quiet(self) -> None:
        errors = self.log.at_least(logging.ERROR)
        assert not errors, "\n".join(errors[:5])


@pytest.fixture(scope="module")
def shared(
    start_shared: Callable[..., RunningService],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shared]:
    handler = RecordingHandler(logging.WARNING)
    logging.getLogger().addHandler(handler)
    with HerokuSimulator(load_fixture()) as sim:
        base = Settings(
            listen="127.0.0.1:0",
            policy_dir=SHIPPED_POLICIES,
            data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        )
        svc = start_shared(world_settings(base, sim))
        world = World(sim, svc)
        state = Shared(world, handler, svc.service.policies.current.revision)
        state.acme = world.provision(ACME)
        state.alice = world.user("alice")
        yield state
    logging.getLogger().removeHandler(handler)


# -- strategies -----------------------------------------------------------------------------------

CATALOGUE = sorted(load_and_compile(SHIPPED_POLICIES).catalogue)
CEL_LOOKING = [
    "true || x",
    "true",
    ") || true || (",
    'principal.auth.method == "heroku_sso"',
    '" + "',
    "heroku_sso",
    "heroku_user",
    "addon",
    "*",
    "dashboard.*",
    "account.*",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "'; DROP TABLE audit_log; --",
    "%s%s%n",
    "../../etc/passwd",
    "\u202e\u0000\ufeff",
    "access.roles.exists(r, true)",
    "size(context) > 0 ? true : false",
]
# st.text() is valid UTF-8 only (no lone surrogates, which a protobuf string cannot hold).
TEXT = st.text(max_size=24)
IDENT = st.one_of(
    TEXT,
    st.sampled_from(CATALOGUE + CEL_LOOKING),
    st.integers(MAX_ID - 2, MAX_ID + 2).map(lambda n: "i" * n),
)
KEYS = st.one_of(TEXT, st.sampled_from(["auth", "method", "caller", "id", "type", "__proto__"]))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(CEL_LOOKING),
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


SMALL = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(KEYS, SCALARS, max_size=3),
)
JSON = st.one_of(
    SMALL,
    st.dictionaries(KEYS, SMALL, max_size=2),
    st.lists(SMALL, max_size=2),
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 3).map(nested),
    st.integers(MAX_STRING - 2, MAX_STRING + 2).map(lambda n: "é" * n),
)
STRUCT = st.dictionaries(KEYS, JSON, max_size=3)
SSO_CLAIM = st.fixed_dictionaries(
    {"auth": st.fixed_dictionaries({"method": st.just("heroku_sso"), "resource_id": TEXT})}
)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


@st.composite
def principals(draw: st.DrawFn) -> pb.Principal:
    kind = draw(st.one_of(IDENT, st.just("heroku_user")))
    attributes = draw(st.one_of(STRUCT, SSO_CLAIM))
    return pb.Principal(type=kind, id=draw(IDENT), attributes=struct(attributes))


@st.composite
def resources(draw: st.DrawFn) -> pb.Resource | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    kind = draw(st.one_of(st.just("addon"), IDENT))
    return pb.Resource(type=kind, id=draw(IDENT), attributes=struct(draw(STRUCT)))


@st.composite
def subjects(draw: st.DrawFn) -> dict[str, Any]:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return {}
    if choice <= 2:
        token = draw(st.one_of(TEXT, st.just("azs_" + "A" * 43), st.just("x" * (MAX_ID + 1))))
        return {"session_token": token}
    return {"principal": draw(principals())}


def check_requests() -> st.SearchStrategy[pb.CheckRequest]:
    @st.composite
    def build(draw: st.DrawFn) -> pb.CheckRequest:
        request = pb.CheckRequest(
            action=draw(IDENT),
            context=struct(draw(STRUCT)),
            request_id=draw(st.one_of(TEXT, st.just("r" * (MAX_ID + 1)))),
            **draw(subjects()),
        )
        resource = draw(resources())
        if resource is not None:
            request.resource.CopyFrom(resource)
        return request

    return build()


@st.composite
def batch_requests(draw: st.DrawFn) -> pb.CheckBatchRequest:
    def item(action: str, resource: pb.Resource | None, context: dict[str, Any]) -> pb.CheckItem:
        out = pb.CheckItem(action=action, context=struct(context))
        if resource is not None:
            out.resource.CopyFrom(resource)
        return out

    if draw(st.integers(0, 9)) == 0:  # around the batch limit
        n = draw(st.integers(MAX_BATCH_ITEMS - 1, MAX_BATCH_ITEMS + 2))
        resource = pb.Resource(type="addon", id=draw(IDENT))
        items = [item(CATALOGUE[i % len(CATALOGUE)], resource, {}) for i in range(n)]
    else:
        items = draw(st.lists(st.builds(item, IDENT, resources(), STRUCT), max_size=4))
    return pb.CheckBatchRequest(items=items, context=struct(draw(STRUCT)), **draw(subjects()))


SSO_FIELDS = [*FORM_FIELDS, "nav-data"]  # what Heroku sends, and one field we ignore
SSO_VALUES = st.one_of(
    TEXT,
    st.sampled_from(CEL_LOOKING),
    st.integers(0, 2**64).map(str),
    st.just(str(int(time.time()))),
    st.binary(min_size=20, max_size=32).map(bytes.hex),
    st.integers(1020, 1030).map(lambda n: "f" * n),
    st.sampled_from(["0" * 64, "0" * 40, "-1", "1e9", " 1", "١٢٣", "nan"]),
)


@st.composite
def sso_forms(draw: st.DrawFn, shared: Shared) -> tuple[dict[str, str], dict[str, str] | None]:
    """(form, the signed form it came from, if any)."""
    if draw(st.booleans()):
        form = draw(
            st.dictionaries(st.one_of(st.sampled_from(SSO_FIELDS), TEXT), SSO_VALUES, max_size=12)
        )
        return form, None
    signed = heroku_sso_form(
        shared.acme,
        shared.alice["id"],
        shared.alice["email"],
        SALT,
        token=draw(st.sampled_from(["sha256", "sha1", "both"])),
    )
    form = dict(signed)
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(SSO_FIELDS))
        if draw(st.booleans()) and field in form:
            del form[field]
        else:
            form[field] = draw(SSO_VALUES)
    return form, signed


# -- Check, CheckBatch, ExchangeSso ---------------------------------------------------------------


def assert_denied(shared: Shared, response: pb.CheckResponse) -> None:
    assert not response.allowed and response.effect == pb.EFFECT_DENY, response
    assert response.decision_id and response.policy_revision == shared.revision


@fuzz(2000)
@given(request=check_requests())
def test_check_never_fails_badly_nor_allows_a_direct_principal(
    shared: Shared, request: pb.CheckRequest
) -> None:
    code, response, details = shared.status_of(lambda: shared.authz.Check(request, timeout=10))
    assert code in (OK, INVALID), (code, details)
    if code == OK:
        assert_denied(shared, response)
    else:
        assert details and len(details) < 1000
    shared.assert_quiet()


@fuzz(1000)
@given(request=batch_requests())
def test_check_batch_never_fails_badly_nor_allows(
    shared: Shared, request: pb.CheckBatchRequest
) -> None:
    code, response, details = shared.status_of(lambda: shared.authz.CheckBatch(request, timeout=10))
    assert code in (OK, INVALID), (code, details)
    if code == OK:
        assert len(response.results) == len(request.items) <= MAX_BATCH_ITEMS
        for result in response.results:
            assert_denied(shared, result)
    else:
        assert details
    shared.assert_quiet()


@fuzz(2000)
@given(data=st.data())
def test_sso_exchange_accepts_only_signed_forms(shared: Shared, data: st.DataObject) -> None:
    form, signed = data.draw(sso_forms(shared))
    code, response, details = shared.status_of(
        lambda: shared.sessions.ExchangeSso(session_pb2.ExchangeSsoRequest(form=form), timeout=10)
    )
    assert code in (OK, INVALID, grpc.StatusCode.PERMISSION_DENIED), (code, details)
    if code == OK:
        assert signed is not None, form
        for field in ("resource_id", "timestamp", "user_id"):
            assert form.get(field) == signed[field]
        # SHA-1 is off by default: only a form with its SHA-256 token intact gets in.
        token = form.get("user_scoped_resource_token", "")
        assert token and token.lower() == signed["user_scoped_resource_token"], form
        assert response.principal_id == shared.alice["id"]
        assert response.session_token.startswith("azs_")
    else:
        info = error_info(response)
        assert info is not None and info.reason and info.metadata["decision_id"], details
        assert SALT not in details
    shared.assert_quiet()


# -- policy files ---------------------------------------------------------------------------------

CEL_PARTS = st.sampled_from(
    [
        "principal",
        "resource",
        "action",
        "context",
        "now",
        "access",
        "caller",
        "nope",
        ".id",
        ".type",
        ".auth.method",
        "[0]",
        '["k"]',
        " == ",
        " != ",
        " && ",
        " || ",
        "!",
        "(",
        ")",
        '"x"',
        "1",
        "1.5",
        "true",
        "null",
        " in ",
        "[",
        "]",
        ",",
        "size(",
        ".exists(r, ",
        "r",
        " ? ",
        " : ",
        "timestamp(",
        "duration(",
        " + ",
        " / 0",
    ]
)
CEL_TEXT = st.lists(CEL_PARTS, max_size=12).map("".join)
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), TEXT, CEL_TEXT, st.sampled_from(CATALOGUE)
)


@st.composite
def rule_docs(draw: st.DrawFn) -> Any:
    rule: dict[Any, Any] = {
        "id": draw(st.one_of(st.sampled_from(["r1", "r2", "bad id", ""]), TEXT)),
        "effect": draw(
            st.one_of(st.sampled_from(["allow", "deny", "ALLOW", "maybe"]), YAML_SCALARS)
        ),
        "actions": draw(
            st.one_of(
                st.lists(st.one_of(st.sampled_from(CATALOGUE + ["*", "a.*"]), TEXT), max_size=3),
                YAML_SCALARS,
            )
        ),
        "when": draw(st.one_of(CEL_TEXT, YAML_SCALARS)),
        "reason": draw(YAML_SCALARS),
    }
    if draw(st.booleans()):
        rule["resource_types"] = draw(st.one_of(st.lists(TEXT, max_size=2), YAML_SCALARS))
    for key in draw(st.lists(st.sampled_from(sorted(rule)), max_size=2)):
        rule.pop(key, None)
    if draw(st.integers(0, 5)) == 0:
        rule[draw(TEXT)] = draw(YAML_SCALARS)
    return rule


@st.composite
def policy_docs(draw: st.DrawFn) -> Any:
    doc: dict[Any, Any] = {
        "name": draw(st.one_of(st.sampled_from(["p", "q", "Bad Name"]), TEXT)),
        "rules": draw(st.one_of(st.lists(rule_docs(), max_size=3), YAML_SCALARS)),
    }
    if draw(st.booleans()):
        doc["actions"] = draw(
            st.one_of(
                st.dictionaries(st.sampled_from(CATALOGUE + ["x"]), TEXT, max_size=3), YAML_SCALARS
            )
        )
    if draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(YAML_SCALARS, st.lists(YAML_SCALARS, max_size=3)))
    return doc


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "name: p\n",
                "rules:\n",
                "  - id: r\n",
                "    effect: allow\n",
                "    actions: [a]\n",
                "    when: true || x\n",
                "    reason: r\n",
                "  - &a {id: r}\n",
                "  - *a\n",
                "  - *undefined\n",
                "!!python/object:os.system 'echo'\n",
                "? [complex, key]\n: v\n",
                "\t- tab\n",
                "---\n",
                "...\n",
                "%YAML 1.1\n",
                "x: !!binary aGVsbG8=\n",
                '"unterminated\n',
                "<<: *a\n",
            ]
        ),
        max_size=10,
    ).map("".join),
)


def load_text(texts: list[str]) -> None:
    """load_and_compile over a fresh directory holding these files: success or PolicyError."""
    with tempfile.TemporaryDirectory(prefix="authz-fuzz-") as directory:
        for i, text in enumerate(texts):
            Path(directory, f"p{i}.yaml").write_text(text, encoding="utf-8")
        try:
            policy_set = load_and_compile(Path(directory))
        except PolicyError as exc:
            assert exc.problems and all(str(p) for p in exc.problems)
        else:
            assert policy_set.revision


@fuzz(1500)
@given(texts=st.lists(YAML_TEXT, min_size=1, max_size=2))
def test_policy_text_loads_or_is_refused(texts: list[str]) -> None:
    load_text(texts)


@fuzz(1000)
@given(docs=st.lists(policy_docs(), min_size=1, max_size=2))
def test_policy_documents_load_or_are_refused(docs: list[Any]) -> None:
    load_text([yaml.safe_dump(doc, allow_unicode=True) for doc in docs])


# -- limits with clear errors ---------------------------------------------------------------------


def test_limits_are_refused_with_the_field_named(shared: Shared) -> None:
    def refused(request: Any, method: str = "Check") -> str:
        code, _, details = shared.status_of(
            lambda: getattr(shared.authz, method)(request, timeout=10)
        )
        assert code == INVALID, (code, details)
        return details

    principal = pb.Principal(type="service", id="web")
    resource = pb.Resource(type="addon", id="r")
    deep = pb.CheckRequest(principal=principal, action="a", resource=resource)
    deep.context.update({"outer": nested(MAX_DEPTH + 1)})
    assert "context.outer" in refused(deep) and "nested deeper" in refused(deep)
    long = pb.CheckRequest(principal=principal, action="a", resource=resource)
    long.resource.attributes.update({"note": "x" * (MAX_STRING + 1)})
    assert "resource.attributes.note" in refused(long)
    assert "principal.id" in refused(
        pb.CheckRequest(
            principal=pb.Principal(type="s", id="i" * (MAX_ID + 1)), action="a", resource=resource
        )
    )
    batch = pb.CheckBatchRequest(
        principal=principal,
        items=[pb.CheckItem(action="a", resource=resource)] * (MAX_BATCH_ITEMS + 1),
    )
    assert f"at most {MAX_BATCH_ITEMS}" in refused(batch, "CheckBatch")
    big = pb.CheckRequest(principal=principal, action="a", resource=resource)
    big.context.update({f"k{i}": "x" * 4000 for i in range(300)})  # about 1.2 MB
    code, _, details = shared.status_of(lambda: shared.authz.Check(big, timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    shared.assert_quiet()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_invalid_arguments(shared: Shared, value: float) -> None:
    request = pb.CheckRequest(
        principal=pb.Principal(type="service", id="web"),
        action="dashboard.view",
        resource=pb.Resource(type="addon", id="r"),
    )
    request.context.update({"x": value})
    code, _, details = shared.status_of(lambda: shared.authz.Check(request, timeout=10))
    assert code == INVALID, (code, details)


def test_deeply_nested_policy_yaml_is_a_policy_error() -> None:
    load_text(["name: p\nrules: " + "[" * 600 + "]" * 600 + "\n"])


def test_alias_bombs_and_huge_conditions_are_refused_quickly() -> None:
    laughs = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        laughs.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")

    def rule(when: str) -> str:
        fields = f"id: r, effect: allow, actions: [a], reason: r, when: '{when}'"
        return f"name: p\nrules:\n  - {{{fields}}}\n"

    started = time.perf_counter()
    load_text(["\n".join(laughs) + "\n"])  # 9^8 leaves if expanded
    load_text([rule(" && ".join(["true"] * 30_000))])  # over CEL's size limit
    load_text([rule("(" * 500 + "true" + ")" * 500)])  # over CEL's nesting limit
    assert time.perf_counter() - started < 10


# -- deadlines and stuck clients ------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


def test_deadlines_are_honoured_while_heroku_hangs(
    sim: HerokuSimulator, start: Callable[..., RunningService], base_settings: Settings
) -> None:
    world = World(sim, start(world_settings(base_settings, sim, facts_deadline=2.0)))
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    sim.add_fault("latency", path_prefix="/apps", seconds=6)
    world.admin.InvalidateAccess(
        admin_pb2.InvalidateAccessRequest(app_id=sim.addon(ACME)["app"]["id"])
    )
    request = pb.CheckRequest(
        session_token=token, action="dashboard.view", resource=pb.Resource(type="addon", id=acme)
    )
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        world.authz.Check(request, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 1.5
    # Meanwhile the server answers what does not need Heroku at once.
    started = time.perf_counter()
    direct = world.authz.Check(
        pb.CheckRequest(
            principal=pb.Principal(type="service", id="web"),
            action="dashboard.view",
            resource=pb.Resource(type="addon", id=acme),
        ),
        timeout=5,
    )
    assert not direct.allowed and time.perf_counter() - started < 0.5
    # Without a client deadline, the server's own (AUTHZ_FACTS_DEADLINE) bounds the wait.
    started = time.perf_counter()
    slow = world.authz.Check(request, timeout=30)
    waited = time.perf_counter() - started
    assert not slow.allowed and 1.5 < waited < 4, waited
    assert "access-list-unavailable" in {m.rule_id for m in slow.matched_rules}
    sim.clear_faults()


def test_stuck_and_slow_clients_cannot_exhaust_the_server(
    start: Callable[..., RunningService], base_settings: Settings, loop_thread: LoopThread
) -> None:
    """Idle sockets, half handshakes, calls that never send their request: none of them keeps
    the server from answering, and a flood beyond the call limit is refused, not queued."""
    settings = replace(
        base_settings,
        caller_tokens=(CallerToken.of("web", "web-token"),),
        max_concurrent_rpcs=8,
        request_timeout=1.0,
    )
    svc = start(settings)
    good = with_bearer(grpc.insecure_channel(svc.address), "web-token")
    request = pb.CheckRequest(
        principal=pb.Principal(type="service", id="x"),
        action="dashboard.view",
        resource=pb.Resource(type="addon", id="r"),
    )

    def answered_quickly() -> None:
        started = time.perf_counter()
        assert not pb_grpc.AuthorizationServiceStub(good).Check(request, timeout=5).allowed
        assert time.perf_counter() - started < 1.0

    host, port = svc.address.rsplit(":", 1)
    sockets = []
    for i in range(150):  # idle connections, garbage, and a bare HTTP/2 preface
        sock = socket.create_connection((host, int(port)), timeout=5)
        if i % 3 == 1:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 100)
        elif i % 3 == 2:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        sockets.append(sock)
    answered_quickly()

    async def stuck_calls(metadata: tuple[tuple[str, str], ...], n: int) -> list[Any]:
        """n Check calls whose request never comes: the client streams nothing."""
        release = asyncio.Event()
        channel = grpc.aio.insecure_channel(svc.address)
        method = channel.stream_unary(
            "/authz.v1.AuthorizationService/Check",
            request_serializer=lambda b: b,
            response_deserializer=pb.CheckResponse.FromString,
        )

        async def nothing() -> Any:
            await release.wait()
            return
            yield  # pragma: no cover (an async generator that yields nothing)

        calls = [method(nothing(), metadata=metadata, timeout=30) for _ in range(n)]
        return [channel, calls, release]

    async def finish(channel: grpc.aio.Channel, release: asyncio.Event) -> None:
        release.set()
        await asyncio.sleep(0.1)  # let the request iterators end
        await channel.close()

    async def outcomes(calls: list[Any]) -> set[grpc.StatusCode]:
        async def one(call: Any) -> grpc.StatusCode:
            try:
                await call
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return set(await asyncio.wait_for(asyncio.gather(*map(one, calls)), 5))

    # Without credentials they are refused at once, request or not: no call slot is held.
    channel, calls, release = loop_thread.run(stuck_calls((), 40))
    assert loop_thread.run(outcomes(calls)) == {grpc.StatusCode.UNAUTHENTICATED}
    loop_thread.run(finish(channel, release))
    answered_quickly()

    # With credentials they hold the slots only until the request timeout (1 s here); meanwhile
    # calls beyond the limit are refused at once (RESOURCE_EXHAUSTED), never left hanging.
    channel, calls, release = loop_thread.run(
        stuck_calls((("authorization", "Bearer web-token"),), 8)
    )
    time.sleep(0.3)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.AuthorizationServiceStub(good).Check(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.perf_counter() - started < 1.0
    assert loop_thread.run(outcomes(calls)) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    loop_thread.run(finish(channel, release))
    answered_quickly()
    for sock in sockets:
        sock.close()
    good.close()
