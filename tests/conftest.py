"""Shared test fixtures: real servers on 127.0.0.1 ephemeral ports, real files in tmp dirs."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.config import Settings
from authz.server.app import Service, start_service

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = ROOT / "policies"


class LoopThread:
    """An asyncio loop in a background thread, so sync tests can drive the aio server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RunningService:
    def __init__(self, service: Service, loop: LoopThread) -> None:
        self.service = service
        self.loop = loop
        self.address = f"127.0.0.1:{service.port}"
        self.channel = grpc.insecure_channel(self.address)

    def stop(self) -> None:
        self.channel.close()
        self.loop.run(self.service.stop(grace=1))


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        policy_dir=SHIPPED_POLICIES,
        data_dir=tmp_path / "data",
        sso_salts=("test-salt",),
    )


@pytest.fixture
def start(loop_thread: LoopThread) -> Iterator[Callable[..., RunningService]]:
    """start(settings, **overrides) → a RunningService; all are stopped after the test."""
    started: list[RunningService] = []

    def _start(settings: Settings, *, clock: Any = None, **overrides: Any) -> RunningService:
        extra = {"clock": clock} if clock is not None else {}
        service = loop_thread.run(start_service(replace(settings, **overrides), **extra))
        running = RunningService(service, loop_thread)
        started.append(running)
        return running

    yield _start
    for running in reversed(started):
        running.stop()


def write_policy_dir(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


@pytest.fixture
def policy_dir(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """policy_dir({"a.yaml": "..."}) writes a fresh policy directory and returns it."""
    counter = iter(range(1000))

    def _make(files: dict[str, str]) -> Path:
        return write_policy_dir(tmp_path / f"policies{next(counter)}", files)

    return _make
