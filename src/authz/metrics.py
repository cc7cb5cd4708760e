"""The Prometheus metrics of one service, served by GET /metrics (authz.web.metrics).

Each service has a registry of its own (not prometheus_client's global one), so several services
in one process (tests, tools) keep apart. What happens on a request is counted where it happens,
by authz.server.observe (RPC latency and status, decisions, SSO outcomes, audit commit waits);
what the service's parts already count is read when Prometheus scrapes (:class:`StateCollector`:
the audit writer's counters and queue, the policy revision and refused reloads, the access
cache, the Platform API client), so those parts know nothing of Prometheus.

Every label has a bounded set of values: ``action`` is a catalogued action or ``other``,
``caller`` a configured caller name (or ``anonymous`` in development mode), ``method`` a
registered gRPC method or an HTTP route's path template (``unmatched`` for paths no route
serves), ``reason`` an SSO refusal code, ``salt`` a position in AUTHZ_SSO_SALT.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from authz.policy.holder import PolicyHolder

OTHER_ACTION = "other"
"""The action label of a decision on an action no catalogue lists (callers choose those)."""
UNMATCHED_ROUTE = "unmatched"
"""The method label of an HTTP request for a path no route serves."""
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: a decision from cached facts takes well under a millisecond, one that waits for
Heroku up to AUTHZ_FACTS_DEADLINE (2 s), a durable audit commit a few milliseconds."""

AUDIT_COUNTERS = {
    "records_written": "Audit records committed.",
    "bytes_written": "Bytes of audit record JSON and new shared parts committed.",
    "commits": "Audit transactions committed (concurrent decisions share one).",
    "failed_commits": "Audit transactions that failed (each async-mode retry counts).",
    "records_failed": "Durable audit records whose decisions were not answered (UNAVAILABLE).",
    "records_rejected": "Audit records refused by the database (a duplicate decision id).",
    "records_lost": "Async-mode audit records that could not be written at shutdown.",
}
AUDIT_GAUGES = {
    "queue_depth": "Audit records waiting for the writer.",
    "queue_high_water": "The most audit records ever waiting for the writer.",
}


