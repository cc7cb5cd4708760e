"""The installed `authz` script as a user runs it: a real process, a clean environment, pasted
command lines run by bash, and `authz dev up` in the background."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

AUTHZ = Path(sys.executable).with_name("authz")
"""The console script of the virtualenv the tests run in (`.venv/bin/authz`)."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without authz's settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTHZ_") and k not in ("DATABASE_URL", "PORT")
    }
    env.update(extra)
    return env


def authz(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path = ROOT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUTHZ), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        input=input,
        timeout=timeout,
    )


@dataclass
class Pasted:
    line: str
    status: int
    output: str  # stdout and stderr together, as a terminal shows them


_MARK = "::authz-test-status="


def run_pasted(lines: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> list[Pasted]:
    """Run command lines one after another in one bash, as if pasted into a terminal (so a
    variable set by one line is seen by the next); each line's exit status and output."""
    script = "".join(f"{line}\necho '{_MARK}'$?\n" for line in lines)
    result = subprocess.run(
        ["bash", "--noprofile", "--norc"],
        input=script,
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=dict(env),
        timeout=120,
    )
    chunks = re.split(rf"^{re.escape(_MARK)}(\d+)$\n?", result.stdout, flags=re.MULTILINE)
    outputs, statuses = chunks[0::2], chunks[1::2]
    assert len(statuses) == len(lines), result.stdout
    return [
        Pasted(line, int(status), output)
        for line, status, output in zip(lines, statuses, outputs, strict=False)
    ]


def expect_answers(ran: list[Pasted]) -> None:
    """A line marked `# ALLOW` prints an ALLOW and exits 0, `# DENY` a DENY and exits 3; every
    other line exits 0."""
    for run in ran:
        if run.line.rstrip().endswith("# ALLOW"):
            assert run.status == 0 and run.output.startswith("ALLOW"), (run.line, run.output)
        elif run.line.rstrip().endswith("# DENY"):
            assert run.status == 3 and run.output.startswith("DENY"), (run.line, run.output)
        else:
            assert run.status == 0, (run.line, run.output)


class DevUp:
    """`authz dev up` in the background, on free ports; ready once its banner is printed."""

    READY = "Ctrl-C stops everything."

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        command: Sequence[str] | None = None,
    ) -> None:
        base = command or [str(AUTHZ), "dev", "up"]
        self.proc = subprocess.Popen(
            [*base, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=dict(env) if env is not None else clean_env(),
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.strip() == self.READY:
                    ready.set()
            ready.set()

        def drain() -> None:  # so that logging never blocks on a full pipe
            assert self.proc.stderr is not None
            self.errors.extend(self.proc.stderr)

        threading.Thread(target=read, daemon=True).start()
        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not ready.wait(90) or self.READY not in self.banner:
            self.stop()
            raise AssertionError(f"dev up did not get ready:\n{self.banner}\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    @property
    def banner(self) -> str:
        return "\n".join(self.lines)

    def value(self, label: str) -> str:
        """The first word after `label` on a banner line (e.g. "authz gRPC")."""
        for line in self.lines:
            if line.strip().startswith(label):
                return line.strip()[len(label) :].split()[0]
        raise AssertionError(f"no {label!r} in the banner:\n{self.banner}")

    @property
    def address(self) -> str:
        return self.value("authz gRPC")

    def pasted(self) -> list[str]:
        """The command lines the banner says to paste (comments left out)."""
        start = self.lines.index("Paste these into another terminal:")
        end = self.lines.index(self.READY)
        return [
            line.strip()
            for line in self.lines[start + 1 : end]
            if line.strip() and not line.strip().startswith("#")
        ]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Send `sig` to this process only; its exit status (it is killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"dev up did not stop on signal {sig}") from None
        self._drain.join(10)
        return status
