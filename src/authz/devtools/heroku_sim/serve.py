"""``authz dev heroku-sim``: run the simulator in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from authz.devtools.heroku_sim.fixture import load_fixture
from authz.devtools.heroku_sim.simulator import HerokuSimulator


def serve_forever(host: str, port: int, fixture_path: str | None) -> None:
    """Run the simulator in the foreground until SIGINT or SIGTERM (``authz dev heroku-sim``)."""
    sim = HerokuSimulator(load_fixture(fixture_path), host=host, port=port)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        url = sim.start()
        out = sys.stdout
        print(f"Heroku simulator listening on {url}", file=out)
        print(f"  AUTHZ_HEROKU_API_URL={url} AUTHZ_HEROKU_ID_URL={url}", file=out)
        print(f"  OAuth client secret (simulator only): {sim.client_secret}", file=out)
        state = sim.state()
        apps = {a["id"]: a["name"] for a in state["apps"]}
        grants = sim.fixture_grants()
        for addon in state["addons"]:
            code = grants.get(addon["id"], "-")
            print(
                f"  add-on {addon['name']} resource_id={addon['id']} "
                f"app={apps[addon['app']['id']]} grant={code}",
                file=out,
            )
        print("  admin: GET/POST/PATCH/DELETE /__sim/... ; Ctrl-C to stop", file=out, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
