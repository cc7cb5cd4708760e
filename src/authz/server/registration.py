"""How services join the gRPC server: as generic handlers only, each behind authz's edge.

grpc.aio keeps one pending request for each *registered* method and, every time a call
arrives, waits on all of them at once (``asyncio.wait`` in its serving loop: a done-callback
added to and removed from every pending request). The generated ``add_*_to_server`` functions
register each method as well as adding a generic handler, so authz's 15 methods made every
call pay for 16 pending requests. Added as generic handlers only, a method is found by the same
name lookup and a call waits on one pending request.

The edge (the caller's admission and budget, then observation) is applied where grpc looks a
method's handler up, as plain function calls on the handler it finds, rather than as grpc
interceptors: grpc runs interceptors as a chain of coroutines for every call, before the same
lookup. Measured on authz's Check at 64 in flight (docs/benchmarks.md, "Where a Check's time
goes"): generic handlers alone, 2 % less server CPU per call; the edge as plain calls, no
difference that stood out of the machine's noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

EdgeLayer = Callable[[grpc.HandlerCallDetails, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""Takes a call's details and the handler found for its method; gives the handler to run."""


class Services:
    """What the generated ``add_*_to_server`` functions need of a server: each service's
    generic handler is added to `server` behind `edge` (its layers innermost first), and its
    methods are not registered (see the module)."""

    def __init__(self, server: grpc.aio.Server, edge: Sequence[EdgeLayer] = ()) -> None:
        self.server = server
        self.edge = tuple(edge)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        if self.edge:
            handlers = [_BehindEdge(handler, self.edge) for handler in handlers]
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Left out on purpose: the generic handler serves the same methods (see the module)."""


class _BehindEdge(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, edge: tuple[EdgeLayer, ...]) -> None:
        self.inner = inner
        self.edge = edge

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.inner.service(details)
        if handler is None:  # not this service's method: grpc asks the next one
            return None
        for layer in self.edge:
            handler = layer(details, handler)
        return handler


def enable_reflection(service_names: Sequence[str], services: Services) -> None:
    """Server reflection for `service_names`, as ``reflection.enable_server_reflection`` adds
    it to a grpc.aio server, through `services`."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(service_names), services
    )
