"""The AuthZEN Todo interop scenario and its API-gateway variant, through HTTP, against
`authz serve --policies examples/authzen-todo` with AUTHZ_HTTP_LISTEN set.

The expected answers are written from the scenario text (../shared/reference/authzen-todo.md),
one table per permission: who may do it, per user. They are asked as the working group's Todo
PEP asks them: single evaluations with `context: {}`, and batches with the subject and action at
the top and one resource per item, no context; batch answers are compared byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT

PID = {
    "rick": "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "morty": "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "summer": "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "beth": "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    "jerry": "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
}
EMAIL = {
    "rick": "rick@the-citadel.com",
    "morty": "morty@the-citadel.com",
    "summer": "summer@the-smiths.com",
    "beth": "beth@the-smiths.com",
    "jerry": "jerry@the-smiths.com",
}
USERS = tuple(PID)

# Roles: rick admin + evil_genius; morty, summer editor; beth, jerry viewer.
# Who may, per permission (the scenario's "Rules (exact)" table).
TODO_TABLE: dict[str, set[str]] = {
    # always
    "can_read_user": set(USERS),
    "can_read_todos": set(USERS),
    # admin or editor
    "can_create_todo": {"rick", "morty", "summer"},
    # evil_genius, or editor and owner: on the user's own todo...
    "can_update_todo own": {"rick", "morty", "summer"},
    # ...and on somebody else's
    "can_update_todo other's": {"rick"},
    # admin, or editor and owner
    "can_delete_todo own": {"rick", "morty", "summer"},
    "can_delete_todo other's": {"rick"},
}
# The gateway: method and route template; no ownership at the gateway.
GATEWAY_TABLE: dict[tuple[str, str], set[str]] = {
    ("GET", "/users/{userId}"): set(USERS),
    ("GET", "/todos"): set(USERS),
    ("POST", "/todos"): {"rick", "morty", "summer"},  # admin or editor
    ("PUT", "/todos/{todoId}"): {"rick", "morty", "summer"},  # evil_genius or editor
    ("DELETE", "/todos/{todoId}"): {"rick", "morty", "summer"},  # admin or editor
    # any other method/route pair is denied
    ("GET", "/todos/{todoId}"): set(),
    ("POST", "/users/{userId}"): set(),
    ("PATCH", "/todos/{todoId}"): set(),
    ("DELETE", "/todos"): set(),
}


@pytest.fixture(scope="module")
def pdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`authz serve --policies examples/authzen-todo` with AUTHZ_HTTP_LISTEN set: its base URL."""
    data = tmp_path_factory.mktemp("todo-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_") and k != "PORT"}
    env["AUTHZ_HTTP_LISTEN"] = "127.0.0.1:0"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authz.cli",
            "serve",
            "--policies",
            "examples/authzen-todo",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the gRPC listener
        line = process.stdout.readline()
        match = re.fullmatch(r"authz HTTP listener on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line + (process.stderr.read() if process.poll() is not None else "")
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def post(base: str, path: str, body: object) -> httpx.Response:
    return httpx.post(
        base + path,
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )


def decide(base: str, request: dict) -> bool:
    answer = post(base, "/access/v1/evaluation", request)
    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    assert isinstance(decision, bool)
    return decision


def todo_request(user: str, permission: str) -> dict:
    """The request the Todo PEP sends for `permission` ("can_update_todo own", ...)."""
    action, _, whose = permission.partition(" ")
    if action == "can_read_user":
        resource = {"type": "user", "id": EMAIL["morty"]}
    elif action in ("can_read_todos", "can_create_todo"):
        resource = {"type": "todo", "id": "todo-1"}
    else:
        owner = user if whose == "own" else ("beth" if user != "beth" else "morty")
        resource = {
            "type": "todo",
            "id": "7240d0db-8ff0-41ec-98b2-34a096273b92",
            "properties": {"ownerID": EMAIL[owner]},
        }
    return {
        "subject": {"type": "user", "id": PID[user]},
        "action": {"name": action},
        "resource": resource,
        "context": {},
    }


@pytest.mark.parametrize("permission", list(TODO_TABLE))
def test_todo_permissions_for_every_user(pdp: str, permission: str) -> None:
    got = {user for user in USERS if decide(pdp, todo_request(user, permission))}
    assert got == TODO_TABLE[permission]


@pytest.mark.parametrize(("method", "route"), list(GATEWAY_TABLE))
def test_gateway_routes_for_every_identity(pdp: str, method: str, route: str) -> None:
    got = {
        user
        for user in USERS
        if decide(
            pdp,
            {
                "subject": {"type": "identity", "id": PID[user]},
                "action": {"name": method},
                "resource": {"type": "route", "id": route},
                "context": {},
            },
        )
    }
    assert got == GATEWAY_TABLE[(method, route)]


def test_the_easy_to_get_wrong_points(pdp: str) -> None:
    beth_owns = todo_request("beth", "can_update_todo own")
    assert not decide(pdp, beth_owns)  # ownership alone grants nothing (a viewer)
    pid_owner = todo_request("morty", "can_update_todo own")
    pid_owner["resource"]["properties"]["ownerID"] = PID["morty"]
    assert not decide(pdp, pid_owner)  # ownerID holds an email, never a PID
    no_owner = todo_request("morty", "can_delete_todo own")
    del no_owner["resource"]["properties"]
    assert not decide(pdp, no_owner)
    unknown = todo_request("rick", "can_create_todo")
    unknown["action"]["name"] = "can_archive_todo"
    assert not decide(pdp, unknown)
    stranger = todo_request("rick", "can_create_todo")
    stranger["subject"]["id"] = "CiRmZDU2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
    assert not decide(pdp, stranger)
    assert decide(pdp, {**todo_request("jerry", "can_read_todos"), "context": None})
    own_record = todo_request("beth", "can_read_user")
    own_record["resource"]["id"] = PID["beth"]  # a user looking at their own record
    assert decide(pdp, own_record)
    # What a gateway adds (headers in the context, properties on the route) changes nothing.
    for user, allowed in (("summer", True), ("jerry", False)):
        gateway = {
            "subject": {"type": "identity", "id": PID[user], "properties": {"ip": "10.0.0.1"}},
            "action": {"name": "DELETE", "properties": {"path": "/todos/42"}},
            "resource": {"type": "route", "id": "/todos/{todoId}", "properties": {"v": 1}},
            "context": {"headers": {"user-agent": "gateway/1.0", "x-forwarded-for": "1.2.3.4"}},
        }
        assert decide(pdp, gateway) is allowed


@pytest.mark.parametrize("user", USERS)
def test_batch_as_the_todo_pep_sends_it(pdp: str, user: str) -> None:
    """Subject and action at the top, one resource per item, no context, no options: the
    answers in request order, each exactly {"decision": ...}."""
    owners = [*USERS, None]  # a todo of each user, and one without ownerID
    items = []
    for i, owner in enumerate(owners):
        resource: dict = {"type": "todo", "id": f"todo-uuid-{i}"}
        if owner is not None:
            resource["properties"] = {"ownerID": EMAIL[owner]}
        items.append({"resource": resource})
    answer = post(
        pdp,
        "/access/v1/evaluations",
        {
            "subject": {"type": "user", "id": PID[user]},
            "action": {"name": "can_update_todo"},
            "evaluations": items,
        },
    )
    assert answer.status_code == 200, answer.text
    # can_update_todo: evil_genius (rick) any todo; an editor (morty, summer) only its own.
    expected = [
        user == "rick" or (owner == user and user in ("morty", "summer")) for owner in owners
    ]
    assert (
        answer.content
        == json.dumps(
            {"evaluations": [{"decision": allowed} for allowed in expected]}, separators=(",", ":")
        ).encode()
    )


def test_batch_of_fully_specified_items_mixing_both_scenarios(pdp: str) -> None:
    cases = [
        (todo_request(user, permission), user in who)
        for permission, who in TODO_TABLE.items()
        for user in ("rick", "summer", "jerry")
    ] + [
        (
            {
                "subject": {"type": "identity", "id": PID[user]},
                "action": {"name": method},
                "resource": {"type": "route", "id": route},
            },
            user in who,
        )
        for (method, route), who in GATEWAY_TABLE.items()
        for user in ("morty", "beth")
    ]
    answer = post(pdp, "/access/v1/evaluations", {"evaluations": [c for c, _ in cases]})
    assert answer.status_code == 200, answer.text
    assert [d["decision"] for d in answer.json()["evaluations"]] == [e for _, e in cases]
    assert all(set(d) == {"decision"} for d in answer.json()["evaluations"])


def test_discovery_lists_every_endpoint(pdp: str) -> None:
    answer = httpx.get(pdp + "/.well-known/authzen-configuration", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "policy_decision_point": pdp,
        "access_evaluation_endpoint": pdp + "/access/v1/evaluation",
        "access_evaluations_endpoint": pdp + "/access/v1/evaluations",
        "search_subject_endpoint": pdp + "/access/v1/search/subject",
        "search_resource_endpoint": pdp + "/access/v1/search/resource",
        "search_action_endpoint": pdp + "/access/v1/search/action",
    }
    # Every endpoint named is served: a request without a body is refused as such, not 404.
    for key, url in answer.json().items():
        if key.endswith("_endpoint"):
            assert httpx.post(url, timeout=10).status_code == 400, key


def test_subject_search_finds_the_users_the_rules_allow(pdp: str) -> None:
    """Who may delete Morty's todo? An admin (rick) and its owner, an editor (morty)."""
    answer = post(
        pdp,
        "/access/v1/search/subject",
        {
            "subject": {"type": "user"},
            "action": {"name": "can_delete_todo"},
            "resource": {
                "type": "todo",
                "id": "7240d0db",
                "properties": {"ownerID": EMAIL["morty"]},
            },
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "page": {"next_token": "", "count": 2},
        "results": [{"type": "user", "id": PID["rick"]}, {"type": "user", "id": PID["morty"]}],
    }


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("rick", ["can_read_todos", "can_create_todo", "can_update_todo", "can_delete_todo"]),
        ("summer", ["can_read_todos", "can_create_todo", "can_update_todo", "can_delete_todo"]),
        ("beth", ["can_read_todos"]),
    ],
)
def test_action_search_on_a_todo(pdp: str, user: str, expected: list[str]) -> None:
    """On Summer's todo: the catalogue's actions each user may do (Rick as admin and evil
    genius, Summer as its owner and an editor; a `user` action or an HTTP method does not apply
    to a todo)."""
    answer = post(
        pdp,
        "/access/v1/search/action",
        {
            "subject": {"type": "user", "id": PID[user]},
            "resource": {
                "type": "todo",
                "id": "todo-9",
                "properties": {"ownerID": EMAIL["summer"]},
            },
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "page": {"next_token": "", "count": len(expected)},
        "results": [{"name": name} for name in expected],
    }
