"""Part 2: authz's engine against Cedar (cedarpy), OPA Rego (regopy) and Casbin (pycasbin).

One policy, written as naturally as each engine allows:

- SSO users may use ``dashboard.*`` on an add-on when their Heroku user id is in the access list
  of the app that owns the add-on;
- SSO users may never perform the auth-changing ``account.*`` actions (an explicit deny);
- everything else is denied (default deny).

Every engine is loaded once with the same world (apps, their members, add-ons) and then asked the
same requests; a plain-Python oracle says what the answer must be. Each engine's time per decision
includes turning the shared request into its own request shape and reading the answer back, and
the engines are timed in interleaved rounds so that a noisy neighbour hits them all alike.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.bench.common import Table, ratio
from authz.decide import access_fact
from authz.facts.heroku import AccessList, AppMember
from authz.policy.compile import CompiledPolicySet, load_and_compile
from authz.policy.engine import evaluate
from authz.policy.inputs import (
    addon_input,
    auth_input,
    build_input,
    principal_input,
    resource_input,
)

PEER_MODULES = {"cedarpy": "cedarpy", "regopy": "regopy", "pycasbin": "casbin"}

ACTIONS = (
    "dashboard.view",
    "dashboard.configure",
    "account.change_password",
    "account.change_email",
    "addon.read_data",
    "billing.update",
)

AUTHZ_POLICY = """\
name: peer-comparison
description: The policy every engine in the comparison implements.
rules:
  - id: sso-members-use-dashboard
    effect: allow
    actions: ["dashboard.*"]
    resource_types: [addon]
    when: >-
      principal.type == "heroku_user" && principal.auth.method == "heroku_sso"
      && access.available && access.user_id == principal.id && size(access.roles) > 0
    reason: The SSO user is on the access list of the app that owns this add-on
  - id: sso-users-never-change-authentication
    effect: deny
    actions: ["account.*"]
    when: principal.auth.method == "heroku_sso"
    reason: A Heroku SSO session never changes how anyone authenticates
"""

CEDAR_POLICY = """\
@id("sso-members-use-dashboard")
permit (principal is HerokuUser, action in Action::"dashboard", resource is Addon)
when { context.auth_method == "heroku_sso" && principal in resource.app };

@id("sso-users-never-change-authentication")
forbid (principal, action in Action::"account", resource)
when { context.auth_method == "heroku_sso" };
"""

REGO_POLICY = """\
package authz

default allow := false

allow if {
    sso_member_uses_dashboard
    not deny
}

sso_member_uses_dashboard if {
    input.principal.type == "heroku_user"
    input.principal.auth_method == "heroku_sso"
    glob.match("dashboard.*", ["."], input.action)
    input.resource.type == "addon"
    app := data.addons[input.resource.id].app
    input.principal.id in data.apps[app].members
}

deny if {
    input.principal.auth_method == "heroku_sso"
    glob.match("account.*", ["."], input.action)
}
"""

CASBIN_MODEL = """\
[request_definition]
r = sub, auth, act, dom

