"""The AuthZEN Authorization API 1.0 on the HTTP listener: requests, answers, errors, batches,
search and pagination, against a real server (start_service) with policies of its own.

The policies: users and documents in data/; anyone listed reads, a document's owner edits,
an admin deletes when the action's properties give a reason, and a rule that needs the
context's `channel` to be "web".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.audit.query import get, query
from authz.config import CallerToken, Settings
from authz.policy.load import load_policy_dir
from authz.policy.model import PolicyError
from authz.server.app import Service, start_service
from tests.conftest import LoopThread, write_policy_dir

POLICIES = {
    "catalogue.yaml": """
        name: catalogue
        actions:
          doc.read: Read a document
          doc.edit: Edit a document
          doc.delete: Delete a document
          doc.share: Share a document from the web
        resource_types:
          doc: A document
        searchable:
          subjects:
            user: data.users
          resources:
            doc: data.docs
    """,
    "docs.yaml": """
        name: docs
        rules:
          - id: listed-users-read
            effect: allow
            actions: [doc.read]
            when: principal.id in data.users
            reason: Every listed user reads
          - id: owners-edit
            effect: allow
            actions: [doc.edit]
            when: >-
              (has(resource.attributes.owner) && resource.attributes.owner == principal.id)
              || (resource.id in data.docs && data.docs[resource.id].owner == principal.id)
            reason: The owner edits
          - id: admins-delete-with-a-reason
            effect: allow
            actions: [doc.delete]
            when: >-
              principal.id in data.users && "admin" in data.users[principal.id].roles
              && context.action_properties.reason == "cleanup"
            reason: Admins delete, saying why
          - id: share-from-the-web
            effect: allow
            actions: [doc.share]
            when: context.channel == "web"
            reason: Sharing happens in the web application
    """,
    "data/users.yaml": """
        ada: {roles: [admin]}
        bob: {roles: []}
        cy: {roles: []}
    """,
    "data/docs.yaml": """
        d1: {owner: ada}
        d2: {owner: bob}
        d3: {owner: ada}
        d4: {owner: cy}
        d5: {owner: ada}
        d6: {owner: ada}
        d7: {owner: bob}
    """,
}
TOKEN = "tok-pep-0123456789abcdef"


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("authzen-policies")
    (directory / "data").mkdir()
    return write_policy_dir(directory, POLICIES)


@pytest.fixture
def serve(loop_thread: LoopThread) -> Iterator[Callable[[Settings], Service]]:
    started: list[Service] = []

    def _serve(settings: Settings) -> Service:
        service = loop_thread.run(start_service(replace(settings, http_listen="127.0.0.1:0")))
        started.append(service)
        return service

    yield _serve
    for service in reversed(started):
        loop_thread.run(service.stop(grace=1))


@pytest.fixture
def settings(base_settings: Settings, policies: Path) -> Settings:
    return replace(base_settings, policy_dir=policies)


@pytest.fixture
def pdp(serve: Callable[[Settings], Service], settings: Settings) -> Service:
    return serve(settings)


def url(service: Service, path: str) -> str:
    assert service.http is not None
    return service.http.url + path


def post(
    service: Service, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    """`body` as JSON (non-ASCII escaped, so a lone surrogate travels as its escape)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url(service, path), content=json.dumps(body), headers=headers, timeout=10)


def evaluation(subject: str, action: str, resource: str, **extra: Any) -> dict[str, Any]:
    return {
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "doc", "id": resource},
        **extra,
    }


def records(service: Service, request_id: str) -> list[dict[str, Any]]:
    found = query(service.audit.target, limit=None, oldest_first=True)
    return [r for r in found if r["request_id"] == request_id]


# -- single evaluation --------------------------------------------------------------------------


