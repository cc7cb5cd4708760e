"""Every HTTP request timed, counted by status and traced, as authz.server.observe does for gRPC.

The middleware is the outermost layer of the listener's application, so the time includes the
request edge's own answers (400, 413, 431) and admission. Requests are labelled by the route's
path template (``/healthz``), never by the path itself, so the labels stay few: a path no route
serves is ``unmatched``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.metrics import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from authz.server.observe import Observability

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods a span is named after; others are "_OTHER" (OpenTelemetry's HTTP conventions)."""


class ObservedHttp:
    """ASGI middleware: latency and status per route, and a server span per request."""

    def __init__(self, app: ASGIApp, observability: Observability) -> None:
        self.app = app
        self.observability = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observability = self.observability
        started = time.perf_counter()
        status = 500  # what the client gets if the application ends without answering
        method = scope["method"] if scope["method"] in HTTP_METHODS else "_OTHER"
        attributes = {"http.request.method": method}

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with observability.call(method, attributes, lambda: _carrier(scope)) as call:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                observability.metrics.observe_call(
                    "http", route, str(status), time.perf_counter() - started
                )
                request_id = scope.get("state", {}).get("request_id", "")
                if call.span is not None:
                    call.span.update_name(f"{method} {route}")
                observability.finish(
                    call,
                    {
                        "http.route": route,
                        "http.response.status_code": status,
                        "authz.request_id": request_id,
                    },
                    str(status) if status >= 500 else "",
                )


def _carrier(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
