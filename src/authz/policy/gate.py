"""The one gate a policy set passes before anything uses it.

`policy validate`, `policy test`, `policy eval`, replay's candidate, the server's first load and
every hot reload all call `judge`, so they accept or refuse exactly the same sets: the loader,
the type checker (the input contract and attribute schemas) and the lints, each problem with one
severity. `strict` (the --strict flag; AUTHZ_POLICY_STRICT=on for the server) only upgrades
warnings to errors, the same way for every tool.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path

from authz.policy.compile import CompiledPolicySet
from authz.policy.lint import lint_report
from authz.policy.model import PolicyError, Problem


class Outcome(enum.Enum):
    """What a tool concluded, for exit codes (authz.cli.common.ExitCode maps them)."""

    OK = "ok"
    REFUSED = "the policy set does not load"
    TESTS_FAILED = "tests failed"
    COVERAGE_LOW = "coverage below the minimum"


@dataclass(frozen=True, slots=True)
class Verdict:
    directory: Path
    # Every problem, warnings already upgraded to errors under strict.
    problems: tuple[Problem, ...]
    # The compiled set, None when it did not load and compile.
    compiled: CompiledPolicySet | None
    strict: bool = False

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return self.compiled is not None and not self.errors

    @property
    def policy_set(self) -> CompiledPolicySet | None:
        """The set, when the gate lets it through."""
        return self.compiled if self.ok else None

    def accepted(self) -> CompiledPolicySet:
        """The set, or PolicyError with every problem that refuses it."""
        if self.compiled is None or self.errors:
            raise PolicyError(self.errors or list(self.problems))
        return self.compiled


def judge(directory: Path | str, *, strict: bool = False) -> Verdict:
    """Load, type-check, compile and lint `directory`; never raises for a bad set."""
    report = lint_report(directory)
    problems = report.problems
    if strict:
        problems = tuple(
            p if p.severity == "error" else replace(p, severity="error") for p in problems
        )
    return Verdict(Path(directory), problems, report.policy_set, strict)


def load_gated(directory: Path | str, *, strict: bool = False) -> CompiledPolicySet:
    """The set the gate accepts, or PolicyError listing why not."""
    return judge(directory, strict=strict).accepted()
