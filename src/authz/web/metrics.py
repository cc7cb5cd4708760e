"""GET /metrics: the service's Prometheus metrics (authz.metrics), in the format asked for.

The metrics name callers and actions, so by default only callers may read them (Access.CALLER:
a bearer token or client certificate, as for any route for callers; anyone in development
mode). AUTHZ_METRICS_OPEN=1 opens the route to anyone who reaches the listener, for scrapers
that cannot send credentials; then keep the listener itself out of reach (a private network).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from authz.web.auth import Access
from authz.web.routing import RouteGroup, WebParts, route


def routes(parts: WebParts) -> RouteGroup:
    observability = parts.observability
    if observability is None:  # a listener built without a service's observability (tests)
        return RouteGroup("metrics", [])
    metrics = observability.metrics

    async def scrape(request: Request, caller: str) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    access = Access.OPEN if parts.settings.metrics_open else Access.CALLER
    return RouteGroup("metrics", [route("/metrics", scrape, access=access)])
