"""The benchmark suite of issues 7 and 19: ``python -m authz.bench`` (``make bench``).

Five parts, each comparison measured in the same run:

1. ``engine``: µs per decision of the policy engine (shipped policies; generated sets of 10 to
   10,000 rules) and memory per set;
2. ``peers``: authz's engine against cedarpy, regopy and pycasbin on one policy, with agreement;
3. ``e2e``: end to end over gRPC with h2load in its own process, against a no-op baseline;
4. ``facts``: Check latency with a warm vs a cold access cache, and upstream requests per cold app;
5. ``cerbos``: authz against the Cerbos server over gRPC on one policy, both checked against an
   oracle first (authz.bench.cerbos, authz.bench.documents).

Then issue 7's targets and issue 19's goals against Cerbos are judged from the numbers, printed
with one plain sentence each, and written to the Markdown report (--out).
"""
