"""`authz serve --workers N`: N worker processes serving one gRPC port and one HTTP port.

grpc.aio and uvicorn run in one event loop, so one process uses one core. A worker is a whole
service (authz.server.app.serve) in its own process; all of them bind the same addresses with
SO_REUSEPORT, and the kernel spreads new connections over them. What one worker learns that the
others must know goes through the store (authz.facts.invalidation), and the audit log is one
hash chain whichever worker appends (authz.audit.log serialises appends in the database).

The supervisor (this module, the parent process) serves nothing itself. It:

- resolves port 0 once (a bound, non-listening SO_REUSEPORT socket it holds keeps the port), so
  every worker, restarted ones too, binds the same ports;
- starts worker 1 alone (it migrates the store and creates the audit log) and the others once it
  is ready, then prints the "authz serving on" lines once for all of them;
- restarts a worker that dies after it was ready (backing off while it keeps dying young); a
  worker that fails before it is ready stops the whole service: its error is a start-up error
  (bad settings, unusable policies, a port taken) that a restart would only repeat;
- forwards SIGTERM/SIGINT (each worker stops taking calls, finishes those in flight and closes
  its audit writer; stragglers are killed after STOP_TIMEOUT) and SIGHUP (each worker reloads
  its policies);
- takes its workers with it when it dies, even by SIGKILL (PR_SET_PDEATHSIG on Linux, and the
  end of the supervisor's pipe everywhere): a worker never outlives its supervisor;
- with AUTHZ_CPU_AFFINITY=auto (the default), keeps each worker on a core of its own when there
  are enough cores (`worker_cores`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from authz.config import ConfigError, Settings, parse_host_port

log = logging.getLogger("authz.server.workers")

MAX_WORKERS = 64
"""More processes than this is a typo (WEB_CONCURRENCY=1000), not a plan."""
STOP_TIMEOUT = 25.0
"""Seconds a worker has to drain after SIGTERM before it is killed: inside Heroku's 30 s."""
_RESTART_BACKOFF_MAX = 10.0
_YOUNG = 10.0  # a worker that dies sooner than this after its start is restarted with backoff

# Exit codes a worker reports (the CLI's ExitCode values).
_USAGE = 2
_ERROR = 1


def worker_count(value: str | None, env: Mapping[str, str]) -> int:
    """The number of workers: ``--workers`` when given, else WEB_CONCURRENCY (Heroku's
    convention) when set, else the number of cores. ConfigError names what to fix."""
    if value is not None:
        return _parse_count(value, "--workers")
    if env.get("WEB_CONCURRENCY"):
        return _parse_count(env["WEB_CONCURRENCY"], "WEB_CONCURRENCY")
    return max(1, min(MAX_WORKERS, available_cores()))


def _parse_count(value: str, name: str) -> int:
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(
            f"{name}={value!r} must be a whole number of worker processes from 1 to "
            f"{MAX_WORKERS} (1: one process)"
        )
    return int(text)


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: the affinity mask (taskset, a cpuset), and no more than a
    CPU quota allows (cgroup v2 ``cpu.max``, e.g. ``docker run --cpus 2``), rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return cores


def worker_cores(
    count: int, affinity: str, allowed: Iterable[int] | None = None
) -> tuple[int, ...] | None:
    """The core each of ``count`` workers keeps to (worker i the i-th), or None: the kernel
    places them.

    ``auto`` gives every worker a core of its own when the process may use (``allowed``: its
    affinity mask) at least ``count`` cores. A worker's threads (the event loop, grpc's poller,
    the audit writer) then wake on the core whose caches hold their data: left to the kernel,
    each wake-up of one of them could move the event loop to the other core and make it refill
    its caches there, which costs more CPU per call (docs/benchmarks.md: "Each worker keeps to a
    core of its own"). Fewer cores than workers, or ``off``: no pinning.
    """
    if affinity == "off" or count < 2:
        return None
    if allowed is None:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # no affinity on this system (macOS)
            return None
    cores = sorted(allowed)
    if len(cores) < count:
        return None
    return tuple(cores[:count])


def _keep_to(core: int) -> str | None:
    """Keep this process on one core: every thread started after this call inherits it. What
    went wrong, if anything (the worker serves unpinned then)."""
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError) as exc:
        return f"could not keep this worker on core {core}: {exc}"
    return None


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    pipe: multiprocessing.connection.Connection
    started: float
    ready: bool = False
    # What the worker reported when ready.
    address: str = ""
    url: str | None = None
    revision: str = ""


