"""The shape the README's Architecture section draws, checked on the source: module-level imports
form no cycle, point down the layers only, the policy engine stays pure, and argparse lives in
authz/cli/ (and the development-only benchmark tools)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS = {
    **dict.fromkeys(
        ("store", "clock", "ids", "errors", "config", "logs", "offload", "deadlines"), 0
    ),
    **dict.fromkeys(("policy", "facts", "audit"), 1),
    **dict.fromkeys(
        ("decide", "login", "provisioning", "evaluations", "search", "metrics", "tracing"), 2
    ),
    "dbcopy": 2,
    **dict.fromkeys(("server", "web", "client"), 3),
    **dict.fromkeys(("cli", "demo", "devtools", "bench"), 4),
}
PURE_POLICY_MUST_NOT_IMPORT = ("authz.facts", "authz.audit", "authz.store", "authz.server")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "authz").rglob("*.py") if "v1" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """What the module imports at module level (not inside functions or TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = base + ("." + node.module if node.module else "")
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in known else module)
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_imports_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(n for n in graph if n != "authz" and layer(n) is None)
    assert unplaced == [], "place every top-level module in LAYERS"
    upward = sorted(
        (name, dep)
        for name, deps in graph.items()
        for dep in deps
        if layer(name) is not None and layer(dep) is not None and layer(dep) > layer(name)
    )
    assert upward == []


def test_the_policy_engine_is_pure(graph: dict[str, set[str]]) -> None:
    impure = sorted(
        (name, dep)
        for name, deps in graph.items()
        if name.startswith("authz.policy")
        for dep in deps
        if dep.startswith(PURE_POLICY_MUST_NOT_IMPORT)
    )
    assert impure == []
    assert not any(
        dep.startswith("authz.policy")
        for name in graph
        if name.startswith("authz.facts")
        for dep in graph[name]
    ), "facts know nothing of policies"


def test_argparse_lives_in_the_cli_package() -> None:
    users = sorted(
        name
        for name, path in modules().items()
        if "import argparse" in path.read_text(encoding="utf-8")
        and not name.startswith(("authz.cli", "authz.bench"))
    )
    assert users == []
