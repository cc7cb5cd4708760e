"""Engine semantics: deny overrides, default deny, errors fail closed, globs, indexing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from authz.policy import Effect, PolicyError, compile_policies, evaluate, load_policy_dir
from authz.policy.engine import evaluating_every_time
from authz.policy.inputs import build_input

PolicyDir = Callable[[dict[str, str]], Path]


def compiled(policy_dir: PolicyDir, text: str):  # noqa: ANN201
    return compile_policies(load_policy_dir(policy_dir({"p.yaml": text})))


BASIC = """
name: basic
description: test
actions:
  doc.read: read
  doc.write: write
  doc.archive: archive
  account.change_password: pw
rules:
  - id: readers-read
    effect: allow
    actions: [doc.read]
    when: principal.attributes.role == "reader"
    reason: readers read
  - id: writers-do-anything-with-docs
    effect: allow
    actions: ["doc.*"]
    when: principal.attributes.role == "writer"
    reason: writers write
  - id: banned-never
    effect: deny
    actions: ["*"]
    when: principal.attributes.banned == true
    reason: banned users do nothing
"""


def decide(policy_set, action: str, **principal_attrs):  # noqa: ANN001, ANN201
    principal = {"type": "user", "id": "u1", "attributes": {"banned": False, **principal_attrs}}
    return evaluate(
        policy_set,
        build_input(action=action, principal=principal, resource={"type": "doc", "id": "d1"}),
    )


def test_allow_when_an_allow_rule_matches(policy_dir: PolicyDir) -> None:
    decision = decide(compiled(policy_dir, BASIC), "doc.read", role="reader")
    assert decision.effect is Effect.ALLOW
    assert [m.rule_id for m in decision.matched] == ["readers-read"]
    assert decision.reasons == ("readers read",)


def test_default_deny_names_the_action(policy_dir: PolicyDir) -> None:
    decision = decide(compiled(policy_dir, BASIC), "doc.write", role="reader")
    assert decision.effect is Effect.DENY
    assert decision.matched == ()
    assert "no allow rule matched action 'doc.write'" in decision.reasons[0]


def test_deny_overrides_allow(policy_dir: PolicyDir) -> None:
    decision = decide(compiled(policy_dir, BASIC), "doc.read", role="writer", banned=True)
    assert decision.effect is Effect.DENY
    assert {m.rule_id for m in decision.matched} == {
        "writers-do-anything-with-docs",
        "banned-never",
    }
    assert decision.reasons == ("banned users do nothing",)


def test_decisions_that_end_alike_are_shared_and_each_names_its_own_action(
    policy_dir: PolicyDir,
) -> None:
    policy_set = compiled(policy_dir, BASIC)
    first = decide(policy_set, "doc.read", role="reader")
    assert decide(policy_set, "doc.read", role="reader") is first  # built once (plan.decisions)
    assert decide(policy_set, "doc.read", role="writer") is not first
    # Two actions with the same candidate rules share one plan; a default deny is still per
    # action, so the shared decisions must be told apart by action.
    assert policy_set.plan("doc.write", "doc") is policy_set.plan("doc.archive", "doc")
    write_denied = decide(policy_set, "doc.write", role="reader")
    archive_denied = decide(policy_set, "doc.archive", role="reader")
    assert "'doc.write'" in write_denied.reasons[0]
    assert "'doc.archive'" in archive_denied.reasons[0]


def test_decisions_with_errors_are_built_each_time(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, BASIC)
    erring = decide(policy_set, "doc.read")  # no "role": the allow condition errors
    again = decide(policy_set, "doc.read")
    assert erring.errors and again.errors and again is not erring
    assert decide(policy_set, "doc.read", role="reader").errors == ()


def test_glob_matches_within_its_prefix_only(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, BASIC)
    assert decide(policy_set, "doc.write", role="writer").allowed
    assert not decide(policy_set, "docs.write", role="writer").allowed
    assert not decide(policy_set, "account.change_password", role="writer").allowed


def test_erroring_allow_rule_does_not_allow(policy_dir: PolicyDir) -> None:
    # No "role" attribute: the condition errors (key not found).
    decision = decide(compiled(policy_dir, BASIC), "doc.read")
    assert decision.effect is Effect.DENY
    assert decision.matched == ()
    assert any("readers-read" in e and "allow rule skipped" in e for e in decision.errors)


def test_erroring_deny_rule_counts_as_matched(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, BASIC)
    principal = {"type": "user", "id": "u1", "attributes": {"role": "reader"}}  # no "banned"
    decision = evaluate(policy_set, build_input(action="doc.read", principal=principal))
    assert decision.effect is Effect.DENY
    assert "banned-never" in {m.rule_id for m in decision.matched}
    assert any("banned-never" in e and "fail closed" in e for e in decision.errors)


def test_non_bool_result_is_an_error_not_a_match(policy_dir: PolicyDir) -> None:
    policy_set = compiled(
        policy_dir,
        """
        name: dyn
        rules:
          - id: dyn-allow
            effect: allow
            actions: [x]
            when: principal.attributes.flag
            reason: flag set
        """,
    )
    principal = {"type": "u", "id": "1", "attributes": {"flag": "yes"}}
    decision = evaluate(policy_set, build_input(action="x", principal=principal))
    assert decision.effect is Effect.DENY
    assert decision.errors and "not bool" in decision.errors[0]
    principal["attributes"]["flag"] = True
    assert evaluate(policy_set, build_input(action="x", principal=principal)).allowed


def test_resource_types_restrict_a_rule(policy_dir: PolicyDir) -> None:
    policy_set = compiled(
        policy_dir,
        """
        name: typed
        rules:
          - id: addons-only
            effect: allow
            actions: [view]
            resource_types: [addon]
            reason: addons may be viewed
        """,
    )
    assert evaluate(policy_set, build_input(action="view", resource={"type": "addon"})).allowed
    assert not evaluate(policy_set, build_input(action="view", resource={"type": "app"})).allowed


def test_rule_without_condition_always_holds(policy_dir: PolicyDir) -> None:
    policy_set = compiled(
        policy_dir,
        """
        name: open
        rules:
          - id: always
            effect: allow
            actions: [ping]
            reason: anyone may ping
        """,
    )
    assert evaluate(policy_set, build_input(action="ping")).allowed


def test_index_only_considers_rules_for_the_action(policy_dir: PolicyDir) -> None:
    rules = "\n".join(
        f"""
  - id: r{i}
    effect: allow
    actions: [act{i}]
    when: principal.id == "p{i}"
    reason: r{i}"""
        for i in range(500)
    )
    policy_set = compiled(policy_dir, f"name: many\nrules:{rules}\n")
    assert [r.rule.id for r in policy_set.rules_for("act7")] == ["r7"]
    assert policy_set.rules_for("unknown") == ()
    assert evaluate(policy_set, build_input(action="act7", principal={"id": "p7"})).allowed
    assert not evaluate(policy_set, build_input(action="act7", principal={"id": "p8"})).allowed


def test_attribute_values_that_look_like_cel_are_data(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, BASIC)
    decision = decide(policy_set, "doc.read", role='reader" || true || "')
    assert decision.effect is Effect.DENY


def test_decision_names_the_revision(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, BASIC)
    assert decide(policy_set, "doc.read", role="reader").policy_revision == policy_set.revision
    assert len(policy_set.revision) == 16


def wide(policy_dir: PolicyDir, who: str):  # noqa: ANN201
    """130 conditional rules on action x, rule i holding for `who` "p{i}" or "everyone", every
    tenth a deny."""
    rules = "\n".join(
        f"""
  - id: r{i}
    effect: {"deny" if i % 10 == 9 else "allow"}
    actions: [x]
    when: {who} == "p{i}" || {who} == "everyone"
    reason: r{i}"""
        for i in range(130)
    )
    return compiled(policy_dir, f"name: wide\nrules:{rules}\n")


def test_fused_conditions_beyond_one_chunk(policy_dir: PolicyDir) -> None:
    """130 conditional rules on one action span three fused programs; each bit lands right."""
    policy_set = wide(policy_dir, "principal.id")
    plan = policy_set.plan("x", "")
    assert [len(c.positions) for c in plan.chunks] == [62, 62, 6]
    assert all(c.program is not None for c in plan.chunks)
    for i in (0, 61, 62, 100, 129):
        decision = evaluate(policy_set, build_input(action="x", principal={"id": f"p{i}"}))
        assert [m.rule_id for m in decision.matched] == [f"r{i}"]
        assert decision.allowed == (i % 10 != 9)
    everyone = evaluate(policy_set, build_input(action="x", principal={"id": "everyone"}))
    assert len(everyone.matched) == 130 and not everyone.allowed


def test_fused_and_rule_by_rule_agree_on_the_shipped_policies() -> None:
    """Every outcome of the fused fast path equals evaluating each rule's own program."""
    import itertools

    from authz.policy.compile import load_and_compile
    from authz.policy.engine import _holds
    from tests.conftest import SHIPPED_POLICIES

    policy_set = load_and_compile(SHIPPED_POLICIES)
    principals = [
        {
            "type": "heroku_user",
            "id": "u1",
            "auth": {"method": "heroku_sso", "resource_id": "a1", "session_id": "s"},
        },
        {"type": "heroku_user", "id": "u1", "auth": {"method": "none"}},
        {"type": "service", "id": "web"},
        {"type": "heroku_user", "id": "u1", "auth": {}},  # erroring conditions
    ]
    accesses = [
        {"available": True, "roles": ["owner"], "age_seconds": 10.0},
        {"available": True, "roles": [], "age_seconds": 10.0},
        {"available": True, "roles": ["collaborator"], "age_seconds": 400.0},
        {},
        {"available": "yes"},  # a non-bool where a bool belongs
    ]
    resources = [
        {"type": "addon", "id": "a1", "addon": {"state": "provisioned"}},
        {"type": "addon", "id": "a2", "addon": {"state": "deprovisioned"}},
        {"type": "account", "id": "x"},
    ]
    actions = sorted(policy_set.catalogue) + ["unknown.action"]
    for principal, access, resource, action in itertools.product(
        principals, accesses, resources, actions
    ):
        inputs = build_input(action=action, principal=principal, resource=resource, access=access)
        fused = evaluate(policy_set, inputs)
        if action not in policy_set.catalogue:  # the closed catalogue decides before any rule
            assert fused.matched == () and fused.reasons[0].startswith("ACTION_UNKNOWN: ")
            continue
        plan = policy_set.plan(action, resource["type"])
        activation = policy_set.env.Activation(inputs)
        errors: list[str] = []
        held = [c.program is None or _holds(c, activation, errors) for c in plan.rules]
        expected = [c.rule.id for c, h in zip(plan.rules, held, strict=True) if h]
        assert [m.rule_id for m in fused.matched] == expected, (principal, access, action)
        assert list(fused.errors) == errors