[policy_definition]
p = sub, auth, act, eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.sub == "*" || g(r.sub, p.sub, r.dom)) && r.auth == p.auth && keyMatch(r.act, p.act)
"""

CASBIN_POLICY = """\
p, member, heroku_sso, dashboard.*, allow
p, *, heroku_sso, account.*, deny
"""


# -- the shared world and requests -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    principal_type: str  # heroku_user | service
    principal_id: str
    auth_method: str  # heroku_sso | none
    action: str
    resource_type: str  # addon | document
    resource_id: str


@dataclass
class World:
    apps: dict[str, list[str]]  # app id -> member user ids
    addons: dict[str, str]  # add-on id -> app id
    users: list[str]

    def app_of(self, request: Request) -> str:
        if request.resource_type != "addon":
            return ""
        return self.addons.get(request.resource_id, "")


def make_world(n_apps: int = 20, n_users: int = 60) -> World:
    users = [f"user-{j:02d}" for j in range(n_users)]
    apps: dict[str, list[str]] = {f"app-{a:02d}": [] for a in range(n_apps)}
    for j, user in enumerate(users):
        if j % 4 == 3:
            continue  # a quarter of the users belong to no app at all
        apps[f"app-{j % n_apps:02d}"].append(user)
        if j % 3 == 0:
            apps[f"app-{(j * 7 + 1) % n_apps:02d}"].append(user)
    addons = {f"addon-{a:02d}": f"app-{a:02d}" for a in range(n_apps)}
    return World(apps, addons, users)


def make_requests(world: World, count: int) -> list[Request]:
    """A deterministic mix: mostly SSO users on add-ons, plus non-SSO users, services, documents."""
    addons = sorted(world.addons)
    out: list[Request] = []
    i = 0
    while len(out) < count:
        user = world.users[(i * 7) % len(world.users)]
        # Half the SSO requests go to an add-on of an app the user is on (when there is one).
        own = [a for a in addons if user in world.apps[world.addons[a]]]
        addon = own[i % len(own)] if own and i % 2 == 0 else addons[(i * 5) % len(addons)]
        action = ACTIONS[i % len(ACTIONS)]
        kind = i % 10
        if kind < 7:
            out.append(Request("heroku_user", user, "heroku_sso", action, "addon", addon))
        elif kind == 7:
            out.append(Request("heroku_user", user, "none", action, "addon", addon))
        elif kind == 8:
            out.append(Request("service", "billing-worker", "none", action, "addon", addon))
        else:
            out.append(
                Request("heroku_user", user, "heroku_sso", action, "document", f"doc-{i % 13}")
            )
        i += 1
    return out


def oracle(world: World, r: Request) -> bool:
    """The policy in plain Python: what every engine must answer."""
    sso = r.auth_method == "heroku_sso"
    if sso and r.action.startswith("account."):
        return False
    app = world.app_of(r)
    return (
        r.principal_type == "heroku_user"
        and sso
        and r.action.startswith("dashboard.")
        and bool(app)
        and r.principal_id in world.apps[app]
    )


# -- the engines -------------------------------------------------------------------------------


class AuthzEngine:
    """authz's CEL engine, inputs built the way decide.py builds them (facts from a warm cache)."""

    name = "authz (CEL)"

    def __init__(self, world: World) -> None:
        self.world = world
        self._tmp = tempfile.TemporaryDirectory(prefix="authz-bench-peer-")
        directory = Path(self._tmp.name)
        (directory / "peer.yaml").write_text(AUTHZ_POLICY)
        self.policy_set: CompiledPolicySet = load_and_compile(directory)
        now = time.time()
        self.access_lists = {
            app: AccessList(
                app_id=app,
                app_name=app,
                team_id=None,
                owner_id=members[0] if members else "",
                fetched_at=now,
                members={u: AppMember(u, f"{u}@example.com", ("collaborator",)) for u in members},
            )
            for app, members in world.apps.items()
        }

    def close(self) -> None:
        self._tmp.cleanup()

    def build(self, r: Request) -> dict[str, Any]:
        now = time.time()
        principal = principal_input(
            r.principal_type, r.principal_id, None, auth_input(r.auth_method)
        )
        app = self.world.app_of(r)
        addon = addon_input("provisioned", app, app, "authz:basic", "us")
        resource = resource_input(
            r.resource_type, r.resource_id, None, addon if r.resource_type == "addon" else None
        )
        if r.principal_type == "heroku_user" and app:
            access = access_fact(self.access_lists[app], r.principal_id, now)
        else:
            access = access_fact(None, r.principal_id, now, "no Heroku app applies")
        return build_input(
            action=r.action,
            principal=principal,
            resource=resource,
            context={},
            access=access,
            caller={"id": "bench"},
            now=datetime.fromtimestamp(now, tz=UTC),
        )

    def decide(self, r: Request) -> bool:
        return evaluate(self.policy_set, self.build(r)).allowed


