"""The README's instructions, run as written: the "First hour" blocks (in a folder laid out like
a fresh clone after `make install`), the "Calling authz" example, and the exit-code table."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from authz.cli import ExitCode
from authz.v1 import authorization_pb2 as pb
from tests.binary import DevUp, clean_env, expect_answers, run_pasted
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.MULTILINE | re.DOTALL)
    assert match, f"the README has no section {title!r}"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as a fresh clone is after `make install`: .venv and policies/."""
    folder = tmp_path_factory.mktemp("clone")
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (folder / "policies").symlink_to(ROOT / "policies")
    return folder


@pytest.fixture(scope="module")
def first_hour(clone: Path) -> Iterator[tuple[DevUp, list[str]]]:
    """The README's `authz dev up` block, run as written (on free ports, through the
    AUTHZ_LISTEN and AUTHZ_HTTP_LISTEN the README mentions), and its next block."""
    setup, terminal_one, terminal_two = code_blocks(section("First hour"), "sh")
    # The setup is `make install`, which made the virtualenv these tests run in.
    assert [c.split("#")[0].strip() for c in commands(setup)] == ["make install"]
    [up] = commands(terminal_one)
    world = DevUp(
        command=shlex.split(up, comments=True),
        env=clean_env(AUTHZ_LISTEN="127.0.0.1:0", AUTHZ_HTTP_LISTEN="127.0.0.1:0"),
        cwd=clone,
    )
    yield world, commands(terminal_two)
    assert world.stop() == 0, world.stderr


def test_first_hour_reaches_an_allow_and_a_deny_by_copy_and_paste(
    first_hour: tuple[DevUp, list[str]], clone: Path
) -> None:
    world, pasted = first_hour
    assert (clone / "data" / "dev").is_dir()  # the folder the README names
    # A second terminal: the server's address is the default one the README relies on, here
    # given through AUTHZ_SERVER because the test runs on a free port.
    env = clean_env(AUTHZ_SERVER=world.address)
    ran = run_pasted(pasted, env=env, cwd=clone)
    expect_answers(ran)
    assert [r.output.split()[0] for r in ran if r.line.endswith(("# ALLOW", "# DENY"))] == [
        "ALLOW",
        "DENY",
    ]
    listing = ran[-1].output
    assert "carol@contractor.example" in listing
    newest = listing.splitlines()[2].split()[-1]  # below the header and its underline
    explain = re.search(r"`(AUTHZ_DATA_DIR=\S+ \.venv/bin/authz audit show) DECISION_ID`", README)
    assert explain, "the README says how to explain a decision"
    [shown] = run_pasted([f"{explain.group(1)} {newest}"], env=env, cwd=clone)
    assert shown.status == 0 and f"Decision {newest}: DENY" in shown.output, shown.output


def test_calling_authz_example_runs(
    first_hour: tuple[DevUp, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world, _ = first_hour
    alice = next(line for line in world.pasted() if line.endswith("# ALLOW"))
    session_token = alice.split("--session ", 1)[1].split()[0]
    resource_id = alice.split("--resource addon:", 1)[1].split()[0]
    [example] = code_blocks(section("Calling authz"), "python")
    monkeypatch.setenv("AUTHZ_SERVER", world.address)
    monkeypatch.delenv("AUTHZ_CALLER_TOKEN", raising=False)
    exec(example, {"resource_id": resource_id, "session_token": session_token})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "show the dashboard"
    assert printed[1].startswith("DENY ")


def test_grpcurl_line_names_a_real_method_and_fields() -> None:
    [block] = code_blocks(section("Calling authz"), "sh")
    [line] = commands(block)
    argv = shlex.split(line)
    assert argv[0] == "grpcurl" and "-plaintext" in argv
    body = argv[argv.index("-d") + 1]
    json_format.Parse(body, pb.CheckRequest())  # every field name is the proto's
    service, method = argv[-1].rsplit("/", 1)
    assert pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[method]
    assert argv[-2] == "127.0.0.1:50051"


def test_exit_code_table_is_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", section("Exit codes"), re.MULTILINE)
    assert {int(code): name for code, name in rows} == {c.value: c.name for c in ExitCode}


def test_the_readme_names_no_command_that_does_not_exist() -> None:
    """Every `authz ...` command the First hour and Command line sections name parses."""
    from authz.cli import build_parser

    parser = build_parser()
    text = section("First hour") + section("Command line")
    named = set(re.findall(r"`authz ((?:[a-z-]+ ?){1,2})", text))
    assert len(named) > 8
    for words in named:
        argv = words.split()
        try:
            parser.parse_args([*argv, "--help"])
        except SystemExit as stop:
            assert stop.code == 0, argv