# -- uncatalogued actions (issue 12, item 14) ---------------------------------------------------

CATALOGUED = """
name: addons
actions:
  addon.read_data: Read the add-on's data
  addon.change_plan: Change the plan
rules:
  - id: members-use-addon
    effect: allow
    actions: ["addon.*"]
    reason: members may use the add-on
"""


def test_an_uncatalogued_action_is_denied_by_a_closed_catalogue(policy_dir: PolicyDir) -> None:
    policy_set = compiled(policy_dir, CATALOGUED)
    assert policy_set.closed
    assert evaluate(policy_set, build_input(action="addon.read_data")).allowed
    decision = evaluate(policy_set, build_input(action="addon.delete_everything"))
    assert decision.effect is Effect.DENY
    assert decision.matched == () and decision.errors == ()
    assert decision.reasons == (
        "ACTION_UNKNOWN: action 'addon.delete_everything' is in no action catalogue, so no rule "
        "decides it (catalogue it, or declare 'catalogue: open')",
    )
    # Names are exact: a catalogued action in another case is another, unknown, action.
    assert (
        evaluate(policy_set, build_input(action="Addon.read_data"))
        .reasons[0]
        .startswith("ACTION_UNKNOWN: ")
    )


def test_a_catalogue_declared_open_lets_the_rules_decide_every_action(
    policy_dir: PolicyDir,
) -> None:
    policy_set = compiled(policy_dir, CATALOGUED + "catalogue: open\n")
    assert not policy_set.closed
    assert evaluate(policy_set, build_input(action="addon.delete_everything")).allowed
    decision = evaluate(policy_set, build_input(action="billing.update"))
    assert decision.reasons[0].startswith("no allow rule matched action 'billing.update'")


