"""Part 1: the policy engine alone, in process.

- The shipped policies (``policies/``) on the paths a real request takes: an SSO member opening the
  dashboard (allow), an SSO user without a role (deny), an SSO member trying an auth-changing
  action (deny) and a service naming itself directly (deny). Each is timed three ways:
  ``evaluate()`` on a prebuilt input; building the input from facts already at hand, then
  ``evaluate()`` (what decide.py does per item); and the whole ``Decider.check`` path (session
  lookup, add-on registry, warm access cache, decision id, audit record built; no gRPC, no audit
  writer).
- Generated rule sets of 10 … 10,000 rules spread over many actions, with realistic CEL conditions
  (attribute comparisons, list membership, string functions, timestamps, macros). Each set is loaded
  from YAML and compiled in its own process (``isolate=True``) so that the peak memory measured is
  the set's own: tracemalloc for Python objects, resident-set growth for everything (cel-cpp too).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.bench.common import (
    Table,
    collect,
    peak_rss_kib,
    ratio,
    rss_kib,
    time_interleaved,
)
from authz.bench.common import time_async_calls as time_async
from authz.clock import rfc3339
from authz.decide import Decider, Entity, FactSources, Item, Subject, access_fact, direct_subject
from authz.facts.access import AccessCache
from authz.facts.addons import AddonRegistry
from authz.facts.heroku import AccessList, AppMember
from authz.facts.sessions import SessionStore
from authz.policy.compile import CompiledPolicySet, load_and_compile
from authz.policy.engine import evaluate, evaluating_every_time
from authz.policy.holder import PolicyHolder
from authz.policy.inputs import (
    HEROKU_USER,
    NO_APP,
    addon_input,
    build_input,
    caller_input,
    evaluation_input,
    resource_input,
)
from authz.policy.model import Effect
from authz.policy.plan import project
from authz.store import open_database

ADDON_ID = "0f8e2a8c-6d3b-4c1e-9a57-3b2d1c0e9f41"
APP_ID = "5d2c0b7e-1f4a-4e8b-9c36-7a1e0d2f4b58"
MEMBER_ID = "dda049b2-808b-4ba6-a92e-6735de088fac"
STRANGER_ID = "45bdc205-4920-44b5-a0d0-94fa261d95cf"
DEFAULT_SIZES = (10, 100, 1_000, 10_000)


# -- the shipped policies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # "allow" or "deny"
    action: str
    subject: str  # "member", "stranger" or "service"


SHIPPED_CASES = (
    Case("SSO member, dashboard.view", "allow", "dashboard.view", "member"),
    Case("SSO user without a role, dashboard.view", "deny", "dashboard.view", "stranger"),
    Case("SSO member, account.change_password", "deny", "account.change_password", "member"),
    Case("service principal (direct), addon.read_data", "deny", "addon.read_data", "service"),
)


def resolve_now(value: Any) -> Any:
    """A value, or the result of an awaitable (authz's fact calls may be sync or async)."""
    if inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


class ShippedWorld:
    """The facts one add-on's requests see, held by the real stores in a temporary directory."""

    def __init__(self, policy_dir: Path, directory: Path) -> None:
        self.holder = PolicyHolder.load(policy_dir)
        self.db = open_database(directory / "state.db")
        now = time.time()
        self.addons = AddonRegistry(self.db, time.time)
        self.addon, _ = self.addons.register(ADDON_ID, APP_ID, "acme-billing", "authz:basic", "us")
        self.sessions = SessionStore(self.db, time.time)
        self.tokens = {
            "member": self.sessions.issue(
                MEMBER_ID, ADDON_ID, "alice@acme.example", token_kind="sha256"
            )[0],
            "stranger": self.sessions.issue(
                STRANGER_ID, ADDON_ID, "mallory@else.example", token_kind="sha256"
            )[0],
        }
        self.access_list = AccessList(
            app_id=APP_ID,
            app_name="acme-billing",
            team_id=None,
            owner_id=MEMBER_ID,
            fetched_at=now,
            members={
                MEMBER_ID: AppMember(MEMBER_ID, "alice@acme.example", ("owner",), ("manage",)),
                "547603c3-9d3c-4ad6-bf22-87e3f7150880": AppMember(
                    "547603c3-9d3c-4ad6-bf22-87e3f7150880", "bob@acme.example", ("collaborator",)
                ),
            },
        )

        async def fetch(app_id: str, resource_id: str) -> AccessList:
            return self.access_list

        self.cache = AccessCache(fetch, ttl=300.0)
        self.decider = Decider(
            self.holder,
            facts=FactSources(sessions=self.sessions, addons=self.addons, access=self.cache),
        )
        self.service = Entity("service", "billing-worker", {"team": "payments"})

    def close(self) -> None:
        self.db.conn.close()

    def subject(self, who: str) -> Subject:
        if who == "service":
            return direct_subject(self.service)
        return resolve_now(self.decider.subject_from_session(self.tokens[who]))

    def resource_input(self) -> dict[str, Any]:
        """The resource through the input builders, from the registry's facts at hand."""
        addon = self.addon
        return resource_input(
            "addon",
            addon.resource_id,
            None,
            addon_input(addon.state, addon.app_id, addon.app_name, addon.plan, addon.region),
        )

    def server_input(self, subject: Subject, action: str) -> dict[str, Any]:
        """One evaluation input built from facts at hand, through the input builders the
        server uses (authz.policy.inputs, authz.decide.access_fact)."""
        now = time.time()
        user_id = subject.principal["id"]
        if subject.principal["type"] == HEROKU_USER:
            access = access_fact(self.access_list, user_id, now)
        else:
            access = access_fact(None, user_id, now, NO_APP)
        return evaluation_input(
            action=action,
            principal=subject.principal,
            resource=self.resource_input(),
            access=access,
            caller=caller_input("bench"),
            now=datetime.fromtimestamp(now, tz=UTC),
        )


def shipped_engine(
    policy_dir: Path, *, min_time: float = 0.2, repeats: int = 5
) -> tuple[Table, dict[str, Any]]:
    """µs per decision for the shipped policies, three ways, on each case."""
    table = Table(
        "Engine: shipped policies (µs per decision)",
        ["case", "path", "rules tried", "evaluate()", "input+evaluate()", "Decider.check()"],
    )
    results: dict[str, Any] = {"cases": []}
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        world = ShippedWorld(policy_dir, Path(tmp))
        policy_set = world.holder.current
        loop = asyncio.new_event_loop()
        try:
            # Warm the access cache (the first call fetches from the in-memory source).
            loop.run_until_complete(
                world.decider.check(world.subject("member"), [_item("dashboard.view")])
            )
        finally:
            loop.close()
        fns: dict[str, Callable[[], Any]] = {}
        tried: dict[str, int] = {}
        for case in SHIPPED_CASES:
            subject = world.subject(case.subject)
            prebuilt = world.server_input(subject, case.action)
            decision = evaluate(policy_set, prebuilt)
            expected = Effect.ALLOW if case.path == "allow" else Effect.DENY
            if decision.effect is not expected or decision.errors:
                raise AssertionError(f"{case.name}: {decision}")
            tried[case.name] = sum(
                1
                for r in policy_set.rules_for(case.action)
                if not r.resource_types or "addon" in r.resource_types
            )
            fns[f"{case.name}:evaluate"] = lambda p=prebuilt: evaluate(policy_set, p)
            fns[f"{case.name}:build"] = lambda s=subject, a=case.action: evaluate(
                policy_set, world.server_input(s, a)
            )
        timings = time_interleaved(fns, min_time=min_time, repeats=repeats)
        for case in SHIPPED_CASES:
            t_eval, t_build = timings[f"{case.name}:evaluate"], timings[f"{case.name}:build"]
            t_check = time_async(_decider_call(world, case), min_time=min_time, repeats=repeats)
            table.add(
                case.name,
                case.path,
                tried[case.name],
                t_eval.best_us,
                t_build.best_us,
                t_check.best_us,
            )
            results["cases"].append(
                {
                    "case": case.name,
                    "path": case.path,
                    "evaluate_us": t_eval.best_us,
                    "input_evaluate_us": t_build.best_us,
                    "decider_check_us": t_check.best_us,
                    "evaluate_us_median": t_eval.median_us,
                    "input_evaluate_us_median": t_build.median_us,
                    "decider_check_us_median": t_check.median_us,
                }
            )
        world.close()
    results["rules"] = policy_set.rule_count
    results["revision"] = policy_set.revision
    table.notes.append(
        f"policies/ revision {policy_set.revision}, {policy_set.rule_count} rules; each figure is "
        f"the best of {repeats} interleaved runs (medians in the JSON). Decider.check = the "
        "servicer's work "
        "after protobuf conversion: session lookup (SQLite) for SSO cases, add-on registry "
        "(SQLite), warm access cache, evaluate, decision id, audit record built (no writer)."
    )
    return table, results


def typed_vs_maps(policy_dir: Path, *, min_time: float = 0.2, repeats: int = 5) -> dict[str, float]:
    """µs per evaluation of the shipped allow path's fused program, with the input as protobuf
    messages of the typed contract (built per request) and as the plain maps the engine uses
    (only the fields the plan reads): the evidence for evaluating maps (README, Policy input)."""
    from google.protobuf import message_factory

    from authz.policy import inputs

    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        world = ShippedWorld(policy_dir, Path(tmp))
        try:
            prebuilt = world.server_input(world.subject("member"), "dashboard.view")
        finally:
            world.close()
    policy_set = world.holder.current
    plan = policy_set.plan("dashboard.view", "addon")
    [chunk] = plan.chunks
    typed_env = inputs.checking_env()
    fused = " + ".join(
        f"((\n{r.rule.when}\n) ? {1 << bit} : 0)"
        for bit, r in enumerate(plan.rules[i] for i in chunk.positions)
    )
    typed_program = typed_env.compile(fused)
    pool = inputs._pool()
    classes = {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{inputs.PACKAGE}.{name}")
        )
        for name in ("Principal", "Resource", "Access")
    }
    principal, resource, access = prebuilt["principal"], prebuilt["resource"], prebuilt["access"]

    def typed() -> Any:
        messages = {
            "principal": classes["Principal"](
                type=principal["type"], id=principal["id"], auth=principal["auth"]
            ),
            "resource": classes["Resource"](
                type=resource["type"], id=resource["id"], addon=resource["addon"]
            ),
            "access": classes["Access"](**access),
        }
        return typed_program.eval(typed_env.Activation(messages))

    def maps() -> Any:
        projected = prebuilt if plan.projection is None else project(prebuilt, plan.projection)
        return chunk.program.eval(policy_set.env.Activation(projected))  # type: ignore[union-attr]

    assert typed().value() == maps().value()
    timings = time_interleaved({"typed": typed, "maps": maps}, min_time=min_time, repeats=repeats)
    return {name: t.best_us for name, t in timings.items()}


