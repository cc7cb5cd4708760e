"""A real `authz serve` process for tests that read what an operator sees: its log, its exit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

SERVING = re.compile(r"authz serving on (127\.0\.0\.1:\d+) ")
HTTP = re.compile(r"authz HTTP listener on (http://127\.0\.0\.1:\d+)\n")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any authz, Heroku or OpenTelemetry setting, plus `extra`."""
    drop = ("AUTHZ_", "OTEL_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop) and k not in ("PORT", "DYNO", "DATABASE_URL")
    }
    return {**env, **extra}


def serve_command(data_dir: Path, *, http: bool = True) -> list[str]:
    command = [sys.executable, "-m", "authz.cli", "serve", "--listen", "127.0.0.1:0"]
    if http:
        command += ["--http-listen", "127.0.0.1:0"]
    return [*command, "--data-dir", str(data_dir)]


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str  # gRPC, host:port
    url: str  # the HTTP listener
    stderr: str = ""  # the whole log, once stopped

    def stop(self) -> str:
        """SIGTERM, then the log (stderr) once it has exited cleanly."""
        self.process.send_signal(signal.SIGTERM)
        _, self.stderr = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, self.stderr
        return self.stderr


@contextmanager
def served(data_dir: Path, env: Mapping[str, str]) -> Iterator[Served]:
    """`authz serve` on ephemeral loopback ports (gRPC and HTTP) with `env`; killed if the test
    does not stop it."""
    process = subprocess.Popen(
        serve_command(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(env),
    )
    try:
        assert process.stdout is not None
        grpc_line, http_line = process.stdout.readline(), process.stdout.readline()
        grpc_match, http_match = SERVING.match(grpc_line), HTTP.fullmatch(http_line)
        if not (grpc_match and http_match):
            process.kill()
            _, stderr = process.communicate(timeout=30)
            raise AssertionError(f"authz serve did not start: {grpc_line!r}\n{stderr}")
        yield Served(process, grpc_match.group(1), http_match.group(1))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def refused_start(data_dir: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`authz serve` expected to refuse to start (it is killed after 60 s if it does not)."""
    return subprocess.run(
        serve_command(data_dir, http=False),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(env),
        timeout=60,
    )