def test_a_set_without_any_catalogue_lets_the_rules_decide(policy_dir: PolicyDir) -> None:
    catalogue = CATALOGUED[CATALOGUED.index("actions:") : CATALOGUED.index("rules:")]
    policy_set = compiled(policy_dir, CATALOGUED.replace(catalogue, ""))
    assert policy_set.catalogue == {} and not policy_set.closed
    assert evaluate(policy_set, build_input(action="addon.delete_everything")).allowed


def test_the_catalogue_mode_takes_only_open_or_closed(policy_dir: PolicyDir) -> None:
    for mode in ("Open", "off", "yes", "true", "open "):
        with pytest.raises(PolicyError) as info:
            compiled(policy_dir, CATALOGUED + f"catalogue: '{mode}'\n")
        [problem] = info.value.problems
        assert str(problem).startswith(f"p.yaml:10: error: catalogue mode {mode!r} is not one of")
    both = {"a.yaml": CATALOGUED + "catalogue: open\n", "b.yaml": "name: b\ncatalogue: closed\n"}
    with pytest.raises(PolicyError) as info:
        compile_policies(load_policy_dir(policy_dir(both)))
    assert "'catalogue: closed' here, but a.yaml declares 'catalogue: open'" in str(info.value)
    assert compiled(policy_dir, CATALOGUED + "catalogue: closed\n").closed