class CedarEngine:
    name = "cedarpy (Cedar)"

    def __init__(self, world: World) -> None:
        import cedarpy

        self._cedarpy = cedarpy
        self.policies = cedarpy.PolicySet.from_str(CEDAR_POLICY)
        entities: list[dict[str, Any]] = []
        member_of: dict[str, list[str]] = {}
        for app, members in world.apps.items():
            entities.append({"uid": {"type": "App", "id": app}, "attrs": {}, "parents": []})
            for user in members:
                member_of.setdefault(user, []).append(app)
        for user in world.users:
            parents = [{"type": "App", "id": app} for app in member_of.get(user, [])]
            entities.append(
                {"uid": {"type": "HerokuUser", "id": user}, "attrs": {}, "parents": parents}
            )
        for addon, app in world.addons.items():
            entities.append(
                {
                    "uid": {"type": "Addon", "id": addon},
                    "attrs": {"app": {"__entity": {"type": "App", "id": app}}},
                    "parents": [],
                }
            )
        for group in ("dashboard", "account", "addon", "billing"):
            entities.append({"uid": {"type": "Action", "id": group}, "attrs": {}, "parents": []})
        for action in ACTIONS:
            group = action.split(".", 1)[0]
            entities.append(
                {
                    "uid": {"type": "Action", "id": action},
                    "attrs": {},
                    "parents": [{"type": "Action", "id": group}],
                }
            )
        self.entities = cedarpy.Entities.from_json_str(json.dumps(entities))

    def close(self) -> None:
        pass

    def decide(self, r: Request) -> bool:
        request = {
            "principal": {
                "type": "HerokuUser" if r.principal_type == "heroku_user" else "Service",
                "id": r.principal_id,
            },
            "action": {"type": "Action", "id": r.action},
            "resource": {
                "type": "Addon" if r.resource_type == "addon" else "Document",
                "id": r.resource_id,
            },
            "context": {"auth_method": r.auth_method},
        }
        return self._cedarpy.is_authorized(request, self.policies, self.entities).allowed


class RegoEngine:
    name = "regopy (OPA Rego)"

    def __init__(self, world: World) -> None:
        import regopy

        builder = regopy.Interpreter()
        builder.add_data(
            {
                "addons": {addon: {"app": app} for addon, app in world.addons.items()},
                "apps": {app: {"members": members} for app, members in world.apps.items()},
            }
        )
        builder.add_module("authz.rego", REGO_POLICY)
        self.bundle = builder.build(None, ["authz/allow"])  # compiled once, queried per request
        self.interpreter = regopy.Interpreter()

    def close(self) -> None:
        pass

    def decide(self, r: Request) -> bool:
        self.interpreter.set_input(
            {
                "principal": {
                    "type": r.principal_type,
                    "id": r.principal_id,
                    "auth_method": r.auth_method,
                },
                "action": r.action,
                "resource": {"type": r.resource_type, "id": r.resource_id},
            }
        )
        output = self.interpreter.query_bundle_entrypoint(self.bundle, "authz/allow")
        return bool(output.results and output.results[0].expressions == [True])


class CasbinEngine:
    name = "pycasbin (RBAC with domains)"

    def __init__(self, world: World) -> None:
        import casbin
        from casbin.model import Model

        model = Model()
        model.load_model_from_text(CASBIN_MODEL)
        self.enforcer = casbin.Enforcer(model)
        for line in CASBIN_POLICY.splitlines():
            self.enforcer.add_policy(*[part.strip() for part in line.split(",")[1:]])
        for app, members in world.apps.items():
            for user in members:
                self.enforcer.add_grouping_policy(f"heroku_user:{user}", "member", app)
        self.world = world

    def close(self) -> None:
        pass

    def decide(self, r: Request) -> bool:
        return self.enforcer.enforce(
            f"{r.principal_type}:{r.principal_id}", r.auth_method, r.action, self.world.app_of(r)
        )


ENGINES: dict[str, Callable[[World], Any]] = {
    "authz": AuthzEngine,
    "cedarpy": CedarEngine,
    "regopy": RegoEngine,
    "pycasbin": CasbinEngine,
}


def available_peers() -> tuple[list[str], list[str]]:
    """(installed, missing) peer package names."""
    import importlib.util

    installed, missing = [], []
    for name, module in PEER_MODULES.items():
        (installed if importlib.util.find_spec(module) else missing).append(name)
    return installed, missing


# -- the comparison ----------------------------------------------------------------------------


