"""A simulator of Heroku's identity service and Platform API for Partners, over real HTTP.

The demo and the tests run against it instead of id.heroku.com and api.heroku.com. One base URL
serves both the OAuth token endpoint and the API, so a client points its id URL and its API URL
at the same place::

    with HerokuSimulator(load_fixture()) as sim:
        code = sim.create_grant("ce9b8461-8f28-4524-bffc-bd6d349c4ef0")
        ...  # POST {sim.base_url}/oauth/token, GET {sim.base_url}/addons/{id}, ...

One module per job:

- ``world``: users, teams, apps, collaborators, add-ons, their Platform API JSON shapes, and the
  changes Heroku announces (``WorldEvent``);
- ``fixture``: reading a YAML fixture (``heroku_fixture.yaml`` is the demo's) into the world;
- ``oauth``: ``POST /oauth/token`` (single-use grants, access and refresh tokens);
- ``api``: the Platform API routes, Heroku's refusals (406, 401, 403, 404, 416, 429),
  ``Range``/``Next-Range`` pagination and the per-account rate limit (``RateLimit-Remaining``);
- ``webhooks``: add-on webhook subscriptions and signed, retried deliveries;
- ``partner``: Heroku calling the partner (v3 provisioning, plan change, deprovision) and the
  dashboard's "open add-on" SSO page;
- ``faults``: injected latency, errors, 429s, malformed bodies and dropped connections;
- ``admin``: the ``/__sim/`` admin HTTP API (its docstring lists every endpoint);
- ``pages``: ``/__sim/dashboard``, the Heroku dashboard's stand-in in a browser (every app, its
  add-ons and people, an "Open" link per user and add-on);
- ``http``: the threaded stdlib HTTP server; ``simulator``: ``HerokuSimulator`` tying them
  together; ``serve``: ``authz dev heroku-sim``.

It is a development tool: no TLS, tokens live in memory, and the fixture's secrets are throwaway
values.
"""

from authz.devtools.heroku_sim.faults import FAULT_KINDS, Fault
from authz.devtools.heroku_sim.fixture import FixtureError, load_fixture
from authz.devtools.heroku_sim.serve import serve_forever
from authz.devtools.heroku_sim.simulator import HerokuSimulator
from authz.devtools.heroku_sim.webhooks import PARTNER_INCLUDES, signature
from authz.devtools.heroku_sim.world import WorldEvent

__all__ = [
    "FAULT_KINDS",
    "PARTNER_INCLUDES",
    "Fault",
    "FixtureError",
    "HerokuSimulator",
    "WorldEvent",
    "load_fixture",
    "serve_forever",
    "signature",
]