# -- a batch's items evaluated together (evaluate_many) -----------------------------------------

BATCHED = """
name: documents
actions:
  doc.read: read
  doc.edit: edit
  doc.share: share
  doc.comment: comment
rules:
  - id: red-team-comments
    effect: allow
    actions: [doc.comment]
    when: principal.attributes.team == "red" && context.reason != "spam"
    reason: the red team comments on anything
  - id: team-reads
    effect: allow
    actions: [doc.read]
    resource_types: [doc]
    when: principal.attributes.team == resource.attributes.team
    reason: the team reads
  - id: senior-reads
    effect: allow
    actions: [doc.read]
    when: resource.attributes.level > 2
    reason: anyone reads a senior document
  - id: owner-edits-and-shares
    effect: allow
    actions: [doc.edit, doc.share]
    when: resource.attributes.owner == principal.id
    reason: the owner edits and shares
  - id: listed-editors-edit-junior-documents
    effect: allow
    actions: [doc.edit]
    when: principal.id in data.editors.ids && resource.attributes.level <= data.editors.up_to
    reason: the editors listed in data edit documents up to their level
  - id: locked-stays-locked
    effect: deny
    actions: [doc.read, doc.edit, doc.share]
    when: resource.attributes.locked
    reason: a locked document is left alone
  - id: sharing-needs-a-reason
    effect: deny
    actions: [doc.share]
    when: context.reason == ""
    reason: say why you share
"""


