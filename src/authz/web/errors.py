"""HTTP errors: one JSON shape by default, a route group's own shape where its spec says so.

Every error the listener answers, a route's, a refused caller, an unknown path, a body that is
too large, has the shape

    {"error": {"status": 413, "message": "the request body is larger than 1 MiB; ..."}}

with a message that says what to fix, never a traceback, a Python class name or a secret. A route
group whose protocol prescribes another shape (AuthZEN answers errors as a plain message string)
gives its own renderer for the paths under its prefix (see authz.web.app.RouteGroup).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

ErrorRenderer = Callable[[int, str, Mapping[str, str]], Response]
"""(status, message, headers) → the response a route group answers errors with."""


class HttpError(HTTPException):
    """An error answer: its status, a message that says what to fix, and extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(status, message, dict(headers) if headers else None)


def json_error(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """The default shape: {"error": {"status": ..., "message": ...}}."""
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status_code=status, headers=headers
    )


class ErrorRendering:
    """Picks the renderer for a request by its path: the longest matching group prefix."""

    def __init__(self, renderers: Sequence[tuple[str, ErrorRenderer]] = ()) -> None:
        self._renderers = sorted(renderers, key=lambda pair: len(pair[0]), reverse=True)

    def render(
        self, scope: Scope, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        path: str = scope.get("path", "")
        for prefix, renderer in self._renderers:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return renderer(status, message, headers or {})
        return json_error(status, message, headers or {})

    async def http_exception(self, request: Request, exc: Exception) -> Response:
        """Starlette's handler for HTTPException: ours carry their message; Starlette's own
        404 and 405 get one that says what is served."""
        assert isinstance(exc, HTTPException)
        message = exc.detail
        if not isinstance(exc, HttpError):
            if exc.status_code == 404:
                message = f"nothing is served at {request.url.path}"
            elif exc.status_code == 405:
                allowed = (exc.headers or {}).get("Allow", "")
                message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        return self.render(request.scope, exc.status_code, message, exc.headers)

    async def client_disconnect(self, request: Request, exc: Exception) -> Response:
        """The client went away mid-request (or was cut off by the read timeout): nobody reads
        this answer, and it is no server error."""
        return Response(status_code=400)

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        """Anything unhandled: uvicorn logs the traceback; the client gets no detail of it."""
        request_id = request.scope.get("state", {}).get("request_id", "")
        return self.render(
            request.scope,
            500,
            f"internal error; the server log has the details (request id {request_id})",
        )

    def handlers(self) -> dict[object, Callable[..., object]]:
        """The exception handlers for `Starlette(exception_handlers=...)`."""
        return {
            HTTPException: self.http_exception,
            ClientDisconnect: self.client_disconnect,
            Exception: self.internal_error,
        }
