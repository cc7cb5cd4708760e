"""`authz dev up` through the real binary: the commands it prints give the answers they promise,
its data stays in its folder for `authz audit`, Ctrl-C stops it cleanly, and a second run on the
same folder goes on where the first stopped."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path

from authz.client import AsyncAuthzClient
from authz.devtools.dev_world import dev_world, prepare
from tests.binary import DevUp, authz, clean_env, expect_answers, run_pasted
from tests.conftest import SHIPPED_POLICIES

FREE_PORTS = ("--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")


def test_printed_commands_give_allow_and_deny_and_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    world = DevUp([*FREE_PORTS, "--data", str(data)])
    try:
        pasted = world.pasted()
        ran = run_pasted(pasted, env=clean_env(), cwd=tmp_path)
        expect_answers(ran)
        marked = [r.line.rsplit("#", 1)[1].strip() for r in ran if "# " in r.line]
        assert marked.count("ALLOW") >= 2 and marked.count("DENY") >= 2, marked
        # The printed `audit show` names dave's refused login, in this folder's audit log.
        [show] = [r for r in ran if " audit show " in r.line]
        assert f"AUTHZ_DATA_DIR={data.resolve()}" in show.line
        assert "DENY" in show.output and "dave@acme.example" in show.output
        assert "session.login" in show.output
        [listing] = [r for r in ran if " audit query " in r.line]
        assert "carol@contractor.example" in listing.output
        # The HTTP listener runs beside gRPC.
        http = world.value("authz HTTP")
        with urllib.request.urlopen(f"{http}/healthz", timeout=10) as reply:
            assert reply.status == 200
    finally:
        status = world.stop(signal.SIGINT)
    assert status == 0, world.stderr
    assert world.lines[-1].startswith("stopping")
    assert "Traceback" not in world.stderr
    assert (data / "state.db").is_file() and (data / "audit.db").is_file()


def test_a_second_run_on_the_same_folder_goes_on_with_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    first = DevUp([*FREE_PORTS, "--data", str(data)])
    try:
        [allow_line] = [line for line in first.pasted() if line.endswith("# ALLOW")][:1]
        token = allow_line.split("--session ", 1)[1].split()[0]
        resource = allow_line.split("--resource ", 1)[1].split()[0]
    finally:
        assert first.stop(signal.SIGTERM) == 0, first.stderr

    second = DevUp([*FREE_PORTS, "--data", str(data)])
    try:
        expect_answers(run_pasted(second.pasted(), env=clean_env(), cwd=tmp_path))
        # alice's session from the first run still works: the state store was kept.
        again = authz(
            "check",
            "--server",
            second.address,
            "--session",
            token,
            "--action",
            "dashboard.view",
            "--resource",
            resource,
            "--json",
        )
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["effect"] == "ALLOW"
        # A second `dev up` on a folder in use is refused, and says why.
        busy = authz("dev", "up", *FREE_PORTS, "--data", str(data), timeout=60)
        assert busy.returncode == 1
        assert "in use by another `authz dev up`" in busy.stderr
    finally:
        assert second.stop(signal.SIGINT) == 0, second.stderr
    # One audit log across both runs, and its chain holds.
    verified = authz("audit", "verify", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    addon = authz("addon", "show", resource.removeprefix("addon:"), "--data-dir", str(data))
    assert addon.returncode == 0, addon.stderr
    assert "provisioned" in addon.stdout and "acme-billing" in addon.stdout


def test_without_a_policy_directory_it_says_where_to_run_it(tmp_path: Path) -> None:
    result = authz("dev", "up", *FREE_PORTS, "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert result.returncode == 1
    assert "no policy directory at policies" in result.stderr
    assert "--policies" in result.stderr


def test_logins_in_the_same_second_as_the_last_runs_are_signed_again(tmp_path: Path) -> None:
    """Heroku's SSO form is a function of the second it is signed in: a second run on the same
    folder that logs in within the second of the first run's logins gets the very forms the
    replay guard has seen. It signs new ones in the next second instead of failing."""

    async def twice() -> None:
        async with (
            dev_world(tmp_path / "dev", SHIPPED_POLICIES) as world,
            AsyncAuthzClient(world.service.address) as client,
        ):
            while time.time() % 1.0 > 0.5:  # room in this second for the first logins
                await asyncio.sleep(0.05)
            first = await prepare(world, client)
            second = await prepare(world, client)
            assert first.refused.code == second.refused.code != "SSO_REPLAYED"
            assert {s.session_token for s in first.sessions.values()}.isdisjoint(
                s.session_token for s in second.sessions.values()
            )

    asyncio.run(twice())