class Metrics:
    """The metric objects of one service, in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.decisions = Counter(
            "authz_decisions",
            "Decisions answered (and recorded), by effect, action ('other' for actions no "
            "catalogue lists) and caller.",
            ["effect", "action", "caller"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "authz_rpc_duration_seconds",
            "Time from a call's arrival to its answer, per gRPC method and HTTP route "
            "(admission, request read, decision and audit commit included).",
            ["protocol", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpcs = Counter(
            "authz_rpcs",
            "Calls answered, per gRPC method and HTTP route, by status (gRPC status name or "
            "HTTP status code).",
            ["protocol", "method", "code"],
            registry=registry,
        )
        self.audit_wait = Histogram(
            "authz_audit_record_duration_seconds",
            "Time a request waits for its audit records: until they are committed (durable) "
            "or queued (async).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sso_refusals = Counter(
            "authz_sso_refusals",
            "Heroku SSO exchanges refused, by reason (SSO_BAD_TOKEN, SSO_STALE_TIMESTAMP, "
            "LOGIN_DENIED, ...).",
            ["reason"],
            registry=registry,
        )
        self.sso_logins = Counter(
            "authz_sso_logins",
            "Heroku SSO logins that issued a session, by the position (1 = first) of the "
            "AUTHZ_SSO_SALT salt that verified the form and the token kind; a salt rotation "
            "is finished when the old salt's position stops growing.",
            ["salt", "token_kind"],
            registry=registry,
        )
        self._state = StateCollector()
        registry.register(self._state)
        self._calls: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._decisions: dict[tuple[str, str, str], Any] = {}

    def watch(self, **parts: Any) -> None:
        """Read these parts at every scrape (see StateCollector for the names)."""
        self._state.watch(**parts)

    def count_decision(
        self, effect: str, action: str, caller: str, catalogue: Mapping[str, Any]
    ) -> None:
        label = action if action in catalogue else OTHER_ACTION
        key = (effect, label, caller)  # bounded: effects, catalogued actions, callers
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(effect, label, caller)
        child.inc()

    def observe_call(self, protocol: str, method: str, code: str, seconds: float) -> None:
        # The labelled children are kept: labels() costs more than the observation itself.
        key = (protocol, method, code)
        children = self._calls.get(key)
        if children is None:
            children = self._calls[key] = (
                self.rpc_duration.labels(protocol, method),
                self.rpcs.labels(protocol, method, code),
            )
        children[0].observe(seconds)
        children[1].inc()

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the text format the scraper asked for (Prometheus' or OpenMetrics),
        and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class StateCollector(Collector):
    """What the service's parts count themselves, read at each scrape:

    - ``audit``: authz.audit.log.AuditLog (``counters()``);
    - ``policies``: PolicyHolder (revision, rule count, load time, the last refused change);
    - ``access``: authz.facts.access.AccessCache (hits, misses, refreshes, fetch failures);
    - ``platform``: authz.facts.heroku.PlatformClient (calls by status, RateLimit-Remaining).

    A part not given (no Platform API credentials, audit off) adds nothing.
    """

    def __init__(self) -> None:
        self.parts: dict[str, Any] = {}

    def watch(self, **parts: Any) -> None:
        self.parts.update({name: part for name, part in parts.items() if part is not None})

    def collect(self) -> Iterator[Metric]:
        parts = self.parts
        if "audit" in parts and parts["audit"].mode != "off":
            yield from _audit(parts["audit"].counters())
        if "policies" in parts:
            yield from _policies(parts["policies"])
        if "access" in parts:
            yield from _access(parts["access"])
        if "platform" in parts:
            yield from _platform(parts["platform"])


def _audit(counters: Mapping[str, int]) -> Iterator[Metric]:
    for name, help_text in AUDIT_COUNTERS.items():
        yield CounterMetricFamily(f"authz_audit_{name}", help_text, value=counters[name])
    for name, help_text in AUDIT_GAUGES.items():
        yield GaugeMetricFamily(f"authz_audit_{name}", help_text, value=counters[name])


def _policies(policies: PolicyHolder) -> Iterator[Metric]:
    current = policies.current
    yield InfoMetricFamily(
        "authz_policy", "The policy set being served.", value={"revision": current.revision}
    )
    yield GaugeMetricFamily(
        "authz_policy_rules", "Rules in the policy set being served.", value=current.rule_count
    )
    yield GaugeMetricFamily(
        "authz_policy_loaded_timestamp_seconds",
        "When the policy set being served was loaded (Unix time).",
        value=current.loaded_at,
    )
    yield GaugeMetricFamily(
        "authz_policy_last_refused_timestamp_seconds",
        "When a policy change was last refused (Unix time; 0: never since start). A value "
        "above authz_policy_loaded_timestamp_seconds means the latest change is not served: "
        "authz policy status says why.",
        value=policies.last_refused_at or 0.0,
    )


def _access(cache: Any) -> Iterator[Metric]:
    lookups = CounterMetricFamily(
        "authz_access_cache_lookups",
        "App access-list lookups: 'hit' answered from a fresh entry, 'miss' waited for "
        "Heroku (or failed fast while backing off).",
        labels=["result"],
    )
    lookups.add_metric(["hit"], cache.hits)
    lookups.add_metric(["miss"], cache.misses)
    yield lookups
    yield CounterMetricFamily(
        "authz_access_cache_refreshes",
        "Access lists refreshed ahead of expiry in the background.",
        value=cache.refreshes,
    )
    yield CounterMetricFamily(
        "authz_access_cache_fetch_failures",
        "Access-list fetches that failed (Heroku down, slow, rate-limiting or malformed).",
        value=cache.fetch_failures,
    )
    yield GaugeMetricFamily(
        "authz_access_cache_entries", "Apps whose access list is cached.", value=len(cache)
    )
    yield GaugeMetricFamily(
        "authz_access_cache_ttl_seconds",
        "The access-list TTL now (AUTHZ_ACCESS_TTL, longer while Heroku's rate-limit budget "
        "runs low; at most 300).",
        value=cache.effective_ttl,
    )


def _platform(client: Any) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "authz_heroku_api_calls",
        "Calls to Heroku's Platform API and OAuth endpoint, by HTTP status ('unreachable': "
        "no answer).",
        labels=["status"],
    )
    for status, count in sorted(client.calls.items()):
        calls.add_metric([status], count)
    yield calls
    if client.ratelimit_remaining is not None:
        yield GaugeMetricFamily(
            "authz_heroku_ratelimit_remaining",
            "The last RateLimit-Remaining Heroku sent: request tokens left in the account's "
            "pool (4500, refilled at about 75 a minute).",
            value=client.ratelimit_remaining,
        )