def test_items_evaluated_together_get_the_decisions_each_would_get_alone(
    policy_dir: PolicyDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items that share all but their resource are evaluated in one CEL call per chunk; any
    error there (a missing attribute, a non-bool) sends them one by one, so every decision,
    error and reason is the one `evaluate` gives, in order."""
    from datetime import UTC, datetime

    from authz.policy import engine
    from authz.policy.engine import evaluate_many
    from authz.policy.inputs import evaluation_input, principal_input, resource_input

    directory = policy_dir({"p.yaml": BATCHED})
    (directory / "data").mkdir()
    (directory / "data" / "editors.yaml").write_text("ids: [u1]\nup_to: 3\n")
    policy_set = compile_policies(load_policy_dir(directory))
    assert policy_set.plan("doc.edit", "doc").reads_data
    principal = principal_input("user", "u1", {"team": "red"})
    shared = {"access": {}, "caller": {"id": "web"}, "now": datetime.now(tz=UTC)}
    context, other_context = {"reason": ""}, {"reason": "audit"}
    clean = [  # every condition of every rule evaluates to a bool
        resource_input(
            "doc", f"d{i}", {"team": team, "owner": owner, "level": level, "locked": False}
        )
        for i, (team, owner, level) in enumerate(
            [("red", "u1", 1), ("blue", "u2", 3), ("red", "u2", 0), ("blue", "u1", 5)]
        )
    ]
    troubled = [
        resource_input("doc", "no-level", {"team": "red", "owner": "u1", "locked": False}),
        resource_input(
            "doc", "odd-lock", {"team": "red", "owner": "u1", "level": 0, "locked": "y"}
        ),
        resource_input("doc", "locked", {"team": "red", "owner": "u1", "level": 9, "locked": True}),
        resource_input("folder", "f1", {"team": "red", "owner": "u1", "level": 0, "locked": False}),
    ]
    items = [
        evaluation_input(action=action, principal=principal, resource=r, context=c, **shared)
        for action in ("doc.read", "doc.edit", "doc.share", "doc.comment", "doc.unknown")
        for c in (context, other_context)
        for r in [*clean, *troubled]
    ]
    alone = [evaluate(policy_set, one) for one in items]
    assert evaluate_many(policy_set, items) == alone
    assert any(d.errors for d in alone) and any(d.allowed for d in alone)
    assert any(not d.allowed and not d.errors for d in alone)
    assert any(
        m.rule_id == "listed-editors-edit-junior-documents" for d in alone for m in d.matched
    )
    # The clean resources under catalogued actions, on their own, take the batched path
    # throughout (never `evaluate` one by one), and get the same answers.
    clean_items = [
        one for one in items if one["resource"] in clean and one["action"] != "doc.unknown"
    ]
    expected = [evaluate(policy_set, one) for one in clean_items]
    one_by_one: list[object] = []
    monkeypatch.setattr(
        engine, "evaluate", lambda *args: one_by_one.append(args) or evaluate(*args)
    )
    assert evaluate_many(policy_set, clean_items) == expected
    assert one_by_one == []
    # doc.edit's conditions read data; doc.comment's read no field of the resource at all.
    for action in ("doc.read", "doc.edit", "doc.comment"):
        plan = policy_set.plan(action, "doc")
        assert plan.chunks and all(c.batched is not None for c in plan.chunks)


def test_items_evaluated_together_beyond_one_chunk(policy_dir: PolicyDir) -> None:
    """130 conditions on one action span three fused programs; each item's bits land right."""
    from authz.policy.engine import evaluate_many

    policy_set = wide(policy_dir, "resource.id")
    principal = {"type": "user", "id": "u1"}
    first = build_input(action="x", principal=principal, resource={"id": "p0"})
    items = [
        {**first, "resource": build_input(action="x", resource={"id": rid})["resource"]}
        for rid in ("p0", "p61", "p62", "p100", "p129", "everyone", "nobody")
    ]
    decisions = evaluate_many(policy_set, items)
    assert decisions == [evaluate(policy_set, one) for one in items]
    assert [[m.rule_id for m in d.matched] for d in decisions[:5]] == [
        ["r0"],
        ["r61"],
        ["r62"],
        ["r100"],
        ["r129"],
    ]
    assert len(decisions[5].matched) == 130 and not decisions[6].matched
    assert sum(c.batched is not None for c in policy_set.plan("x", "").chunks) == 3


MEMO = """
name: memo
actions:
  doc.read: read
  doc.stamp: stamp
rules:
  - id: team-reads
    effect: allow
    actions: [doc.read]
    when: principal.attributes.team == resource.attributes.team
    reason: team reads
  - id: flagged-never
    effect: deny
    actions: [doc.read]
    when: resource.attributes.flag == true
    reason: flagged
  - id: before-2100
    effect: allow
    actions: [doc.stamp]
    when: now < timestamp("2100-01-01T00:00:00Z")
    reason: before 2100
"""


def _doc(action: str, team: str = "red", **attributes: object) -> dict:
    return build_input(
        action=action,
        principal={"type": "user", "id": "u1", "attributes": {"team": "red"}},
        resource={"type": "doc", "id": "d1", "attributes": {"team": team, **attributes}},
    )


def test_a_question_asked_again_is_answered_from_what_its_conditions_read(
    policy_dir: PolicyDir,
) -> None:
    """A plan keeps each chunk's bitmask by the values its conditions read: the same values
    again (new objects) get the same shared decision without CEL; other values, another entry.
    True and 1 are different values to CEL, and so to the memo."""
    policy_set = compiled(policy_dir, MEMO)
    plan = policy_set.plan("doc.read", "doc")
    first = evaluate(policy_set, _doc("doc.read", flag=False))
    assert first.allowed and len(plan.masks_by_input) == 1
    assert evaluate(policy_set, _doc("doc.read", flag=False)) is first
    assert len(plan.masks_by_input) == 1
    # The kept masks answer (here made to say the deny rule held as well): no evaluation.
    [key] = plan.masks_by_input
    plan.masks_by_input[key] = (0b11,)
    assert not evaluate(policy_set, _doc("doc.read", flag=False)).allowed
    plan.masks_by_input[key] = (0b01,)
    flagged = evaluate(policy_set, _doc("doc.read", flag=True))
    as_number = evaluate(policy_set, _doc("doc.read", flag=1))
    other_team = evaluate(policy_set, _doc("doc.read", team="blue", flag=False))
    assert [m.rule_id for m in flagged.matched] == ["team-reads", "flagged-never"]
    assert not flagged.allowed and as_number.allowed and not other_team.allowed
    assert len(plan.masks_by_input) == 4


def test_what_cannot_be_a_key_or_errored_is_evaluated_every_time(policy_dir: PolicyDir) -> None:
    """A condition reading `now` (a datetime), or one that errors, keeps nothing."""
    policy_set = compiled(policy_dir, MEMO)
    stamp = policy_set.plan("doc.stamp", "doc")
    assert evaluate(policy_set, _doc("doc.stamp")).allowed
    assert stamp.masks_by_input == {}
    read = policy_set.plan("doc.read", "doc")
    failed = evaluate(policy_set, _doc("doc.read"))  # no `flag`: the deny rule errors
    assert not failed.allowed and failed.errors
    assert read.masks_by_input == {}
    with evaluating_every_time():  # as the engine's benchmarks measure it
        assert evaluate(policy_set, _doc("doc.read", flag=False)).allowed
    assert read.masks_by_input == {}
    assert evaluate(policy_set, _doc("doc.read", flag=False)).allowed
    assert len(read.masks_by_input) == 1


def test_a_batch_asked_again_is_answered_from_what_its_conditions_read(
    policy_dir: PolicyDir,
) -> None:
    """The batched path keeps each item's masks by (what the items share, its resource)."""
    from authz.policy.engine import evaluate_many

    policy_set = compiled(policy_dir, MEMO)
    plan = policy_set.plan("doc.read", "doc")
    base = _doc("doc.read", flag=False)

    def batch() -> list:
        return [
            {**base, "resource": _doc("doc.read", team=team, flag=flag)["resource"]}
            for team, flag in (("red", False), ("blue", False), ("red", True))
        ]

    decisions = evaluate_many(policy_set, batch())
    assert decisions == [evaluate(policy_set, one) for one in batch()]
    assert [d.allowed for d in decisions] == [True, False, False]
    batched = [k for k in plan.masks_by_input if isinstance(k, tuple)]
    assert len(batched) == 3
    for key in batched:  # made to say nothing held: the next batch is answered from here
        plan.masks_by_input[key] = (0,)
    again = evaluate_many(policy_set, batch())
    assert [d.matched for d in again] == [(), (), ()]


def test_a_memo_that_fills_up_without_answering_is_turned_off(
    policy_dir: PolicyDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conditions that read a value that never repeats (the access fact's age, say) would only
    pay for keys: a plan whose memo fills up without one hit stops keeping any; one that
    answered from it goes on."""
    from authz.policy import engine

    monkeypatch.setattr(engine, "MASKS_PER_PLAN", 4)
    policy_set = compiled(policy_dir, MEMO)
    plan = policy_set.plan("doc.read", "doc")
    for team in ("a", "b", "c", "d", "e"):  # the fifth finds it full, and never asked again
        assert not evaluate(policy_set, _doc("doc.read", team=team, flag=False)).allowed
    assert plan.recall.off and plan.masks_by_input == {}
    assert evaluate(policy_set, _doc("doc.read", flag=False)).allowed
    assert plan.masks_by_input == {}

    policy_set = compiled(policy_dir, MEMO)
    plan = policy_set.plan("doc.read", "doc")
    for team in ("red", "red", "b", "c", "d", "e"):  # one hit, then full
        evaluate(policy_set, _doc("doc.read", team=team, flag=False))
    assert not plan.recall.off and len(plan.masks_by_input) == 1