def _item(action: str) -> Item:
    return Item(action, Entity("addon", ADDON_ID))


def _decider_call(world: ShippedWorld, case: Case) -> Callable[[], Any]:
    """One Check as the servicer runs it: resolve the subject, then Decider.check one item."""
    item = _item(case.action)
    token = world.tokens.get(case.subject, "")
    decider = world.decider

    if case.subject == "service":

        async def direct() -> Any:
            return await decider.check(direct_subject(world.service), [item], caller="bench")

        return direct

    async def session() -> Any:
        subject = decider.subject_from_session(token)
        if inspect.isawaitable(subject):  # async in newer authz (stores may be a network away)
            subject = await subject
        return await decider.check(subject, [item], caller="bench")

    return session


# -- generated rule sets -----------------------------------------------------------------------

_NAMESPACES = (
    "billing",
    "reports",
    "projects",
    "files",
    "webhooks",
    "tokens",
    "teams",
    "search",
    "exports",
    "alerts",
)
_VERBS = (
    "read",
    "list",
    "create",
    "update",
    "delete",
    "share",
    "archive",
    "restore",
    "approve",
    "publish",
    "comment",
    "export",
    "import",
    "assign",
    "close",
    "reopen",
    "rename",
    "move",
    "copy",
    "lock",
    "unlock",
    "tag",
    "untag",
    "pin",
    "unpin",
)

