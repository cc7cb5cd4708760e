"""The HTTP listener beside gRPC (AUTHZ_HTTP_LISTEN): one server, in the same process and event
loop, that the HTTP features mount their routes on.

- authz.web.routing: what a feature uses to add routes (WebParts, RouteGroup, route, Access);
- authz.web.app: the application (every route group, X-Request-ID, the body cap);
- authz.web.auth: the caller of a request, by the gRPC server's rules;
- authz.web.errors: the JSON error shape, and a group's own where its protocol prescribes one;
- authz.web.server: uvicorn in authz's loop, its connections' limits, TLS;
- authz.web.health: /healthz and /readyz.
"""
