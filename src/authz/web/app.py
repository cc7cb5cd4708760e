"""The HTTP listener's ASGI application: every route group behind the same edge and guard.

Before any route, every request gets its X-Request-ID and the body cap (RequestEdge); routes
admit callers and count requests in flight (authz.web.routing); errors have one JSON shape
unless a group prescribes its own (authz.web.errors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.ids import new_decision_id
from authz.web import authzen, health, heroku, metrics, review
from authz.web.errors import ErrorRendering, HttpError
from authz.web.observe import ObservedHttp
from authz.web.routing import Guard, HttpLimits, RouteGroup, WebParts

ROUTE_GROUPS: tuple[Callable[[WebParts], RouteGroup], ...] = (
    health.routes,
    authzen.routes,
    heroku.routes,
    metrics.routes,
    review.routes,
)
"""The route groups the listener serves; a feature adds its builder here."""

MAX_REQUEST_ID = 256
"""The longest X-Request-ID taken (gRPC's CheckRequest.request_id has the same bound)."""


def build_app(
    parts: WebParts, groups: Sequence[Callable[[WebParts], RouteGroup]] = ROUTE_GROUPS
) -> ASGIApp:
    built = [make(parts) for make in groups]
    errors = ErrorRendering(
        [(group.prefix, group.render_error) for group in built if group.render_error]
    )
    app = Starlette(
        routes=[r for group in built for r in group.routes],
        exception_handlers=errors.handlers(),
    )
    app.state.guard = Guard.of(parts.callers, parts.limits)
    edge = RequestEdge(app, errors, parts.limits)
    return edge if parts.observability is None else ObservedHttp(edge, parts.observability)


class RequestEdge:
    """Every request, before any route: its X-Request-ID, taken or made and echoed on every
    answer; the size of its head (431; h11 refuses a head that arrives in pieces with 400 as
    soon as its buffer is over the limit, but takes a larger one that arrives at once); and the
    body cap (413 for a declared or a streamed body over it).

    AuthZEN (Authorization API 1.0, Transport): when the caller sends X-Request-ID the PDP MUST
    return the same value. When it sends none, one is made up (a UUIDv7), echoed and available
    to handlers (authz.web.routing.request_id), so every answer can be traced to its decisions.
    Behind Heroku's router every request has one already: the router adds it when the client
    sent none (https://devcenter.heroku.com/articles/http-request-id).
    """

    def __init__(self, app: ASGIApp, errors: ErrorRendering, limits: HttpLimits) -> None:
        self.app = app
        self.errors = errors
        self.max_head = limits.max_header_bytes
        self.max_body = limits.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [value for name, value in scope["headers"] if name == b"x-request-id"]
        problem = ""
        if len(given) > 1:
            problem = "send at most one X-Request-ID header"
        elif given and not 0 < len(given[0]) <= MAX_REQUEST_ID:
            problem = f"X-Request-ID must be 1 to {MAX_REQUEST_ID} characters"
        # h11 lets only visible ASCII, spaces and tabs into header values, so the echo is safe.
        echo = given[0].decode("ascii") if given and not problem else new_decision_id()
        scope.setdefault("state", {})["request_id"] = echo
        echo_header = (b"x-request-id", echo.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, echo_header]}
            await send(message)

        if problem:
            await self.errors.render(scope, 400, problem)(scope, receive, send_with_id)
            return
        head = len(scope["raw_path"]) + len(scope["query_string"])
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_head:
            message = (
                f"the request line and headers are larger than {self.max_head} bytes, the "
                "limit; send fewer or shorter headers"
            )
            await self.errors.render(scope, 431, message)(scope, receive, send_with_id)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            # Answered before the body is read. uvicorn then reads and drops the rest, for at
            # most the request timeout (authz.web.server): closing at once instead would make
            # the client's TCP stack discard the answer with the connection.
            too_large = self.errors.render(scope, 413, self._too_large())
            await too_large(scope, receive, send_with_id)
            return
        received = 0

        async def receive_at_most() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HttpError(413, self._too_large())
            return message

        await self.app(scope, receive_at_most, send_with_id)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body} bytes, the limit; send less"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)  # h11 has checked that it is a number
    return None
