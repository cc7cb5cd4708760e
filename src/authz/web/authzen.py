"""The OpenID AuthZEN Authorization API 1.0 on the HTTP listener.

Spec: "Authorization API 1.0" (openid/authzen, api/authorization-api-1_0.md); § below names its
sections. Served for authenticated callers (the gRPC callers, authz.web.auth):

- POST /access/v1/evaluation         one decision (§ Access Evaluation API)
- POST /access/v1/evaluations        a batch, with defaults and the three semantics (§ Access
                                     Evaluations API)
- POST /access/v1/search/action      search (§ Search APIs): actions from the catalogue,
- POST /access/v1/search/subject     subjects and resources from the data lists the policies
- POST /access/v1/search/resource    declare `searchable:` (authz.search)
- GET  /.well-known/authzen-configuration   the PDP metadata (§ Policy Decision Point Metadata),
                                     open to every client: it holds nothing but URLs

Mapping onto authz's input: subject {type, id, properties} → principal {type, id, attributes};
action.name → action, and action.properties (when sent) → context.action_properties; resource
{type, id, properties} → resource {type, id, attributes}; context → context. The subject
{"type": "session", "id": "<session token>"} is a Heroku SSO session: it resolves to the
verified Heroku user exactly as gRPC's session_token does, and takes no properties (a request
with any is refused, since nothing the caller says may add to a verified login).

This module only translates JSON to and from the use cases: authz.evaluations decides (through
authz.decide.Decider) and authz.search searches, every decision recorded in the audit log with
interface "authzen", the caller and the request's X-Request-ID.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authz.audit.errors import AuditUnavailable
from authz.decide import Decider, Entity, Outcome
from authz.evaluations import (
    DENY_ON_FIRST_DENY,
    EXECUTE_ALL,
    SEMANTICS,
    Decisions,
    Evaluation,
    SubjectRef,
    canonical,
)
from authz.policy.files import text_problem
from authz.provisioning import Provisioning
from authz.search import (
    Asked,
    SearchPage,
    SearchUnsupported,
    search_actions,
    search_resources,
    search_subjects,
)
from authz.server import convert
from authz.server.convert import BadRequest
from authz.web.auth import Access
from authz.web.errors import HttpError
from authz.web.routing import RouteGroup, WebParts, request_id, route

PREFIX = "/access/v1"
EVALUATION = f"{PREFIX}/evaluation"
EVALUATIONS = f"{PREFIX}/evaluations"
SEARCH_SUBJECT = f"{PREFIX}/search/subject"
SEARCH_RESOURCE = f"{PREFIX}/search/resource"
SEARCH_ACTION = f"{PREFIX}/search/action"
CONFIGURATION = "/.well-known/authzen-configuration"
INTERFACE = "authzen"

SESSION = "session"
"""The subject type that names a Heroku SSO session by its token."""
ACTION_PROPERTIES = "action_properties"
"""The context key action.properties are put under for policies."""
MAX_EVALUATIONS = convert.MAX_BATCH_ITEMS
DEFAULT_PAGE = 100
"""Results per search page when the request sets no page.limit (or 0)."""
MAX_PAGE = 1000
"""The largest page.limit honoured; a larger one gets pages of this size."""
MAX_SCAN = 1000
"""Candidates one search request decides at most, whatever its limit (see authz.search)."""
_MAX_NUMBER = 2**53  # I-JSON (RFC 7493 §2.2): integers beyond this are not exact in JSON


def routes(parts: WebParts) -> RouteGroup:
    api = AuthZen(parts.decider, parts.provisioning)
    posts = {
        EVALUATION: api.evaluation,
        EVALUATIONS: api.evaluations,
        SEARCH_ACTION: api.search_action,
        SEARCH_SUBJECT: api.search_subject,
        SEARCH_RESOURCE: api.search_resource,
    }
    return RouteGroup(
        "authzen",
        [
            *(
                route(path, _translating_errors(handler), access=Access.CALLER, methods=["POST"])
                for path, handler in posts.items()
            ),
            route(CONFIGURATION, api.configuration, access=Access.OPEN),
        ],
        prefix=PREFIX,
        render_error=render_error,
    )


def render_error(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """§ Error Responses: the body of a 400, 401, 403 or 500 is "an error message string". authz
    sends it as a JSON string (`"subject.id is missing; ..."`, Content-Type application/json)."""
    return JSONResponse(message, status_code=status, headers=dict(headers))


def _translating_errors(
    handler: Callable[[Request, str], Awaitable[Response]],
) -> Callable[[Request, str], Awaitable[Response]]:
    async def handle(request: Request, caller: str) -> Response:
        try:
            return await handler(request, caller)
        except BadRequest as exc:
            raise HttpError(400, str(exc)) from None
        except AuditUnavailable as exc:
            raise HttpError(
                503,
                f"decision not answered because the audit log could not record it ({exc}); "
                "authz fails closed — retry, and check the audit database's disk and locks",
                {"Retry-After": "1"},
            ) from None

    handle.__name__ = handler.__name__
    return handle


# -- the endpoints ------------------------------------------------------------------------------


class AuthZen:
    def __init__(self, decider: Decider, provisioning: Provisioning | None = None) -> None:
        self.decider = decider
        self.provisioning = provisioning  # holds AUTHZ_PUBLIC_URL once the listener is bound

    async def configuration(self, request: Request, caller: str) -> Response:
        """§ Policy Decision Point Metadata: every endpoint this listener serves, as absolute
        URLs. The base is AUTHZ_PUBLIC_URL when set: behind Heroku's router, which ends TLS, the
        request's own base URL would say http:// where clients use https://."""
        public_url = self.provisioning.public_url if self.provisioning is not None else None
        return metadata(public_url or str(request.base_url).rstrip("/"))

    async def evaluation(self, request: Request, caller: str) -> Response:
        """§ Access Evaluation API. The answer's context is authz's explanation (`explanation`)
        unless the request says `"options": {"explain": false}`."""
        return await self._single(await read_body(request), request, caller)

    async def _single(self, body: dict[str, Any], request: Request, caller: str) -> Response:
        explain = _explain(body, default=True)
        evaluation = evaluation_of(body)
        self._conforming(evaluation)
        [outcome] = await self._decisions(request, caller).all([evaluation])
        return JSONResponse(decision_answer(outcome, explain))

    def _conforming(self, evaluation: Evaluation, where: str = "") -> None:
        """The request's attributes against the serving set's schemas, as gRPC Check does."""
        convert.conforming(
            self.decider.policies.current,
            evaluation.subject.principal,
            [evaluation.resource],
            where,
        )

    def _decisions(self, request: Request, caller: str) -> Decisions:
        return Decisions(self.decider, request_id(request), caller, INTERFACE)

    async def evaluations(self, request: Request, caller: str) -> Response:
        """§ Access Evaluations API. Without `evaluations` (or with an empty one) it is the single
        evaluation. Otherwise each item is its request's subject, action, resource and context,
        each replaced as a whole by the item's own; the answers are `{"decision": ...}` in request
        order, with authz's explanation only when `options.explain` is true. An item that is not
        a valid evaluation is answered `decision: false` with `context.error` {status: 400,
        message}; the rest of the batch is decided."""
        body = await read_body(request)
        items = body.get("evaluations")
        if items is None or items == []:
            return await self._single(body, request, caller)
        if not isinstance(items, list):
            raise BadRequest(f"evaluations must be an array of evaluations, not {_kind(items)}")
        if len(items) > MAX_EVALUATIONS:
            raise BadRequest(
                f"evaluations has {len(items)} items; at most {MAX_EVALUATIONS} per request"
            )
        options = _options(body)
        semantic = options.get("evaluations_semantic", EXECUTE_ALL)
        if semantic not in SEMANTICS:
            raise BadRequest(f"options.evaluations_semantic must be one of {', '.join(SEMANTICS)}")
        explain = _explain(body, default=False)
        for key in ("subject", "action", "resource", "context"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                raise BadRequest(f"{key} must be an object, not {_kind(body[key])}")
        parsed: list[Evaluation | BadRequest] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise BadRequest(f"evaluations[{index}] must be an object, not {_kind(item)}")
                # Nulls are absent (§ JSON Payload Considerations): the default applies.
                merged = {k: body.get(k) if item.get(k) is None else item[k] for k in _REQUEST}
                evaluation = evaluation_of(merged, f"evaluations[{index}]: ")
                self._conforming(evaluation, f"evaluations[{index}]: ")
                parsed.append(evaluation)
            except BadRequest as exc:
                parsed.append(exc)
        results = await self._decisions(request, caller).run(parsed, semantic)
        answers = []
        for result in results:
            if isinstance(result, BadRequest):
                answers.append(error_answer(result))
                continue
            answer = decision_answer(result, explain)
            if semantic == DENY_ON_FIRST_DENY and not result.decision.allowed:
                # The spec's example of this semantic marks the deny that stopped the batch so.
                answer["context"] = {**answer.get("context", {}), **_STOPPED_BY_DENY}
            answers.append(answer)
        return JSONResponse({"evaluations": answers})

    async def search_action(self, request: Request, caller: str) -> Response:
        """§ Action Search API: the catalogue's actions that the subject may do on the
        resource, as {"name": ...}."""
        body = await read_body(request)
        subject = subject_of(body.get("subject"), "subject")
        resource = entity_of(body.get("resource"), "resource")
        search = _Search(self.decider, request, caller, body, SEARCH_ACTION, "action")
        who = await search.decisions.subject(subject)
        return await search.answer(
            lambda asked, page: search_actions(self.decider, who, resource, asked, **page),
            lambda name: {"name": name},
        )

    async def search_subject(self, request: Request, caller: str) -> Response:
        """§ Subject Search API: the subjects of subject.type, from the data list the policies
        declare searchable for it, that may do the action on the resource. subject.id (and its
        properties) are ignored."""
        body = await read_body(request)
        subject = entity_of(body.get("subject"), "subject", with_id=False)
        action, _ = action_of(body.get("action"), "action")
        resource = entity_of(body.get("resource"), "resource")
        search = _Search(self.decider, request, caller, body, SEARCH_SUBJECT, "subject")
        return await search.answer(
            lambda asked, page: search_subjects(
                self.decider, subject.type, action, resource, asked, **page
            ),
            lambda id_: {"type": subject.type, "id": id_},
        )

    async def search_resource(self, request: Request, caller: str) -> Response:
        """§ Resource Search API: the resources of resource.type, from the data list the
        policies declare searchable for it, on which the subject may do the action.
        resource.id (and its properties) are ignored."""
        body = await read_body(request)
        subject = subject_of(body.get("subject"), "subject")
        action, _ = action_of(body.get("action"), "action")
        resource = entity_of(body.get("resource"), "resource", with_id=False)
        search = _Search(self.decider, request, caller, body, SEARCH_RESOURCE, "resource")
        who = await search.decisions.subject(subject)
        return await search.answer(
            lambda asked, page: search_resources(
                self.decider, who, action, resource.type, asked, **page
            ),
            lambda id_: {"type": resource.type, "id": id_},
        )


def metadata(base: str) -> JSONResponse:
    """The PDP metadata document for a listener reached at `base`."""
    endpoints = {
        "access_evaluation_endpoint": EVALUATION,
        "access_evaluations_endpoint": EVALUATIONS,
        "search_subject_endpoint": SEARCH_SUBJECT,
        "search_resource_endpoint": SEARCH_RESOURCE,
        "search_action_endpoint": SEARCH_ACTION,
    }
    return JSONResponse(
        {"policy_decision_point": base, **{key: base + path for key, path in endpoints.items()}},
        headers={"Cache-Control": "max-age=300"},
    )


# -- answers ------------------------------------------------------------------------------------

_STOPPED_BY_DENY = {"code": "200", "reason": "deny_on_first_deny"}


def explanation(outcome: Outcome) -> dict[str, Any]:
    """authz's explanation of a decision, as the answer's `context` carries it."""
    decision = outcome.decision
    return {
        "decision_id": outcome.decision_id,
        "policy_revision": decision.policy_revision,
        "effect": decision.effect.value,
        "matched_rules": [
            {"policy": m.policy, "rule_id": m.rule_id, "effect": m.effect.value, "reason": m.reason}
            for m in decision.matched
        ],
        "reasons": list(decision.reasons),
        "errors": list(decision.errors),
    }


def decision_answer(outcome: Outcome, explain: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"decision": outcome.decision.allowed}
    if explain:
        answer["context"] = explanation(outcome)
    return answer


def error_answer(error: BadRequest) -> dict[str, Any]:
    """An item that could not be decided: denied, with why (§ Access Evaluations API, Errors)."""
    return {"decision": False, "context": {"error": {"status": 400, "message": str(error)}}}


# -- search -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    start: int
    limit: int
    digest: str
    """Of the request, less its page.token: a token works only for the request it came from."""


def page_of(body: Mapping[str, Any], path: str, *, searched: str) -> Page:
    """The page a search request asks for (§ Pagination): its page.limit and, from page.token,
    where it starts. A token is refused unless every other part of the request is the one the
    token was issued for (§ Paginated Requests: the PDP SHOULD return an error)."""
    page = body.get("page")
    if page is None:
        page = {}
    if not isinstance(page, dict):
        raise BadRequest(f"page must be an object {{token, limit}}, not {_kind(page)}")
    limit = page.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0
    ):
        raise BadRequest("page.limit must be a non-negative integer")
    if limit is not None and limit != int(limit):
        raise BadRequest("page.limit must be a non-negative integer")
    # What identifies the request: everything but the token and the searched entity's id,
    # which the PDP ignores (§ Subject Search API, Resource Search API).
    parts = {key: body.get(key) for key in ("subject", "action", "resource", "context")}
    if searched == "action":
        parts.pop("action")
    elif isinstance(parts[searched], dict):
        parts[searched] = {k: v for k, v in parts[searched].items() if k != "id"}
    parts.update(path=path, limit=page.get("limit"), properties=page.get("properties"))
    digest = hashlib.sha256(canonical(parts).encode()).hexdigest()[:32]
    size = min(int(limit), MAX_PAGE) if limit else DEFAULT_PAGE
    token = page.get("token")
    if token is None or token == "":
        return Page(0, size, digest)
    if not isinstance(token, str):
        raise BadRequest(f"page.token must be a string, not {_kind(token)}")
    start, token_digest = _read_token(token)
    if token_digest != digest:
        raise BadRequest(
            "page.token belongs to another request: send the same subject, action, resource, "
            "context and page (but its token) as the request that returned it, or leave "
            "page.token out to start again"
        )
    return Page(start, size, digest)


