"""What a feature needs to add routes to the HTTP listener: WebParts, RouteGroup, route().

A feature builds its RouteGroup from the service's parts and adds the builder to
authz.web.app.ROUTE_GROUPS:

    def routes(parts: WebParts) -> RouteGroup:
        async def evaluate(request: Request, caller: str) -> Response:
            ...  # parse, call the use case the gRPC servicer calls (parts.decider), answer
        return RouteGroup("authzen", [route("/access/v1/evaluation", evaluate,
                                            access=Access.CALLER, methods=["POST"])])

Handlers get the request and the caller's identity and stay as thin as the gRPC servicers.
route() does the rest, the same for every route: who may call (Access; 401 / 403 otherwise),
and a place among the requests in flight. Requests on routes for callers and on open routes are
counted apart (HttpLimits.max_requests, max_open_requests), so a flood on an open route never
takes the capacity callers need; beyond either limit the answer is 503 with Retry-After at once,
nothing queues.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from authz.audit.log import AuditLog
from authz.config import Settings
from authz.decide import Decider
from authz.policy.holder import PolicyHolder
from authz.provisioning import Provisioning
from authz.store import Database
from authz.web.auth import Access, HttpCallers
from authz.web.errors import ErrorRenderer, HttpError

if TYPE_CHECKING:
    from authz.server.observe import Observability

Handler = Callable[[Request, str], Awaitable[Response]]
"""A route's handler: (request, the caller's identity) → response."""


@dataclass(frozen=True)
class HttpLimits:
    """What clients, slow, stuck or hostile, may hold of the HTTP listener."""

    max_body: int = 1 << 20
    """Request body bytes (gRPC's message bound); more is 413."""
    max_header_bytes: int = 16 << 10
    """Request line and headers (gRPC's metadata bound); more is 400."""
    max_connections: int = 2000
    """Open connections; a connection beyond it is closed at once."""
    max_requests: int = 1000
    """Requests in flight on routes for callers (AUTHZ_MAX_CONCURRENT_RPCS); beyond it 503."""
    max_open_requests: int = 32
    """Requests in flight on open routes (health probes); beyond it 503."""
    request_timeout: float = 10.0
    """Seconds a request (line, headers and body) may take to arrive once it starts."""
    keep_alive: int = 5
    """Seconds an idle keep-alive connection stays open."""
    max_connection_age: float = 60.0
    """Seconds (±10 %) after which a connection's next answer closes it (AUTHZ_MAX_CONNECTION_AGE,
    as for gRPC: the client's next connection may go to another worker); 0: never."""

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        # AUTHZ_REQUEST_TIMEOUT=0 saves CPU on every gRPC call; over HTTP the guard is one timer
        # per request, so it stays on, with the default.
        return cls(
            max_requests=settings.max_concurrent_rpcs,
            request_timeout=settings.request_timeout or cls.request_timeout,
            max_connection_age=settings.max_connection_age,
        )


@dataclass(frozen=True)
class WebParts:
    """What route groups may use: the objects the gRPC servicers use, built once per service."""

    settings: Settings
    callers: HttpCallers
    policies: PolicyHolder
    decider: Decider
    audit: AuditLog
    state: Database
    limits: HttpLimits = field(default_factory=HttpLimits)
    observability: Observability | None = None  # metrics, traces (authz.server.observe)
    provisioning: Provisioning | None = None  # the add-on lifecycle (authz.web.heroku)


@dataclass(frozen=True)
class RouteGroup:
    """One feature's routes. A group whose protocol prescribes its own error shape gives
    `render_error` with a path `prefix` (e.g. "/access/v1"): every error under the prefix, its
    401s and 404s too, is answered in that shape; other paths use the default JSON shape."""

    name: str
    routes: Sequence[BaseRoute]
    prefix: str = ""
    render_error: ErrorRenderer | None = None

    def __post_init__(self) -> None:
        if self.render_error is not None and not self.prefix.startswith("/"):
            raise ValueError(f"route group {self.name!r}: an error renderer needs a path prefix")


class Budget:
    """Requests in flight, up to a limit. Taken without waiting: the loop is one thread."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.in_flight = 0

    def take(self) -> None:
        if self.in_flight >= self.limit:
            raise HttpError(
                503,
                f"the server has {self.limit} requests in flight on {self.what}, its limit; "
                "retry shortly",
                {"Retry-After": "1"},
            )
        self.in_flight += 1

    def give_back(self) -> None:
        self.in_flight -= 1


@dataclass
class Guard:
    """Admission for every route: the caller first, then a place in the route's budget."""

    callers: HttpCallers
    callers_budget: Budget
    open_budget: Budget

    @classmethod
    def of(cls, callers: HttpCallers, limits: HttpLimits) -> Guard:
        return cls(
            callers,
            callers_budget=Budget(limits.max_requests, "routes for callers"),
            open_budget=Budget(limits.max_open_requests, "open routes"),
        )

    async def run(self, handler: Handler, request: Request, access: Access) -> Response:
        caller = self.callers.caller(request, access)
        budget = self.open_budget if access is Access.OPEN else self.callers_budget
        budget.take()
        try:
            return await handler(request, caller)
        finally:
            budget.give_back()


def route(
    path: str, handler: Handler, *, access: Access, methods: Sequence[str] = ("GET",)
) -> Route:
    """A route whose handler runs once its caller is admitted (GET routes answer HEAD too)."""

    async def endpoint(request: Request) -> Response:
        guard: Guard = request.app.state.guard
        return await guard.run(handler, request, access)

    return Route(path, endpoint, methods=list(methods), name=handler.__name__)


def request_id(request: Request) -> str:
    """The request's X-Request-ID: the caller's, or one made up for it (authz.web.app)."""
    return str(request.scope["state"]["request_id"])