def test_single_evaluation_answers_with_its_explanation(pdp: Service) -> None:
    answer = post(pdp, "/access/v1/evaluation", evaluation("bob", "doc.edit", "d2"))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["decision"] is True
    context = body["context"]
    assert set(context) == {
        "decision_id",
        "policy_revision",
        "effect",
        "matched_rules",
        "reasons",
        "errors",
    }
    assert context["effect"] == "ALLOW"
    assert context["policy_revision"] == pdp.policies.current.revision
    assert context["matched_rules"] == [
        {"policy": "docs", "rule_id": "owners-edit", "effect": "ALLOW", "reason": "The owner edits"}
    ]
    assert context["reasons"] == ["The owner edits"] and context["errors"] == []
    record = get(pdp.audit.target, context["decision_id"])
    assert record is not None and record["effect"] == "ALLOW"

    denied = post(pdp, "/access/v1/evaluation", evaluation("bob", "doc.edit", "d1")).json()
    assert denied["decision"] is False
    assert denied["context"]["reasons"] == [
        "no allow rule matched action 'doc.edit' (default deny)"
    ]

    quiet = evaluation("bob", "doc.edit", "d2", options={"explain": False})
    assert post(pdp, "/access/v1/evaluation", quiet).content == b'{"decision":true}'