class Supervisor:
    """Runs ``count`` workers of ``settings`` until SIGTERM or SIGINT; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        announce: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        """``announce(grpc address, HTTP URL or None, policy revision)`` replaces the
        "authz serving on" lines (the benchmark prints JSON instead)."""
        if count < 2:
            raise ValueError("one worker is served in-process (authz.server.app.serve)")
        from authz.server.transport import plan_transport
        from authz.tracing import Tracing

        # Settings that every worker would refuse are refused here, once, as they were given.
        plan_transport(settings)
        settings.check_storage()
        tracing = Tracing.start(settings)  # ConfigError when traces are asked for without the SDK
        if tracing is not None:
            tracing.shutdown()
        self.count = count
        self._reserved: list[socket.socket] = []
        self.settings = self._fix_ports(settings)
        self.cores = worker_cores(count, settings.cpu_affinity)
        """The core of each worker (worker i: cores[i - 1]), or None: the kernel places them."""
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._announce_to = announce
        self._restarts: dict[int, float] = {}  # index -> backoff of its next restart
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _fix_ports(self, settings: Settings) -> Settings:
        """Settings with every port 0 resolved to a port the supervisor holds, SO_REUSEPORT on."""
        listen = self._reserve(settings.listen, "AUTHZ_LISTEN")
        http = settings.http_listen
        if http is not None:
            http = self._reserve(http, "AUTHZ_HTTP_LISTEN")
        return replace(
            settings,
            listen=listen,
            http_listen=http,
            http_reuse_port=True,
            workers_secret=secrets.token_bytes(32),
        )

    def _reserve(self, listen: str, name: str) -> str:
        host, port = parse_host_port(listen, name)
        if port != 0:
            return listen
        family, _, _, _, address = socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind(address)
        except OSError as exc:
            holder.close()
            raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self._reserved.append(holder)  # bound, never listening: it takes no connections
        port = holder.getsockname()[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (0: stopped cleanly)."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            return self._run()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for holder in self._reserved:
                holder.close()
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: every worker reloads its policies")
            self._signal_all(signal.SIGHUP)
        elif not self._stopping:
            self._stopping = True
            log.info("shutting down: %d workers finish their in-flight calls", self.count)
            self._signal_all(signal.SIGTERM)

    def _run(self) -> int:
        self._start(1)
        if (code := self._wait_ready({1})) != 0 or self._stopping:
            return code
        for index in range(2, self.count + 1):
            self._start(index)
        if (code := self._wait_ready(set(range(2, self.count + 1)))) != 0 or self._stopping:
            return code
        self._announce()
        return self._supervise()

    def _start(self, index: int) -> None:
        theirs, ours = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.settings,
                index,
                theirs,
                os.getpid(),
                None if self.cores is None else self.cores[index - 1],
            ),
            name=f"authz-worker-{index}",
            daemon=False,
        )
        process.start()
        theirs.close()
        self._workers[index] = _Worker(index, process, ours, time.monotonic())

    def _wait_ready(self, indexes: set[int]) -> int:
        """Wait until every worker in ``indexes`` is ready; else stop and return an exit code."""
        waiting = set(indexes)
        while waiting:
            if self._stopping:
                return self._stop()
            workers = [self._workers[i] for i in waiting]
            handles: list[Any] = [self._wake_r]
            for worker in workers:
                handles += [worker.pipe, worker.process.sentinel]
            ready = multiprocessing.connection.wait(handles, timeout=1.0)
            self._drain_wakeups()
            for worker in workers:
                message = self._receive(worker) if worker.pipe in ready else None
                if message is not None and message[0] == "ready":
                    worker.ready = True
                    worker.address, worker.url, worker.revision = message[1:]
                    waiting.discard(worker.index)
                elif message is not None and message[0] == "failed":
                    _, code, text = message
                    print(f"authz serve: {text}", file=sys.stderr, flush=True)
                    self._stopping = True
                    self._stop()
                    return int(code)
                elif worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join()
                    log.error(
                        "worker %d exited before it was ready (%s)",
                        worker.index,
                        _describe_exit(worker.process.exitcode),
                    )
                    self._stopping = True
                    self._stop()
                    return _ERROR
        return 0

    @staticmethod
    def _receive(worker: _Worker) -> tuple[Any, ...] | None:
        try:
            return worker.pipe.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            return None

    def _announce(self) -> None:
        first = self._workers[1]
        log.info(
            "%d workers serving: pids %s%s",
            self.count,
            ", ".join(str(w.process.pid) for w in self._workers.values()),
            ""
            if self.cores is None
            else f", on cores {', '.join(map(str, self.cores))} (AUTHZ_CPU_AFFINITY=auto)",
        )
        if self._announce_to is not None:
            self._announce_to(first.address, first.url, first.revision)
            return
        print(
            f"authz serving on {first.address} (policy revision {first.revision}, "
            f"{self.count} workers)",
            flush=True,
        )
        if first.url is not None:
            print(f"authz HTTP listener on {first.url}", flush=True)

    def _supervise(self) -> int:
        """Restart workers that die until asked to stop; then drain them."""
        due: dict[int, float] = {}  # index -> monotonic time of its restart
        while not self._stopping:
            handles: list[Any] = [self._wake_r]
            # Every worker not already waiting for its restart: a sentinel is readable once its
            # process has ended, so one that died since the last turn (is_alive() would reap it
            # here and leave nothing to wake this wait) is still seen at once.
            handles += [w.process.sentinel for w in self._workers.values() if w.index not in due]
            handles += [w.pipe for w in self._workers.values() if self._starting(w)]
            timeout = max(0.0, min(due.values()) - time.monotonic()) if due else None
            multiprocessing.connection.wait(handles, timeout=timeout)
            self._drain_wakeups()
            if self._stopping:
                break
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if self._starting(worker) and worker.pipe.poll():
                    message = self._receive(worker)
                    worker.ready = message is not None and message[0] == "ready"
                if worker.index in due or worker.process.is_alive():
                    continue
                worker.process.join()
                worker.pipe.close()
                backoff = self._next_backoff(worker, now)
                log.warning(
                    "worker %d (pid %s) %s; restarting it in %g s",
                    worker.index,
                    worker.process.pid,
                    _describe_exit(worker.process.exitcode),
                    backoff,
                )
                due[worker.index] = now + backoff
            for index, when in list(due.items()):
                if when <= now:
                    del due[index]
                    self._start(index)
        return self._stop()

    @staticmethod
    def _starting(worker: _Worker) -> bool:
        """A restarted worker that has not said it is ready (nor died: its pipe is closed)."""
        return not worker.ready and not worker.pipe.closed

    def _next_backoff(self, worker: _Worker, now: float) -> float:
        if now - worker.started >= _YOUNG:
            self._restarts.pop(worker.index, None)
            return 0.0
        backoff = min(_RESTART_BACKOFF_MAX, max(0.5, 2 * self._restarts.get(worker.index, 0.25)))
        self._restarts[worker.index] = backoff
        return backoff

    def _stop(self) -> int:
        """SIGTERM every worker, wait up to STOP_TIMEOUT for them to drain, kill what is left."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        code = 0
        for worker in self._workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop within %g s: killed", worker.index, STOP_TIMEOUT)
                worker.process.kill()
                worker.process.join()
                code = _ERROR
            elif worker.process.exitcode not in (0, -signal.SIGTERM):
                code = _ERROR
        return code

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def _kill_all(self) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(512):
                pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


