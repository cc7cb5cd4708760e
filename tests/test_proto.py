"""The generated code in src/authz/v1 must match proto/ exactly (run `make proto` to refresh)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT / "src") for p in (ROOT / "src" / "authz" / "v1").glob("*_pb2*.py*")
    )
    assert generated == committed, "generated files differ from src/authz/v1: run `make proto`"
    stale = [
        str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / "src" / p, shallow=False)
    ]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit the result"
