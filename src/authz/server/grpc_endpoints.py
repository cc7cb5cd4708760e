"""Which of grpc's two TCP implementations the server uses, chosen before grpc is imported.

grpcio 1.85 moves connection I/O onto its EventEngine's threads by default; its older POSIX
endpoints read and write the socket on the thread that polls the completion queue, so a call
crosses one thread fewer. Measured here (docs/benchmarks.md, "Where a Check's time goes"): at
one request in flight a Check's median latency falls from about 0.60 to 0.48 ms, and a
constant-reply server's from about 0.40 to 0.30 ms; at 64 in flight the server uses about 5 %
less CPU per Check.

grpc reads ``GRPC_EXPERIMENTS`` once, when it is imported, so the choice is made by the
programs that run a server (the ``authz`` command, the benchmark server), first thing. A
``GRPC_EXPERIMENTS`` set by the operator is left as it is (empty: grpc's own defaults).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

POSIX_ENDPOINTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
"""grpc experiments turned off: its listener and endpoints go back to the POSIX ones."""


def prefer_posix_endpoints(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Ask grpc for its POSIX endpoints unless GRPC_EXPERIMENTS is set already. False when
    grpc was imported before (too late to choose: it keeps what it read)."""
    if "grpc" in sys.modules:
        return False
    environ.setdefault("GRPC_EXPERIMENTS", POSIX_ENDPOINTS)
    return True


def endpoints_in_use(environ: MutableMapping[str, str] = os.environ) -> str:
    """``posix`` or ``event-engine``: what GRPC_EXPERIMENTS asked grpc for, for the start-up
    line."""
    asked = {name.strip() for name in environ.get("GRPC_EXPERIMENTS", "").split(",")}
    return "posix" if set(POSIX_ENDPOINTS.split(",")) <= asked else "event-engine"