# -- the worker process -----------------------------------------------------------------------


def _worker_main(
    settings: Settings,
    index: int,
    pipe: multiprocessing.connection.Connection,
    parent: int,
    core: int | None,
) -> None:
    """One worker: serve ``settings`` until SIGTERM, telling the supervisor when ready."""
    unpinned = _keep_to(core) if core is not None else None  # before any thread starts
    from authz.logs import configure_logging
    from authz.policy.model import PolicyError
    from authz.server import eventloop
    from authz.server.app import Service, serve

    _die_with_parent(parent, pipe)
    configure_logging(settings.log_level, settings.log_format)
    if unpinned is not None:
        log.warning("worker %d: %s", index, unpinned)
    quiet = _StartupEcho() if index > 1 else None
    if quiet is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet)

    def announce(service: Service) -> None:
        if quiet is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(quiet)
        url = service.http.url if service.http is not None else None
        pipe.send(("ready", service.address, url, service.policies.current.revision))

    try:
        eventloop.run(settings.event_loop, lambda: serve(settings, announce=announce))
    except ConfigError as exc:
        pipe.send(("failed", _USAGE, str(exc)))
        sys.exit(_USAGE)
    except (OSError, PolicyError) as exc:
        pipe.send(("failed", _ERROR, str(exc)))
        sys.exit(_ERROR)


class _StartupEcho(logging.Filter):
    """Drops what workers 2..N log below ERROR while starting: worker 1 logged the same lines
    (settings advice, listening addresses) from the same settings just before."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _die_with_parent(parent: int, pipe: multiprocessing.connection.Connection) -> None:
    """End this worker when the supervisor ends, however it ends."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before the line above
        os._exit(_ERROR)

    def watch() -> None:
        # The supervisor never writes after start-up; the pipe ends (EOF) when it is gone.
        with contextlib.suppress(EOFError, OSError):
            while True:
                pipe.recv()
        os._exit(_ERROR)

    threading.Thread(target=watch, name="authz-supervisor-watch", daemon=True).start()