def test_every_decision_is_audited_with_its_interface_request_id_and_caller(
    serve: Callable[[Settings], Service], settings: Settings
) -> None:
    pdp = serve(replace(settings, caller_tokens=(CallerToken.of("todo-pep", TOKEN),)))
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "pep-request-17"}
    answer = post(
        pdp, "/access/v1/evaluation", evaluation("ada", "doc.read", "d4"), headers=headers
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "pep-request-17"
    [record] = records(pdp, "pep-request-17")
    assert record["decision_id"] == answer.json()["context"]["decision_id"]
    assert record["interface"] == "authzen"
    assert record["caller"] == "todo-pep"
    assert record["principal"]["id"] == "ada" and record["action"] == "doc.read"
    batch = {
        "subject": {"type": "user", "id": "ada"},
        "evaluations": [
            {"action": {"name": "doc.read"}, "resource": {"type": "doc", "id": "d1"}},
            {"action": {"name": "doc.edit"}, "resource": {"type": "doc", "id": "d2"}},
        ],
    }
    headers["X-Request-ID"] = "pep-batch-18"
    assert post(pdp, "/access/v1/evaluations", batch, headers=headers).status_code == 200
    audited = records(pdp, "pep-batch-18")
    assert [(r["action"], r["effect"], r["interface"]) for r in audited] == [
        ("doc.read", "ALLOW", "authzen"),
        ("doc.edit", "DENY", "authzen"),
    ]
    # Without an X-Request-ID, the one authz made up is echoed and recorded.
    answer = post(
        pdp,
        "/access/v1/evaluation",
        evaluation("cy", "doc.read", "d1"),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    made_up = answer.headers["x-request-id"]
    assert [r["decision_id"] for r in records(pdp, made_up)] == [
        answer.json()["context"]["decision_id"]
    ]


def test_callers_authenticate_as_on_grpc(
    serve: Callable[[Settings], Service], settings: Settings
) -> None:
    pdp = serve(replace(settings, caller_tokens=(CallerToken.of("todo-pep", TOKEN),)))
    request = evaluation("ada", "doc.read", "d1")
    for headers, challenge in (
        ({}, 'Bearer realm="authz"'),
        (
            {"Authorization": "Bearer not-the-token-at-all"},
            'Bearer realm="authz", error="invalid_token"',
        ),
    ):
        refused = post(pdp, "/access/v1/evaluation", request, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == challenge
        assert refused.headers["content-type"] == "application/json"
        message = refused.json()
        assert isinstance(message, str) and "Bearer" in message
        assert "not-the-token-at-all" not in message
    for path in ("/access/v1/evaluations", "/access/v1/search/action"):
        assert post(pdp, path, request).status_code == 401
    allowed = post(
        pdp, "/access/v1/evaluation", request, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert allowed.status_code == 200 and allowed.json()["decision"] is True
    # Discovery is open: it holds nothing but URLs.
    assert httpx.get(url(pdp, "/.well-known/authzen-configuration")).status_code == 200


def test_unknown_fields_are_ignored(pdp: Service) -> None:
    request = evaluation("ada", "doc.read", "d1", context={"channel": "app"}, extra={"x": [1]})
    request["subject"]["department"] = "Sales"
    request["action"]["verb"] = "GET"
    request["resource"]["owner"] = "bob"
    request["options"] = {"another_option": "value"}
    answer = post(pdp, "/access/v1/evaluation", request)
    assert answer.status_code == 200 and answer.json()["decision"] is True


def test_repeated_requests_get_the_same_decision(pdp: Service) -> None:
    request = evaluation("bob", "doc.delete", "d2", options={"explain": False})
    answers = {post(pdp, "/access/v1/evaluation", request).content for _ in range(3)}
    assert answers == {b'{"decision":false}'}


def test_action_properties_reach_policies_as_context_action_properties(pdp: Service) -> None:
    request = evaluation("ada", "doc.delete", "d4")
    assert post(pdp, "/access/v1/evaluation", request).json()["decision"] is False
    request["action"]["properties"] = {"reason": "cleanup"}
    answer = post(pdp, "/access/v1/evaluation", request).json()
    assert answer["decision"] is True
    record = get(pdp.audit.target, answer["context"]["decision_id"])
    assert record is not None
    assert record["input"]["context"] == {"action_properties": {"reason": "cleanup"}}
    request["action"]["properties"] = {"reason": "boredom"}
    assert post(pdp, "/access/v1/evaluation", request).json()["decision"] is False


# -- errors ---------------------------------------------------------------------------------------

GOOD = evaluation("ada", "doc.read", "d1")
BAD_BODIES: list[tuple[str, bytes | str, str | None, str]] = [
    ("not JSON content", json.dumps(GOOD), "text/plain", "Content-Type: application/json"),
    ("no content type", json.dumps(GOOD), None, "Content-Type: application/json"),
    ("empty body", b"", "application/json", "the request body is empty"),
    ("malformed JSON", b'{"subject": ', "application/json", "not valid JSON"),
    ("not an object", b"[1, 2]", "application/json", "must be a JSON object, not an array"),
    ("not UTF-8", b'{"a": "\xff"}', "application/json", "not UTF-8"),
    ("NaN", b'{"context": {"x": NaN}}', "application/json", "NaN is not a JSON number"),
    (
        "duplicate key",
        b'{"subject": {"type": "user", "id": "ada", "id": "bob"}}',
        "application/json",
        "the key 'id' appears twice",
    ),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too"),
    (
        "an infinite number",
        json.dumps({**GOOD, "context": {"x": 0}}).replace('"x": 0', '"x": 1e999'),
        "application/json",
        "context.x: the number is not finite",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_unreadable_bodies_are_400_with_a_message(
    pdp: Service, body: bytes | str, content_type: str | None, message: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/access/v1/evaluation", "/access/v1/evaluations", "/access/v1/search/action"):
        answer = httpx.post(url(pdp, path), content=body, headers=headers, timeout=10)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert message in answer.json(), answer.json()


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


def _with(path: str, value: Any) -> dict[str, Any]:
    request = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    target = request
    for parent in parents:
        target = target[parent]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return request


_DROP = object()
BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("no subject", _without("subject"), "subject is missing"),
    ("no action", _without("action"), "action is missing"),
    ("no resource", _without("resource"), "resource is missing"),
    (
        "subject a string",
        _with("subject", "ada"),
        "subject must be an object {type, id}, not a string",
    ),
    ("no subject type", _with("subject.type", _DROP), "subject.type is missing"),
    ("no subject id", _with("subject.id", _DROP), "subject.id is missing"),
    ("empty resource id", _with("resource.id", ""), "resource.id is missing"),
    ("no action name", _with("action.name", _DROP), "action.name is missing"),
    (
        "action name a number",
        _with("action.name", 123),
        "action.name must be a string, not a number",
    ),
    (
        "type a list",
        _with("resource.type", ["doc"]),
        "resource.type must be a string, not an array",
    ),
    ("id with a space", _with("subject.id", "a da"), "subject.id contains whitespace"),
    ("id too long", _with("subject.id", "a" * 257), "subject.id is longer than 256"),
    ("properties a list", _with("subject.properties", [1]), "subject.properties must be an object"),
    ("context a string", _with("context", "now"), "context must be an object, not a string"),
    ("huge integer", _with("context", {"n": 2**60}), "context.n: 1152921504606846976 is beyond"),
    (
        "deep context",
        _with(
            "context",
            {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}},
        ),
        "nested deeper than 10",
    ),
    ("long string", _with("resource.properties", {"s": "x" * 5000}), "longer than 4096"),
    ("lone surrogate", _with("context", {"s": "\ud800"}), "lone UTF-16 surrogate"),
    (
        "explain not a bool",
        {**GOOD, "options": {"explain": "yes"}},
        "options.explain must be true or false",
    ),
    ("options a list", {**GOOD, "options": []}, "options must be an object"),
    (
        "session with properties",
        _with("subject", {"type": "session", "id": "azs_x", "properties": {"admin": True}}),
        "a session subject takes none",
    ),
    (
        "action properties twice",
        {**_with("action.properties", {"reason": "cleanup"}), "context": {"action_properties": {}}},
        "context.action_properties is where action.properties go",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_invalid_evaluations_are_400_naming_the_field(
    pdp: Service, request_body: dict[str, Any], message: str
) -> None:
    answer = post(pdp, "/access/v1/evaluation", request_body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()
    # The same request as a batch's only item: a per-item error in a 200 answer.
    batch = post(pdp, "/access/v1/evaluations", {"evaluations": [request_body]})
    if "options" in request_body:  # options are the batch's own, not the item's
        return
    assert batch.status_code == 200, batch.text
    [item] = batch.json()["evaluations"]
    assert item["decision"] is False
    assert item["context"]["error"]["status"] == 400
    assert item["context"]["error"]["message"].startswith("evaluations[0]: ")
    assert message in item["context"]["error"]["message"]


def test_unknown_paths_and_methods_answer_in_the_authzen_shape(pdp: Service) -> None:
    missing = post(pdp, "/access/v1/nothing", GOOD)
    assert missing.status_code == 404
    assert missing.json() == "nothing is served at /access/v1/nothing"
    wrong = httpx.get(url(pdp, "/access/v1/evaluation"))
    assert wrong.status_code == 405
    assert wrong.json().startswith("GET is not allowed on /access/v1/evaluation")
    too_large = httpx.post(
        url(pdp, "/access/v1/evaluation"),
        content=b"{" + b" " * (1 << 20) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert too_large.status_code == 413 and "larger than" in too_large.json()


def test_a_decision_that_cannot_be_recorded_is_not_answered(
    serve: Callable[[Settings], Service], settings: Settings, loop_thread: LoopThread
) -> None:
    pdp = serve(settings)
    loop_thread.run(pdp.audit.aclose())
    for path, body in (
        ("/access/v1/evaluation", GOOD),
        ("/access/v1/evaluations", {"evaluations": [GOOD]}),
        ("/access/v1/search/action", {"subject": GOOD["subject"], "resource": GOOD["resource"]}),
    ):
        answer = post(pdp, path, body)
        assert answer.status_code == 503, answer.text
        assert "audit log could not record it" in answer.json()
        assert answer.headers["retry-after"] == "1"


# -- batches ------------------------------------------------------------------------------------


def test_batch_items_replace_defaults_as_whole_objects(pdp: Service) -> None:
    body = {
        "subject": {"type": "user", "id": "bob"},
        "action": {"name": "doc.edit"},
        # bob owns this one by its attribute (d9 is in no list)
        "resource": {"type": "doc", "id": "d9", "properties": {"owner": "bob"}},
        "context": {"channel": "web"},
        "evaluations": [
            {},  # every default
            {"resource": {"type": "doc", "id": "d9"}},  # no properties: no owner, not merged
            {"subject": {"type": "user", "id": "ada"}},  # ada does not own d9
            {"action": {"name": "doc.share"}},  # the default context says web
            {"action": {"name": "doc.share"}, "context": {"other": 1}},  # replaced: no channel
            {"action": {"name": "doc.share"}, "context": None},  # null: the default applies
        ],
    }
    answer = post(pdp, "/access/v1/evaluations", body)
    assert answer.status_code == 200
    assert [e["decision"] for e in answer.json()["evaluations"]] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]


def test_defaults_may_be_left_out_only_where_every_item_has_its_own(pdp: Service) -> None:
    body = {
        "action": {"name": "doc.read"},
        "resource": {},  # a default no item uses is never validated
        "evaluations": [
            {"subject": {"type": "user", "id": "ada"}, "resource": {"type": "doc", "id": "d1"}},
            {"subject": {"type": "user", "id": "zed"}, "resource": {"type": "doc", "id": "d1"}},
            {"resource": {"type": "doc", "id": "d1"}},
            "not an item",
        ],
    }
    answer = post(pdp, "/access/v1/evaluations", body)
    assert answer.status_code == 200
    first, second, third, fourth = answer.json()["evaluations"]
    assert first == {"decision": True} and second == {"decision": False}
    assert third["decision"] is False
    assert third["context"]["error"]["message"] == (
        "evaluations[2]: subject is missing; send subject {type, id}"
    )
    assert fourth["context"]["error"]["message"] == (
        "evaluations[3] must be an object, not a string"
    )


def test_batch_payload_errors_are_400(pdp: Service) -> None:
    item = {"resource": {"type": "doc", "id": "d1"}}
    for body, message in (
        ({"evaluations": {"a": 1}}, "evaluations must be an array"),
        ({"evaluations": [item] * 101}, "evaluations has 101 items; at most 100"),
        ({"subject": "ada", "evaluations": [item]}, "subject must be an object, not a string"),
        (
            {"evaluations": [item], "options": {"evaluations_semantic": "first_deny"}},
            "options.evaluations_semantic must be one of execute_all, deny_on_first_deny, "
            "permit_on_first_permit",
        ),
    ):
        answer = post(pdp, "/access/v1/evaluations", body)
        assert answer.status_code == 400, body
        assert message in answer.json()


def test_a_batch_without_evaluations_is_a_single_evaluation(pdp: Service) -> None:
    for evaluations in ({}, {"evaluations": []}):
        answer = post(pdp, "/access/v1/evaluations", {**GOOD, **evaluations}).json()
        assert answer["decision"] is True and "decision_id" in answer["context"]
    assert post(pdp, "/access/v1/evaluations", {"evaluations": []}).status_code == 400


THREE = {
    "subject": {"type": "user", "id": "bob"},
    "action": {"name": "doc.edit"},
    "evaluations": [
        {"resource": {"type": "doc", "id": "d2"}},  # bob's: permit
        {"resource": {"type": "doc", "id": "d1"}},  # ada's: deny
        {"resource": {"type": "doc", "id": "d7"}},  # bob's: permit
    ],
}


@pytest.mark.parametrize(
    ("semantic", "expected"),
    [
        (None, b'{"evaluations":[{"decision":true},{"decision":false},{"decision":true}]}'),
        (
            "execute_all",
            b'{"evaluations":[{"decision":true},{"decision":false},{"decision":true}]}',
        ),
        (
            "deny_on_first_deny",
            b'{"evaluations":[{"decision":true},{"decision":false,'
            b'"context":{"code":"200","reason":"deny_on_first_deny"}}]}',
        ),
        ("permit_on_first_permit", b'{"evaluations":[{"decision":true}]}'),
    ],
)
def test_evaluation_semantics(pdp: Service, semantic: str | None, expected: bytes) -> None:
    body = dict(THREE)
    if semantic:
        body["options"] = {"evaluations_semantic": semantic}
    request_id = f"semantic-{semantic}"
    answer = post(pdp, "/access/v1/evaluations", body, headers={"X-Request-ID": request_id})
    assert answer.status_code == 200
    assert answer.content == expected
    # Items after the one that decided are neither decided nor recorded.
    assert len(records(pdp, request_id)) == answer.content.count(b'"decision"')


def test_short_circuits_count_errors_as_denies(pdp: Service) -> None:
    body = json.loads(json.dumps(THREE))
    body["evaluations"].insert(1, {"resource": {"type": "doc"}})
    body["options"] = {"evaluations_semantic": "deny_on_first_deny"}
    answers = post(pdp, "/access/v1/evaluations", body).json()["evaluations"]
    assert [a["decision"] for a in answers] == [True, False]
    assert answers[1]["context"]["error"]["message"].startswith("evaluations[1]: resource.id")
    body["options"] = {"evaluations_semantic": "permit_on_first_permit"}
    body["evaluations"] = body["evaluations"][1:]
    answers = post(pdp, "/access/v1/evaluations", body).json()["evaluations"]
    assert [a["decision"] for a in answers] == [False, False, True]


def test_batch_explanations_only_when_asked(pdp: Service) -> None:
    body = {**THREE, "options": {"explain": True}}
    answers = post(pdp, "/access/v1/evaluations", body).json()["evaluations"]
    assert [a["context"]["effect"] for a in answers] == ["ALLOW", "DENY", "ALLOW"]
    assert len({a["context"]["decision_id"] for a in answers}) == 3


# -- sessions -------------------------------------------------------------------------------------


def test_an_unknown_session_is_denied_and_its_token_never_recorded(pdp: Service) -> None:
    token = "azs_" + "Q" * 43
    request = {
        "subject": {"type": "session", "id": token},
        "action": {"name": "doc.read"},
        "resource": {"type": "doc", "id": "d1"},
    }
    answer = post(pdp, "/access/v1/evaluation", request, headers={"X-Request-ID": "s-1"}).json()
    assert answer["decision"] is False
    assert answer["context"]["reasons"][0].startswith("SESSION_UNKNOWN")
    [record] = records(pdp, "s-1")
    assert token not in json.dumps(record)
    assert record["principal"]["type"] == "heroku_user"


# -- search -------------------------------------------------------------------------------------


def search(pdp: Service, kind: str, body: dict[str, Any]) -> httpx.Response:
    return post(pdp, f"/access/v1/search/{kind}", body)


def test_resource_search_pages_through_the_declared_list(pdp: Service) -> None:
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": "ada"},
        "action": {"name": "doc.edit"},
        "resource": {"type": "doc", "id": "ignored"},
        "page": {"limit": 2},
    }
    pages = []
    while True:
        answer = search(pdp, "resource", body)
        assert answer.status_code == 200, answer.text
        assert list(answer.json()) == ["page", "results"]  # the page first
        pages.append(answer.json())
        token = answer.json()["page"]["next_token"]
        if not token:
            break
        body["page"] = {"limit": 2, "token": token}
    ids = [[r["id"] for r in page["results"]] for page in pages]
    assert ids == [["d1", "d3"], ["d5", "d6"], []]
    assert [page["page"]["count"] for page in pages] == [2, 2, 0]
    assert all(r["type"] == "doc" for page in pages for r in page["results"])
    # Without a limit, the default page holds them all.
    del body["page"]
    assert search(pdp, "resource", body).json() == {
        "page": {"next_token": "", "count": 4},
        "results": [{"type": "doc", "id": d} for d in ("d1", "d3", "d5", "d6")],
    }


def test_a_page_token_works_only_for_its_own_request(pdp: Service) -> None:
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": "ada"},
        "action": {"name": "doc.edit"},
        "resource": {"type": "doc"},
        "page": {"limit": 1},
    }
    token = search(pdp, "resource", body).json()["page"]["next_token"]
    assert token
    follow = {**body, "page": {"limit": 1, "token": token}}
    assert search(pdp, "resource", follow).json()["results"] == [{"type": "doc", "id": "d3"}]
    # The searched entity's id is ignored, so it may change.
    same = {**follow, "resource": {"type": "doc", "id": "anything"}}
    assert search(pdp, "resource", same).status_code == 200
    for changed in (
        {**follow, "subject": {"type": "user", "id": "bob"}},
        {**follow, "action": {"name": "doc.read"}},
        {**follow, "context": {"channel": "web"}},
        {**follow, "page": {"limit": 2, "token": token}},
    ):
        answer = search(pdp, "resource", changed)
        assert answer.status_code == 400
        assert "page.token belongs to another request" in answer.json()
    for garbage in ("not-a-token", "MTI", 7):
        answer = search(pdp, "resource", {**body, "page": {"token": garbage}})
        assert answer.status_code == 400
    # A token from another kind of search does not work here either.
    action_body = {"subject": body["subject"], "resource": {"type": "doc", "id": "d1"}}
    action_token = search(pdp, "action", {**action_body, "page": {"limit": 1}}).json()["page"]
    assert action_token["next_token"]
    answer = search(
        pdp, "resource", {**body, "page": {"limit": 1, "token": action_token["next_token"]}}
    )
    assert answer.status_code == 400


def test_page_limit_must_be_a_non_negative_integer(pdp: Service) -> None:
    body = {"subject": GOOD["subject"], "resource": GOOD["resource"]}
    for limit in (-1, 1.5, "2", True):
        answer = search(pdp, "action", {**body, "page": {"limit": limit}})
        assert answer.status_code == 400 and "page.limit" in answer.json()
    assert search(pdp, "action", {**body, "page": {"limit": 0}}).json()["page"]["next_token"] == ""
    assert search(pdp, "action", {**body, "page": "next"}).status_code == 400


def test_subject_search_with_explanations(pdp: Service) -> None:
    body = {
        "subject": {"type": "user"},
        "action": {"name": "doc.edit"},
        "resource": {"type": "doc", "id": "d4"},
        "options": {"explain": True},
    }
    answer = search(pdp, "subject", body).json()
    assert answer["results"] == [{"type": "user", "id": "cy"}]
    evaluated = answer["context"]["evaluated"]
    assert [(e["id"], e["decision"]) for e in evaluated] == [
        ("ada", False),
        ("bob", False),
        ("cy", True),
    ]
    assert evaluated[0]["context"]["reasons"] == [
        "no allow rule matched action 'doc.edit' (default deny)"
    ]


def test_action_search_lists_the_catalogue_actions_allowed(pdp: Service) -> None:
    body = {
        "subject": {"type": "user", "id": "bob"},
        "resource": {"type": "doc", "id": "d2"},
        "context": {"channel": "web"},
    }
    answer = search(pdp, "action", body)
    assert answer.json() == {
        "page": {"next_token": "", "count": 3},
        "results": [{"name": "doc.read"}, {"name": "doc.edit"}, {"name": "doc.share"}],
    }
    assert search(pdp, "action", {**body, "action": {"name": "doc.read"}}).json() == answer.json()


def test_searches_the_policies_cannot_answer_find_nothing(pdp: Service) -> None:
    for kind, body in (
        (
            "subject",
            {
                "subject": {"type": "group"},
                "action": {"name": "doc.read"},
                "resource": GOOD["resource"],
            },
        ),
        (
            "resource",
            {
                "subject": GOOD["subject"],
                "action": {"name": "doc.read"},
                "resource": {"type": "folder"},
            },
        ),
    ):
        answer = search(pdp, kind, body)
        assert answer.status_code == 200
        assert answer.json() == {"page": {"next_token": "", "count": 0}, "results": []}
        explained = search(pdp, kind, {**body, "options": {"explain": True}}).json()
        assert "is not searchable" in explained["context"]["reason"]


def test_search_inputs_are_required(pdp: Service) -> None:
    cases = [
        ("action", {"resource": GOOD["resource"]}, "subject is missing"),
        ("action", {"subject": GOOD["subject"]}, "resource is missing"),
        (
            "action",
            {"subject": {"type": "user"}, "resource": GOOD["resource"]},
            "subject.id is missing",
        ),
        (
            "subject",
            {"subject": {"type": "user"}, "resource": GOOD["resource"]},
            "action is missing",
        ),
        (
            "subject",
            {"subject": {"id": "x"}, "action": GOOD["action"], "resource": GOOD["resource"]},
            "subject.type is missing",
        ),
        (
            "subject",
            {"subject": {"type": "user"}, "action": GOOD["action"], "resource": {"type": "doc"}},
            "resource.id is missing",
        ),
        ("resource", {"subject": GOOD["subject"], "action": GOOD["action"]}, "resource is missing"),
        (
            "resource",
            {"subject": {"type": "user"}, "action": GOOD["action"], "resource": {"type": "doc"}},
            "subject.id is missing",
        ),
    ]
    for kind, body, message in cases:
        answer = search(pdp, kind, body)
        assert answer.status_code == 400, (kind, body)
        assert message in answer.json()


# -- declaring searchable lists -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("searchable", "data", "message"),
    [
        (
            "subjects: {user: data.people}",
            {},
            "catalogue.yaml:4: error: searchable.subjects.user: data.people names nothing",
        ),
        (
            "subjects: {user: data.users.count}",
            {"users.yaml": "count: 3\n"},
            "data.users.count is not a list of ids",
        ),
        ("subjects: {user: data.users}", {"users.yaml": "- 1\n- 2\n"}, "is not a list of ids"),
        ("subjects: {user: users}", {}, "must name a list in data, like data.users"),
        ("actions: {x: data.users}", {}, "unknown searchable kind 'actions'"),
        ("subjects: [data.users]", {}, "'searchable.subjects' must map each type to a data list"),
    ],
)
def test_searchable_lists_are_checked_when_the_set_loads(
    tmp_path: Path, searchable: str, data: dict[str, str], message: str
) -> None:
    directory = write_policy_dir(
        tmp_path / "p",
        {
            "catalogue.yaml": f"name: catalogue\nactions: {{a: A}}\nsearchable:\n  {searchable}\n",
            "rules.yaml": "name: r\nrules: [{id: r, effect: allow, actions: [a], reason: R}]\n",
        },
    )
    if data:
        (directory / "data").mkdir()
        for name, text in data.items():
            (directory / "data" / name).write_text(text)
    with pytest.raises(PolicyError) as refused:
        load_policy_dir(directory)
    assert message in str(refused.value)


def test_searchable_accepts_mappings_and_lists_of_ids(tmp_path: Path) -> None:
    directory = write_policy_dir(
        tmp_path / "p",
        {
            "catalogue.yaml": """
                name: catalogue
                actions: {a: A}
                searchable:
                  subjects: {user: data.users, team: data.org.teams}
                  resources: {doc: data.docs}
            """,
            "other.yaml": "name: other\nsearchable: {subjects: {user: data.users}}\n",
        },
    )
    (directory / "data").mkdir()
    (directory / "data" / "users.yaml").write_text("u1: {}\nu2: {}\n")
    (directory / "data" / "org.yaml").write_text("teams: [red, blue]\n")
    (directory / "data" / "docs.json").write_text('[{"id": "d1"}, {"id": "d2", "x": 1}]')
    with pytest.raises(PolicyError, match="searchable subjects type 'user' is also declared at"):
        load_policy_dir(directory)
    (directory / "other.yaml").unlink()
    loaded = load_policy_dir(directory)
    [catalogue] = loaded.policies
    assert [(s.kind, s.type, s.reference) for s in catalogue.searchable] == [
        ("subjects", "user", "data.users"),
        ("subjects", "team", "data.org.teams"),
        ("resources", "doc", "data.docs"),
    ]


def test_discovery_names_the_public_url_when_one_is_set(
    serve: Callable[[Settings], Service], settings: Settings
) -> None:
    """Behind a router that ends TLS the request's own base URL says http://; the discovery
    document must name the URL clients use (AUTHZ_PUBLIC_URL), resolved to the bound port."""
    service = serve(replace(settings, public_url="http://localhost:0"))
    assert service.http is not None
    document = httpx.get(url(service, "/.well-known/authzen-configuration"), timeout=10).json()
    public = f"http://localhost:{service.http.port}"
    assert document["policy_decision_point"] == public
    assert document["access_evaluation_endpoint"] == public + "/access/v1/evaluation"
    assert document["search_action_endpoint"] == public + "/access/v1/search/action"