# Conditions of the kinds policy authors write, one per position of a rule within its action
# (the last is a deny); {k} varies per action so that no two rules are equal.
_CONDITIONS = (
    'principal.type == "user" && principal.attributes.department == "dept{k}"'
    " && principal.attributes.clearance >= {c}",
    'resource.attributes.owner == principal.id || "role{k}" in principal.attributes.roles',
    'has(context.ip) && context.ip.startsWith("10.{k}.")'
    ' && now < timestamp("2030-01-01T00:00:00Z")',
    'access.available && access.roles.exists(r, r in ["owner", "admin"]) && caller.id == "svc-{k}"',
    "principal.attributes.tenant != resource.attributes.tenant"
    " || principal.id in resource.attributes.blocked",
)
RULES_PER_ACTION = len(_CONDITIONS)


def action_names(count: int) -> list[str]:
    """`count` distinct action names: namespace{n}.verb."""
    names: list[str] = []
    group = 0
    while len(names) < count:
        for ns in _NAMESPACES:
            prefix = f"{ns}{group}" if group else ns
            names += [f"{prefix}.{verb}" for verb in _VERBS]
        group += 1
    return names[:count]


def action_count(n_rules: int) -> int:
    return max(1, n_rules // RULES_PER_ACTION)


def generate_rules(n_rules: int) -> list[dict[str, Any]]:
    """Rules spread evenly over n_rules/5 actions, so every action has the same five rules (four
    allow, one deny) at every size; the first rule of each namespace's first action covers the
    whole namespace with a glob. Only the number of *unrelated* rules grows with the set."""
    actions = action_names(action_count(n_rules))
    rules: list[dict[str, Any]] = []
    for i in range(n_rules):
        a, j = i % len(actions), (i // len(actions)) % RULES_PER_ACTION
        action = actions[a]
        k = a % 97
        covered = [action]
        if j == 0 and a % len(_VERBS) == 0:
            covered = [action.split(".", 1)[0] + ".*"]
        rule: dict[str, Any] = {
            "id": f"rule-{i}",
            "effect": "deny" if j == RULES_PER_ACTION - 1 else "allow",
            "actions": covered,
            "when": _CONDITIONS[j].format(k=k, c=k % 5),
            "reason": f"generated rule {i}",
        }
        if j in (1, 3):
            rule["resource_types"] = ["document", "project"]
        rules.append(rule)
    return rules


def write_rule_set(n_rules: int, directory: Path, per_file: int = 500) -> Path:
    """Write the generated set as YAML policy files (JSON is valid YAML, and fast to write)."""
    directory.mkdir(parents=True, exist_ok=True)
    rules = generate_rules(n_rules)
    for start in range(0, len(rules), per_file):
        chunk = rules[start : start + per_file]
        lines = [f"name: generated-{start // per_file}", "rules:"]
        lines += [f"  - {json.dumps(rule)}" for rule in chunk]
        (directory / f"generated_{start // per_file:03d}.yaml").write_text("\n".join(lines) + "\n")
    return directory


def probe_inputs(n_rules: int, count: int = 64, *, spread: bool = True) -> list[dict[str, Any]]:
    """Requests over the set's actions, some allowed, some denied; every attribute a condition
    reads is present, so no condition errors. `spread`: over up to `count` different actions;
    otherwise over the first two actions only, which carry the same rules at every size."""
    actions = action_names(action_count(n_rules))
    if not spread:
        actions = actions[:2]
    step = max(1, len(actions) // count)
    now = datetime.now(tz=UTC)
    out = []
    for i in range(count):
        a = (i * step) % len(actions)
        k = a % 97
        user = f"user-{i % 7}"
        out.append(
            build_input(
                action=actions[a],
                principal={
                    "type": "user",
                    "id": user,
                    "attributes": {
                        "department": f"dept{k if i % 2 else k + 1}",
                        "roles": [f"role{k if i % 3 == 0 else k + 1}", "viewer"],
                        "clearance": i % 5,
                        "tenant": "t2" if i % 7 == 0 else "t1",
                    },
                },
                resource={
                    "type": "document" if i % 2 else "project",
                    "id": f"doc-{i}",
                    "attributes": {
                        "owner": f"user-{i % 5}",
                        "classification": "internal",
                        "tenant": "t1",
                        "blocked": ["user-6"],
                    },
                },
                context={"ip": f"10.{k if i % 4 == 0 else k + 1}.0.1"},
                access={
                    "available": True,
                    "app_id": APP_ID,
                    "user_id": user,
                    "roles": ["owner"] if i % 3 == 0 else [],
                    "role": "owner" if i % 3 == 0 else "",
                    "has_role": i % 3 == 0,
                    "fetched_at": rfc3339(time.time()),
                    "age_seconds": 1.0,
                    "error": "",
                },
                caller={"id": f"svc-{k if i % 2 else k + 1}"},
                now=now,
            )
        )
    return out


def _rebuild(inputs: dict[str, Any]) -> dict[str, Any]:
    """Build an input again from its parts, as a request would (dict copies included)."""
    return build_input(
        action=inputs["action"],
        principal=inputs["principal"],
        resource=inputs["resource"],
        context=inputs["context"],
        access=inputs["access"],
        caller=inputs["caller"],
        now=inputs["now"],
    )


def load_rule_set(n_rules: int) -> tuple[CompiledPolicySet, dict[str, Any]]:
    """Write, load and compile one generated set: (the set, its load cost and memory).

    In a fresh process the memory figures are the set's own: the resident set's high-water mark
    during load+compile, and what stays resident afterwards (cel-cpp's programs included)."""
    with tempfile.TemporaryDirectory(prefix="authz-bench-rules-") as tmp:
        directory = write_rule_set(n_rules, Path(tmp))
        collect()
        rss_before = rss_kib()
        started = time.perf_counter()
        policy_set = load_and_compile(directory)
        compile_s = time.perf_counter() - started
        peak_after = peak_rss_kib()
        collect()
        rss_after = rss_kib()
    return policy_set, {
        "rules": policy_set.rule_count,
        "actions": action_count(n_rules),
        "load_compile_s": compile_s,
        "peak_rss_growth_kib": max(0, peak_after - rss_before),
        "retained_rss_kib": max(0, rss_after - rss_before),
    }


def _applicable(policy_set: CompiledPolicySet, inputs: dict[str, Any]) -> list[Any]:
    rtype = inputs["resource"]["type"]
    return [
        r
        for r in policy_set.rules_for(inputs["action"])
        if not r.resource_types or rtype in r.resource_types
    ]


def _load_isolated(n_rules: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "authz.bench.engine", "--rules", str(n_rules)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rule-set worker for {n_rules} rules failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def generated_engine(
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    min_time: float = 0.2,
    repeats: int = 5,
    isolate: bool = True,
) -> tuple[Table, dict[str, Any]]:
    """Memory per set (each loaded in a fresh process when `isolate`), then µs per decision on
    every set in interleaved rounds, all sets loaded in this process."""
    table = Table(
        "Engine: generated rule sets (µs per decision, memory per set)",
        [
            "rules",
            "actions",
            "rules tried/decision",
            "evaluate(), 2 actions",
            "evaluate(), 64 actions",
            "input+evaluate()",
            "load+compile s",
            "peak memory MiB",
            "retained MiB",
        ],
    )
    rows: list[dict[str, Any]] = []
    fns: dict[str, Callable[[], Any]] = {}
    for n in sizes:
        policy_set, loaded = load_rule_set(n)
        row = _load_isolated(n, timeout=300) if isolate else loaded
        probes = probe_inputs(n)
        for p in probes:  # warm the per-action index, as a running server has
            evaluate(policy_set, p)
        decisions = [evaluate(policy_set, p) for p in probes]
        row.update(
            rules_tried=sum(len(_applicable(policy_set, p)) for p in probes) / len(probes),
            allowed_of_probes=f"{sum(d.allowed for d in decisions)}/{len(probes)}",
            errors=sum(len(d.errors) for d in decisions),
        )
        rows.append(row)
        cycle = itertools.cycle(probes)
        hot = probe_inputs(n, spread=False)
        for p in hot:
            evaluate(policy_set, p)
        hot_cycle = itertools.cycle(hot)
        fns[f"{n}:hot"] = lambda ps=policy_set, c=hot_cycle: evaluate(ps, next(c))
        fns[f"{n}:evaluate"] = lambda ps=policy_set, c=cycle: evaluate(ps, next(c))
        fns[f"{n}:build"] = lambda ps=policy_set, c=cycle: evaluate(ps, _rebuild(next(c)))
    timings = time_interleaved(fns, min_time=min_time, repeats=repeats)
    for n, row in zip(sizes, rows, strict=True):
        t_eval, t_build = timings[f"{n}:evaluate"], timings[f"{n}:build"]
        t_hot = timings[f"{n}:hot"]
        row.update(
            hot_evaluate_us=t_hot.best_us,
            hot_evaluate_us_median=t_hot.median_us,
            evaluate_us=t_eval.best_us,
            input_evaluate_us=t_build.best_us,
            evaluate_us_median=t_eval.median_us,
            input_evaluate_us_median=t_build.median_us,
        )
        table.add(
            row["rules"],
            row["actions"],
            row["rules_tried"],
            row["hot_evaluate_us"],
            row["evaluate_us"],
            row["input_evaluate_us"],
            row["load_compile_s"],
            row["peak_rss_growth_kib"] / 1024,
            row["retained_rss_kib"] / 1024,
        )
    by_size = {r["rules"]: r for r in rows}
    results: dict[str, Any] = {"sets": rows}
    if 10 in by_size and 1000 in by_size:
        small, large = by_size[10], by_size[1000]
        results["ratio_1000_vs_10"] = ratio(large["hot_evaluate_us"], small["hot_evaluate_us"])
        results["ratio_1000_vs_10_spread"] = ratio(large["evaluate_us"], small["evaluate_us"])
        results["ratio_1000_vs_10_median"] = ratio(
            large["hot_evaluate_us_median"], small["hot_evaluate_us_median"]
        )
        table.notes.append(
            f"1,000 vs 10 rules: {results['ratio_1000_vs_10']:.2f}× per decision on the same two "
            f"actions (only unrelated rules were added; {results['ratio_1000_vs_10_median']:.2f}× "
            f"on medians), {results['ratio_1000_vs_10_spread']:.2f}× with requests spread over 64 "
            "actions (more distinct compiled programs in play)."
        )
    table.notes.append(
        f"µs: best of {repeats} interleaved rounds over all sets (medians in the JSON). Memory: "
        + ("each set loaded from YAML and compiled in a fresh process; " if isolate else "")
        + "peak = growth of the resident set's high-water mark during load+compile, retained = "
        "resident growth kept afterwards (both include cel-cpp's compiled programs). Every action "
        "has the same 5 rules at every size; '2 actions' probes the first two actions only, "
        "'64 actions' cycles over up to 64 different ones."
    )
    return table, results


def main(argv: Sequence[str] | None = None) -> None:
    """Worker: load one generated set in this fresh process; print its load cost as JSON.
    `--shipped DIR`: only the shipped-policy engine figures, and typed messages vs maps."""
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rules", type=int)
    group.add_argument("--shipped", type=Path, metavar="POLICY_DIR")
    args = parser.parse_args(argv)
    if args.shipped:
        with evaluating_every_time():  # evaluation, not recall of a question asked before
            _, results = shipped_engine(args.shipped)
            results["typed_vs_maps_us"] = typed_vs_maps(args.shipped)
        print(json.dumps(results, indent=2))
        return
    _, loaded = load_rule_set(args.rules)
    print(json.dumps(loaded))


if __name__ == "__main__":
    main()
