"""The policy language, pure: YAML rules with CEL conditions, compiled once."""

from authz.policy.compile import CompiledPolicySet, compile_policies
from authz.policy.engine import evaluate
from authz.policy.load import PolicyError, Problem, load_policy_dir
from authz.policy.model import Decision, Effect, MatchedRule, Policy, Rule

__all__ = [
    "CompiledPolicySet",
    "Decision",
    "Effect",
    "MatchedRule",
    "Policy",
    "PolicyError",
    "Problem",
    "Rule",
    "compile_policies",
    "evaluate",
    "load_policy_dir",
]