def _page_token(start: int, digest: str) -> str:
    return base64.urlsafe_b64encode(f"{start}:{digest}".encode()).decode().rstrip("=")


def _read_token(token: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        start, digest = text.split(":")
        if not start.isdigit() or len(start) > 9:
            raise ValueError(start)
        return int(start), digest
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadRequest(
            "page.token is not a token this server issued; send the page.next_token of the "
            "previous answer as it is, or leave page.token out to start again"
        ) from None


class _Search:
    """One search request: its context, its page, and its answer."""

    def __init__(
        self,
        decider: Decider,
        request: Request,
        caller: str,
        body: Mapping[str, Any],
        path: str,
        searched: str,
    ) -> None:
        self.context = object_of(body.get("context"), "context")
        self.page = page_of(body, path, searched=searched)
        self.explain = _explain(body, default=False)
        self.decisions = Decisions(decider, request_id(request), caller, INTERFACE)

    async def answer(
        self,
        search: Callable[[Asked, dict[str, int]], Awaitable[SearchPage]],
        entity: Callable[[str], dict[str, str]],
    ) -> Response:
        """§ The Search API Response: the page first, then the results. A search the policies
        make no list for finds nothing (200, no results). With `options.explain`, the answer's
        context holds every candidate decided for this page, each with its explanation."""
        paging = {"start": self.page.start, "limit": self.page.limit, "budget": MAX_SCAN}
        try:
            found = await search(self.decisions.asked(self.context), paging)
        except SearchUnsupported as exc:
            answer: dict[str, Any] = {"page": {"next_token": "", "count": 0}, "results": []}
            if self.explain:
                answer["context"] = {"reason": str(exc)}
            return JSONResponse(answer)
        results = [entity(candidate) for candidate in found.allowed]
        next_token = (
            "" if found.next_start is None else _page_token(found.next_start, self.page.digest)
        )
        answer = {"page": {"next_token": next_token, "count": len(results)}, "results": results}
        if self.explain:
            answer["context"] = {
                "evaluated": [
                    {**entity(f.candidate), **decision_answer(f.outcome, True)}
                    for f in found.evaluated
                ]
            }
        return JSONResponse(answer)


# -- reading requests ---------------------------------------------------------------------------

_REQUEST = ("subject", "action", "resource", "context")


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (§ HTTPS JSON Binding), or BadRequest saying what is wrong."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise BadRequest("send the request as JSON, with the header Content-Type: application/json")
    return parse_json(await request.body())


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object: UTF-8, finite numbers, each key once per object."""
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_finite)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text; send JSON as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(value)}")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # I-JSON (RFC 7493 §2.3): one name once per object. Two values for a key (two subject ids)
    # could be read one way by a proxy and the other way here, so neither is taken.
    value = dict(pairs)
    if len(value) != len(pairs):
        keys = [key for key, _ in pairs]
        twice = next(key for key in value if keys.count(key) > 1)
        raise BadRequest(f"the key {twice!r} appears twice in one object; send it once")
    return value


def _finite(word: str) -> Any:
    raise BadRequest(f"{word} is not a JSON number; send finite numbers only")


def evaluation_of(request: Mapping[str, Any], where: str = "") -> Evaluation:
    """One access evaluation request (§ The Access Evaluation API Request); `where` prefixes
    every message (a batch item's position)."""
    try:
        subject = subject_of(request.get("subject"), "subject")
        action, properties = action_of(request.get("action"), "action")
        resource = entity_of(request.get("resource"), "resource")
        context = object_of(request.get("context"), "context")
        if properties and ACTION_PROPERTIES in context:
            raise BadRequest(
                f"context.{ACTION_PROPERTIES} is where action.properties go for policies; send "
                "the action's properties in one of the two places"
            )
    except BadRequest as exc:
        raise BadRequest(f"{where}{exc}") from None
    return Evaluation(
        subject, action, resource, context, {ACTION_PROPERTIES: properties} if properties else {}
    )


def subject_of(value: Any, field: str) -> SubjectRef:
    """A subject: `{"type": "session", "id": <session token>}` names an SSO session; any other
    type is a principal named directly."""
    if isinstance(value, dict) and value.get("type") == SESSION:
        token = value.get("id")
        if not isinstance(token, str) or not token:
            raise BadRequest(f"{field}.id must be the session token issued by the SSO exchange")
        if len(token) > convert.MAX_ID:
            raise BadRequest(f"{field}.id is longer than any session token authz issues")
        if value.get("properties"):
            raise BadRequest(
                f"{field}.properties: a session subject takes none; who the user is comes from "
                "the verified SSO session only"
            )
        return SubjectRef(None, token)
    return SubjectRef(entity_of(value, field))


def entity_of(value: Any, field: str, *, with_id: bool = True) -> Entity:
    """A subject or resource {type, id, properties} (§ Subject, § Resource)."""
    if value is None:
        raise BadRequest(f"{field} is missing; send {field} {{type, id}}")
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object {{type, id}}, not {_kind(value)}")
    return Entity(
        _name(value.get("type"), f"{field}.type"),
        _name(value.get("id"), f"{field}.id") if with_id else "",
        object_of(value.get("properties"), f"{field}.properties") if with_id else {},
    )


def action_of(value: Any, field: str) -> tuple[str, dict[str, Any]]:
    """An action {name, properties} (§ Action): its name and its properties."""
    if value is None:
        raise BadRequest(f"{field} is missing; send {field} {{name}}")
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object {{name}}, not {_kind(value)}")
    name = _name(value.get("name"), f"{field}.name")
    return name, object_of(value.get("properties"), f"{field}.properties")


def object_of(value: Any, field: str) -> dict[str, Any]:
    """A JSON object of data (properties, context), checked as gRPC's Struct values are."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object, not {_kind(value)}")
    return {_key(key, field): _data(item, f"{field}.{key}", 1) for key, item in value.items()}


def _name(value: Any, field: str) -> str:
    if value is None or value == "":
        raise BadRequest(f"{field} is missing; send it as a non-empty string")
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string, not {_kind(value)}")
    if text_problem(value):
        raise BadRequest(f"{field} holds a lone UTF-16 surrogate escape")
    return convert.identifier(value, field)


def _key(key: str, field: str) -> str:
    if len(key) > convert.MAX_STRING or text_problem(key):
        raise BadRequest(f"{field}: a key is longer than {convert.MAX_STRING} or not valid text")
    return key


def _data(value: Any, field: str, depth: int) -> Any:
    if depth > convert.MAX_DEPTH:
        raise BadRequest(f"{field}: nested deeper than {convert.MAX_DEPTH} levels; flatten it")
    if isinstance(value, str):
        if len(value) > convert.MAX_STRING:
            raise BadRequest(f"{field}: string longer than {convert.MAX_STRING} characters")
        if text_problem(value):
            raise BadRequest(f"{field}: the string holds a lone UTF-16 surrogate escape")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_NUMBER:
            raise BadRequest(f"{field}: {value} is beyond ±2^53, which JSON cannot carry exactly")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{field}: the number is not finite")
        # As over gRPC (authz.server.convert): integral numbers are ints, so `x == 3` holds.
        return int(value) if value.is_integer() and abs(value) < _MAX_NUMBER else value
    if isinstance(value, list):
        return [_data(item, f"{field}[{i}]", depth + 1) for i, item in enumerate(value)]
    return {_key(k, field): _data(v, f"{field}.{k}", depth + 1) for k, v in value.items()}


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest(f"options must be an object, not {_kind(options)}")
    return options


def _explain(body: Mapping[str, Any], *, default: bool) -> bool:
    """`options.explain`: whether answers carry authz's explanation in their context."""
    explain = _options(body).get("explain")
    if explain is None:
        return default
    if not isinstance(explain, bool):
        raise BadRequest("options.explain must be true or false")
    return explain


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number"}
    return "null" if value is None else names.get(type(value), "a number")