def compare_peers(
    *,
    n_requests: int = 600,
    rounds: int = 7,
    min_time: float = 0.15,
) -> tuple[list[Table], dict[str, Any]]:
    """Agreement over the shared requests, then µs per decision for each engine."""
    world = make_world()
    requests = make_requests(world, n_requests)
    expected = [oracle(world, r) for r in requests]
    installed, missing = available_peers()
    names = ["authz", *installed]
    engines = {name: ENGINES[name](world) for name in names}
    try:
        answers = {name: [engine.decide(r) for r in requests] for name, engine in engines.items()}
        agreement = Table(
            "Peers: agreement over the shared requests",
            ["engine", "requests", "allowed", "denied", "disagreements with the oracle"],
        )
        disagreements: list[dict[str, Any]] = []
        for name, got in answers.items():
            wrong = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
            agreement.add(engines[name].name, len(got), sum(got), len(got) - sum(got), len(wrong))
            for i in wrong[:10]:
                disagreements.append(
                    {"engine": name, "request": requests[i], "got": got[i], "expected": expected[i]}
                )
        all_agree = not disagreements
        agreement.notes.append(
            "all engines agree with each other and with the oracle on every request"
            if all_agree
            else f"DISAGREEMENTS: {len(disagreements)} shown below"
        )
        for d in disagreements:
            agreement.notes.append(
                f"{d['engine']}: {d['request']} -> {d['got']} (expected {d['expected']})"
            )
        if missing:
            agreement.notes.append(f"not installed, skipped: {', '.join(missing)}")

        timings = _interleaved(engines, requests, rounds=rounds, min_time=min_time)
        speed = Table(
            "Peers: µs per decision on the same policy and requests",
            ["engine", "best µs", "median µs", "× authz (best)"],
        )
        base = timings["authz"]["best"]
        for name, t in timings.items():
            speed.add(engines[name].name, t["best"], t["median"], ratio(t["best"], base))
        prebuilt = [engines["authz"].build(r) for r in requests]
        policy_set = engines["authz"].policy_set
        t_eval = _time_loop(lambda: [evaluate(policy_set, p) for p in prebuilt], rounds, min_time)
        per = [x / len(prebuilt) for x in t_eval]
        speed.add(
            "authz evaluate() only (prebuilt input)",
            min(per),
            statistics.median(per),
            ratio(min(per), base),
        )
        speed.notes.append(
            f"{len(requests)} requests, {rounds} interleaved rounds; each engine's time includes "
            "making its own request from the shared one and reading the answer; authz's includes "
            "building the input from facts (access fact from a warm access list), as the server "
            "does."
        )
    finally:
        for engine in engines.values():
            engine.close()
    results = {
        "requests": len(requests),
        "allowed": sum(expected),
        "all_agree": all_agree,
        "disagreements": [{**d, "request": asdict(d["request"])} for d in disagreements],
        "missing": missing,
        "us_per_decision": {name: t["best"] for name, t in timings.items()},
        "us_per_decision_median": {name: t["median"] for name, t in timings.items()},
        "authz_evaluate_only_us": min(per),
    }
    return [agreement, speed], results


def _time_loop(fn: Callable[[], Any], rounds: int, min_time: float) -> list[float]:
    out = []
    for _ in range(rounds):
        out.append(_one_round(fn, min_time))
    return out


def _one_round(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call of fn, repeating it for at least min_time."""
    calls = 0
    started = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time:
            return elapsed / calls * 1e6


def _interleaved(
    engines: dict[str, Any], requests: Sequence[Request], *, rounds: int, min_time: float
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            decide = engine.decide
            us = _one_round(lambda d=decide: [d(r) for r in requests], min_time)
            samples[name].append(us / len(requests))
    return {name: {"best": min(v), "median": statistics.median(v)} for name, v in samples.items()}


def policy_texts() -> dict[str, str]:
    """The policy as each engine was given it (for docs/benchmarks.md)."""
    return {
        "authz (CEL, YAML)": AUTHZ_POLICY,
        "Cedar": CEDAR_POLICY,
        "Rego": REGO_POLICY,
        "Casbin model": CASBIN_MODEL,
        "Casbin policy (plus one `g, heroku_user:<id>, member, <app>` line per app member)": (
            textwrap.dedent(CASBIN_POLICY)
        ),
    }
